"""Offline pretrained weights: torchvision and timm files, our own checkpoints, and cache names.

Nothing here downloads. A name such as `torchvision:resnet50.IMAGENET1K_V2` or `timm:resnet50.a1_in1k`
is resolved in the local torch hub / Hugging Face cache only; when the file is not there, the error
says which file to put where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_state_dict_strict, read_weights_file
from .labels import imagenet_class_names
from .preprocess import PreprocessSpec
from .resnet import head_parameter_names

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Our architectures that torchvision publishes ImageNet-1k weights for, under the same name and keys.
TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
)


@dataclass
class PretrainedWeights:
    """What `load_pretrained` loaded and what comes with it."""

    source: str
    path: Path
    preprocess: PreprocessSpec | None = None  # the weights' own eval preprocessing, when known
    class_names: list[str] | None = None
    reinitialized: list[str] = field(default_factory=list)  # head keys skipped (fine-tuning)

    def summary(self) -> str:
        head = f"; re-initialised {', '.join(self.reinitialized)}" if self.reinitialized else ""
        return f"loaded {self.source} from {self.path}{head}"


def load_pretrained(model: nn.Module, source: str | os.PathLike, *, use_ema: bool = True) -> PretrainedWeights:
    """Load weights into `model` and return where they came from and their preprocessing.

    `source` is a `.pth`/`.pt`/`.bin` or `.safetensors` file (a bare state_dict, or one wrapped in
    `state_dict`/`state_dict_ema`/`model`, with or without a `module.` prefix), one of our checkpoints,
    or `torchvision:<arch>.<WEIGHTS>` / `timm:<arch>.<tag>` resolved from the local caches.

    When the classifier's shape differs (fine-tuning to other classes) the head keeps its fresh init
    and its keys are reported in `reinitialized`; every other key must match exactly.
    """
    info, state = read_pretrained(source, use_ema=use_ema)
    own = model.state_dict()
    if _only_class_count_differs(own, state):
        head_keys = head_parameter_names(model)
        state = {**state, **{k: own[k] for k in head_keys}}  # keep the fresh head
        info.reinitialized = head_keys
        info.class_names = None  # the new head predicts other classes
    load_state_dict_strict(model, state, source=str(info.path))
    return info


def _only_class_count_differs(own: dict, state: dict) -> bool:
    """True when the file's classifier has the same input width but another number of classes."""
    ours, theirs = own.get("fc.weight"), state.get("fc.weight")
    return theirs is not None and theirs.shape[1:] == ours.shape[1:] and theirs.shape[0] != ours.shape[0]


def read_pretrained(source: str | os.PathLike, *, use_ema: bool = True) -> tuple[PretrainedWeights, dict]:
    """Resolve `source` to a file and read its state_dict (see `load_pretrained`)."""
    text = str(source)
    if text.startswith("torchvision:"):
        info = _resolve_torchvision(text.removeprefix("torchvision:"))
    elif text.startswith("timm:"):
        info = _resolve_timm(text.removeprefix("timm:"))
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"pretrained weights {path}: no such file. Pass a .pth/.safetensors file, one of our "
                "checkpoints, or a cache name like torchvision:resnet50.IMAGENET1K_V2 or timm:resnet50.a1_in1k"
            )
        info = PretrainedWeights(source=path.name, path=path, **_known_torchvision_file(path))

    raw = _read_any(info.path)
    if isinstance(raw, dict) and "arch" in raw and "model" in raw:  # one of our checkpoints
        ckpt = Checkpoint.from_dict(raw, source=str(info.path))
        info.source = f"checkpoint ({ckpt.arch})"
        info.preprocess, info.class_names = ckpt.preprocess, list(ckpt.class_names)
        return info, ckpt.deploy_state_dict(use_ema)
    return info, _unwrap_state_dict(raw, info.path, use_ema)


