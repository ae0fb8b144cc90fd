"""Model registry: `create_model(name, num_classes=..., **options)` and `list_models()`."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .preprocess import CIFAR10_MEAN, CIFAR10_STD, PreprocessSpec
from .resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_PREPROCESS = PreprocessSpec()
CIFAR_PREPROCESS = PreprocessSpec(
    input_size=32, resize_size=32, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD
)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a name: how to build it and its native input."""

    name: str
    family: str  # "imagenet", "cifar" (ImageNet widths, CIFAR stem) or "cifar-paper"
    kwargs: dict[str, Any]
    default_num_classes: int
    preprocess: PreprocessSpec
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}

_IMAGENET_DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_CIFAR_PAPER_DEPTHS = (20, 32, 44, 56, 110)


def _register(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise RuntimeError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec


def _block_name(block: type) -> str:
    return block.__name__


for _depth, (_block, _layers) in _IMAGENET_DEPTHS.items():
    for _preact in (False, True):
        prefix = "preact_" if _preact else ""
        _register(
            ModelSpec(
                name=f"{prefix}resnet{_depth}",
                family="imagenet",
                kwargs=dict(block=_block_name(_block), layers=_layers, pre_activation=_preact),
                default_num_classes=1000,
                preprocess=IMAGENET_PREPROCESS,
                description=f"ImageNet ResNet-{_depth}{' v2 (pre-activation)' if _preact else ''}",
            )
        )
    if _block is Bottleneck:
        _register(
            ModelSpec(
                name=f"resnet{_depth}d",
                family="imagenet",
                kwargs=dict(block="Bottleneck", layers=_layers, stem="deep", shortcut="D"),
                default_num_classes=1000,
                preprocess=IMAGENET_PREPROCESS,
                description=f"ImageNet ResNet-{_depth}-D (deep stem, average-pool downsample)",
            )
        )
    if _depth <= 101:
        for _preact in (False, True):
            prefix = "cifar_preact_" if _preact else "cifar_"
            _register(
                ModelSpec(
                    name=f"{prefix}resnet{_depth}",
                    family="cifar",
                    kwargs=dict(block=_block_name(_block), layers=_layers, stem="cifar", pre_activation=_preact),
                    default_num_classes=10,
                    preprocess=CIFAR_PREPROCESS,
                    description=f"CIFAR ResNet-{_depth} (3x3 stem, no max-pool)"
                    + (" v2 (pre-activation)" if _preact else ""),
                )
            )

for _depth in _CIFAR_PAPER_DEPTHS:
    _n = (_depth - 2) // 6
    for _preact in (False, True):
        prefix = "preact_" if _preact else ""
        _register(
            ModelSpec(
                name=f"{prefix}resnet{_depth}",
                family="cifar-paper",
                kwargs=dict(
                    block="BasicBlock",
                    layers=(_n, _n, _n),
                    widths=(16, 32, 64),
                    stem="cifar",
                    shortcut="A",
                    pre_activation=_preact,
                ),
                default_num_classes=10,
                preprocess=CIFAR_PREPROCESS,
                description=f"CIFAR paper ResNet-{_depth} (16/32/64, shortcut A)"
                + (" v2 (pre-activation)" if _preact else ""),
            )
        )

# torchvision's wide and grouped bottleneck nets: (depth, layers, groups, width_per_group).
_WIDE_AND_GROUPED = {
    "wide_resnet50_2": (50, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (101, (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": (50, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (101, (3, 4, 23, 3), 32, 8),
}
for _name, (_depth, _layers, _groups, _width) in _WIDE_AND_GROUPED.items():
    _register(
        ModelSpec(
            name=_name,
            family="imagenet",
            kwargs=dict(block="Bottleneck", layers=_layers, groups=_groups, width_per_group=_width),
            default_num_classes=1000,
            preprocess=IMAGENET_PREPROCESS,
            description=f"ImageNet {'Wide ResNet' if _groups == 1 else 'ResNeXt'}-{_depth} "
            + ("(2x wide bottleneck)" if _groups == 1 else f"({_groups} groups x {_width} channels)"),
        )
    )

# Zagoruyko & Komodakis (2016): WRN-28-10, pre-activation basic blocks, (28 - 4) / 6 = 4 per stage.
_register(
    ModelSpec(
        name="wrn28_10",
        family="cifar",
        kwargs=dict(
            block="BasicBlock",
            layers=(4, 4, 4),
            widths=(160, 320, 640),
            stem_width=16,
            stem="cifar",
            shortcut="B",
            pre_activation=True,
        ),
        default_num_classes=10,
        preprocess=CIFAR_PREPROCESS,
        description="CIFAR Wide ResNet-28-10 (16-channel stem, 160/320/640 pre-activation stages)",
    )
)

_BLOCKS = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}
_OPTIONS = {
    "pre_activation",
    "zero_init_residual",
    "drop_path_rate",
    "dropout",
    "shortcut",
    "stem",
    "in_chans",
    "norm",
    "residual",
    "grad_checkpoint",
}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a shell-style pattern such as `"cifar_*"`."""
    names = sorted(_REGISTRY, key=_sort_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def _sort_key(name: str) -> tuple:
    """Family, then the variant (plain first), then depth."""
    spec = _REGISTRY[name]
    depth = int(re.search(r"\d+", name).group())
    is_resnext = name.startswith("resnext")
    variant = (
        "preact" in name,
        name.endswith("d") and not is_resnext,
        name.startswith("wide_"),
        is_resnext,
        name.startswith("wrn"),
    )
    return ({"imagenet": 0, "cifar": 1, "cifar-paper": 2}[spec.family], variant, depth)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown architecture {name!r}.{hint} `python -m models` lists all {len(_REGISTRY)} of them."
        ) from None


def create_model(name: str, num_classes: int | None = None, **options: Any) -> ResNet:
    """Build a registered ResNet.

    Options: pre_activation, zero_init_residual, drop_path_rate, dropout, shortcut ("A"/"B"/"D"),
    stem ("imagenet"/"deep"/"cifar"), in_chans, norm ("batch"/"none"), residual (False: plain network),
    grad_checkpoint (recompute each block in the backward pass).
    """
    spec = get_model_spec(name)
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"create_model({name!r}) got unknown options {unknown}; known: {sorted(_OPTIONS)}")
    kwargs = dict(spec.kwargs)
    kwargs.update({k: v for k, v in options.items() if v is not None})
    kwargs["block"] = _BLOCKS[kwargs["block"]]
    return ResNet(num_classes=num_classes or spec.default_num_classes, **kwargs)


def model_builder(name: str) -> Callable[..., ResNet]:
    """`models.resnet18(num_classes=10)`-style builder of a registered name (`from models import resnet18`)."""
    spec = get_model_spec(name)

    def build(num_classes: int | None = None, **options: Any) -> ResNet:
        return create_model(name, num_classes=num_classes, **options)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{spec.description}; options as `models.create_model`."
    return build