def _read_any(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot be read as a safetensors file ({e})") from e
    return read_weights_file(path)


def _unwrap_state_dict(raw: Any, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), found {type(raw).__name__}")
    wrappers = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else ("state_dict", "model")
    for key in wrappers:
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    state = {}
    for k, v in raw.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; not a state_dict")
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        state[k] = v
    return state


def _spec_from_torchvision(weights: Any) -> PreprocessSpec:
    t = weights.transforms()
    return PreprocessSpec(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def _torchvision_weights(arch: str, tag: str) -> Any:
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        raise CheckpointError(f"torchvision has no weights for architecture {arch!r}") from None
    try:
        return enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise CheckpointError(
            f"torchvision {arch!r} has no weights {tag!r}; available: {[w.name for w in enum]}"
        ) from None


def _hub_file(weights: Any) -> Path:
    """Where torchvision's own loader keeps (and so a user has) the file of `weights`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _resolve_torchvision(name: str) -> PretrainedWeights:
    """`arch.TAG`, or a bare `arch`: its DEFAULT weights, else whichever of its weights are in the cache."""
    arch, _, tag = name.partition(".")
    weights = _torchvision_weights(arch, tag or "DEFAULT")
    if not tag and not _hub_file(weights).is_file():
        import torchvision.models as tvm

        cached = [w for w in tvm.get_model_weights(arch) if _hub_file(w).is_file()]
        if not cached:
            files = ", ".join(os.path.basename(w.url) for w in tvm.get_model_weights(arch))
            raise CheckpointError(
                f"no torchvision weights for {arch} in the local torch hub cache {_hub_file(weights).parent}; "
                f"nothing is downloaded. Put one of {files} there (set TORCH_HOME to use another cache), or "
                "pass a weight file's path to --pretrained."
            )
        weights = cached[0]
    file_name = os.path.basename(weights.url)
    path = _hub_file(weights)
    if not path.is_file():
        raise CheckpointError(
            f"torchvision:{arch}.{weights.name} is not in the local torch hub cache; nothing is downloaded. "
            f"Put the file {file_name} at {path} (set TORCH_HOME to use another cache), or pass the file's "
            "path directly."
        )
    return PretrainedWeights(
        source=f"torchvision:{arch}.{weights.name}",
        path=path,
        preprocess=_spec_from_torchvision(weights),
        class_names=list(weights.meta["categories"]),
    )


def _known_torchvision_file(path: Path) -> dict[str, Any]:
    """A torchvision weight file keeps its published name (e.g. resnet50-11ad3fa6.pth): recognise it."""
    import torchvision.models as tvm

    for arch in TORCHVISION_ARCHS:
        for weights in tvm.get_model_weights(arch):
            if os.path.basename(weights.url) == path.name:
                return {"preprocess": _spec_from_torchvision(weights), "class_names": list(weights.meta["categories"])}
    return {}


def _resolve_timm(name: str) -> PretrainedWeights:
    try:
        import timm.models
    except ImportError:
        raise CheckpointError(
            f"timm:{name} needs the timm package, which is not installed: pip install timm "
            "(or pass the weight file's path; our ResNets read timm's resnet files without timm)"
        ) from None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise CheckpointError(f"timm has no pretrained config {name!r} (e.g. timm:resnet50.a1_in1k)")
    repo = cfg.hf_hub_id
    for file_name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, file_name)
        if isinstance(found, str):
            path = Path(found)
            break
    else:
        where = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>"
        raise CheckpointError(
            f"timm:{name} is not in the local Hugging Face cache; nothing is downloaded. Put model.safetensors "
            f"from the Hugging Face repo {repo} at {where}/model.safetensors (HF_HOME moves the cache), "
            "or pass the file's path directly."
        )
    size = cfg.input_size[-1]
    spec = PreprocessSpec(
        input_size=size,
        resize_size=int(size / cfg.crop_pct),
        interpolation=cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bilinear",
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
    classes = list(imagenet_class_names()) if cfg.num_classes == 1000 else None
    return PretrainedWeights(source=f"timm:{name}", path=path, preprocess=spec, class_names=classes)


def published_accuracy(arch: str) -> list[tuple[str, float, float]]:
    """(weights, top-1 %, top-5 %) on ImageNet-1k val as torchvision publishes them for `arch`, read from
    its weights metadata; empty for architectures torchvision has no weights for."""
    import torchvision.models as tvm

    if arch not in TORCHVISION_ARCHS:
        return []
    rows = []
    for weights in tvm.get_model_weights(arch):
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        rows.append((f"{arch}.{weights.name}", float(metrics["acc@1"]), float(metrics["acc@5"])))
    return rows


def published_accuracy_table(arch: str) -> str:
    """`published_accuracy` as lines to print beside an evaluation ("" when there is none)."""
    rows = published_accuracy(arch)
    if not rows:
        return ""
    lines = ["torchvision's published ImageNet-1k val accuracy (its weights, its preprocessing):"]
    lines += [f"  {name:<32} top-1 {top1:6.3f}%  top-5 {top5:6.3f}%" for name, top1, top5 in rows]
    return "\n".join(lines)
