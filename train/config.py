"""Run configuration: `TrainConfig`, one typed field per option, resolved from defaults, YAML recipes
and command-line overrides and checked once.

Precedence: the field defaults < the recipe (`--recipe NAME` or a path to a YAML file) < flags given on
the command line. `TrainConfig.to_dict()`, a flat mapping of option: value, is written to
`runs/<name>/config.yaml` and stored in every checkpoint, so a run can always be reproduced (and its
validation set rebuilt) from either; `TrainConfig.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fsutil.atomic import atomic_write_text
from imagedata.decoders import DECODERS
from imagedata.kinds import DATA_KINDS
from models import get_model_spec


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run (`python -m train --help` explains each), then where the resolution took
    the recipe and the architecture from. Build it with `resolve_config` or `from_dict`, which check it."""

    # what and where
    arch: str | None = None
    data: str | None = None
    data_dir: str | None = None
    val_split: float | None = None
    max_unreadable_images: int = 100  # training images that fail to decode, skipped per epoch before the run stops
    num_classes: int | None = None  # synthetic data only; other kinds count their classes
    synthetic_size: int = 1024
    out: str = "runs"
    name: str | None = None
    # the network
    drop_path_rate: float | None = None
    dropout: float | None = None
    zero_init_residual: bool | None = None
    norm: str | None = None  # None: BatchNorm; "none": the norm-free ablation
    plain: bool = False  # no shortcuts: the CIFAR paper's plain networks
    shortcut: str | None = None  # None: the architecture's own (A for the paper's nets, B otherwise)
    imagenet_stem: bool = False  # keep an ImageNet net's 7x7 stem + max-pool on 32x32 data (else: its CIFAR variant)
    pretrained: str | None = None
    freeze_backbone: bool = False
    freeze_until: str | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # global: images per optimizer step over all processes and accumulation steps
    lr: float = 0.1
    lr_base_batch: int | None = None  # when set, lr is scaled linearly by batch_size / lr_base_batch
    head_lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_wd_norm_bias: bool = False
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    milestones: list[float] = field(default_factory=list)
    lr_gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float | None = None
    accum_steps: int = 1
    # regularisation and augmentation
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    train_crop: str | None = None  # None: the dataset's default (random-crop for 32x32 data, random-resized-crop else)
    train_size: int | None = None
    crop_padding: int | None = None
    hflip: bool | None = None
    auto_augment: str = "none"
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0
    ema: bool = False
    ema_decay: float = 0.999
    # evaluation preprocessing overrides
    image_size: int | None = None
    val_resize: int | None = None
    interpolation: str | None = None
    mean: list[float] | None = None  # input normalisation per RGB channel (None: the data's or the weights' own)
    std: list[float] | None = None
    # speed and determinism
    amp: str = "none"
    channels_last: bool = False
    grad_checkpoint: bool = False  # recompute blocks in backward: less activation memory, ~1/3 more compute
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    workers: int | None = None
    decoder: str = "auto"  # how training image files are decoded (imagedata/decoders.py)
    val_batch_size: int | None = None
    seed: int = 0
    deterministic: bool = False
    # outputs
    log_every: int = 10
    save_every_steps: int = 0
    tensorboard: bool = True
    plots: bool = True
    log_internals: bool = False
    resume: str | None = None
    overwrite: bool = False
    # provenance: set by the resolution, not options (stored only when set)
    recipe: str | None = None
    recipe_source: str | None = None  # why that recipe: --recipe, or the default for the data and network
    arch_source: str | None = None  # why --arch changed (its CIFAR variant on 32x32 data)
    forked_from: dict[str, Any] | None = None  # a run forked from another's checkpoint: its path, sha256, step

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> TrainConfig:
        """The config of a stored mapping (a checkpoint's, a config.yaml): keys it lacks take their
        defaults; unknown keys and wrong types are refused, naming `source`."""
        return cls(**checked_fields(values, source, STORED_KEYS))

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping of config.yaml and checkpoints: every option, provenance only when set."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if k in OPTION_KEYS or v is not None}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


PROVENANCE_KEYS = ("recipe", "recipe_source", "arch_source", "forked_from")
STORED_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
OPTION_KEYS = tuple(k for k in STORED_KEYS if k not in PROVENANCE_KEYS)  # what a recipe or a flag may set
# The options' defaults, by name (for code that reads a plain mapping, e.g. classify's bare weight files).
DEFAULTS: dict[str, Any] = {k: v for k, v in TrainConfig().to_dict().items() if k in OPTION_KEYS}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)

# Options with a fixed set of values; the command line offers the same choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data": tuple(DATA_KINDS),
    "optimizer": ("sgd", "adamw"),
    "scheduler": ("cosine", "step", "multistep", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "auto_augment": ("none", "randaugment", "trivialaugment", "autoaugment"),
    "train_crop": ("random-resized-crop", "random-crop", "center"),
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "decoder": DECODERS,
    "norm": ("batch", "none"),
    "shortcut": ("A", "B", "D"),
}

# The recipe a run gets when no --recipe is given: by data kind and the architecture's family
# (models.registry.ModelSpec.family). Folder and synthetic data have no recipe of their own.
DEFAULT_RECIPES: dict[tuple[str, str], str] = {
    ("imagenet", "imagenet"): "imagenet_original",
    ("cifar10", "cifar-paper"): "cifar_paper",
    ("cifar100", "cifar-paper"): "cifar_paper",
    ("cifar10", "cifar"): "cifar_modern",
    ("cifar100", "cifar"): "cifar_modern",
    ("digits", "cifar-paper"): "digits",
    ("digits", "cifar"): "digits",
    # ImageNet nets on 32x32 data kept with --imagenet-stem still get the data's training recipe.
    ("cifar10", "imagenet"): "cifar_modern",
    ("cifar100", "imagenet"): "cifar_modern",
    ("digits", "imagenet"): "digits",
}

# Data whose images are 32x32: an ImageNet architecture name means its CIFAR variant there (the
# write-ups' `--arch resnet18 --data cifar10`), unless --imagenet-stem or --pretrained weights need it.
CIFAR_SIZED_DATA = ("cifar10", "cifar100", "digits")

# Keys a resumed run may change (more epochs, other loader settings); the rest come from the checkpoint.
RESUMABLE_OVERRIDES = (
    "epochs",
    "workers",
    "log_every",
    "save_every_steps",
    "tensorboard",
    "plots",
    "log_internals",
    "val_batch_size",
    "device",
    "max_unreadable_images",
)

# Keys a resume may not change: they fix the batches and the per-step LR schedule in the checkpoint.
TOPOLOGY_KEYS = ("batch_size", "accum_steps")


# A bare `--pretrained`: the torchvision weights of --arch, from the local torch hub cache.
BARE_PRETRAINED = "torchvision"


class ConfigError(ValueError):
    """A recipe or flag combination that cannot run; the message says which and why."""


def checked_fields(values: Mapping[str, Any], source: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """`values` with every key known (one of `allowed`), of its field's type and, where the option has a
    fixed set of values, one of them; ints are taken for floats. Else a ConfigError naming `source`."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        hints = [
            f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, allowed, 1)) else k
            for k in unknown
        ]
        raise ConfigError(
            f"{source}: unknown option{'s' * (len(unknown) > 1)} {', '.join(hints)}; the options are: {', '.join(allowed)}"
        )
    checked = {key: _typed(key, value, FIELD_TYPES[key], source) for key, value in values.items()}
    for key, allowed_values in CHOICES.items():
        if checked.get(key) is not None and checked[key] not in allowed_values:
            raise ConfigError(f"{source}: {key} {checked[key]!r}: expected one of {', '.join(allowed_values)}")
    return checked


def checked_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Options given on the command line (and `arch_source`, when --arch became its CIFAR variant), checked."""
    return checked_fields(overrides, "the command line", OPTION_KEYS + ("arch_source",))


def _typed(key: str, value: Any, annotation: Any, source: str) -> Any:
    """`value` as the field's type (an int as a float; YAML 1.1 reads `1e-3` as text, so text that is a
    number counts as a float too), or a ConfigError saying what was expected."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in kinds:
        return None
    kind = next(k for k in kinds if k is not type(None))
    converted = _as_kind(value, kind)
    if converted is _REFUSED:
        nullable = " or null" if type(None) in kinds else ""
        raise ConfigError(
            f"{source}: {key} {value!r}: expected {_KIND_NAMES[typing.get_origin(kind) or kind]}{nullable}"
        )
    return converted


_REFUSED = object()
_KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a list of numbers",
    dict: "a mapping",
}


def _as_kind(value: Any, kind: Any) -> Any:
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _REFUSED
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _REFUSED
    if typing.get_origin(kind) is list:  # list[float]
        if not isinstance(value, (list, tuple)):
            return _REFUSED
        items = [_as_kind(v, float) for v in value]
        return _REFUSED if any(v is _REFUSED for v in items) else items
    kind = typing.get_origin(kind) or kind
    if kind is int and isinstance(value, bool):
        return _REFUSED
    return value if isinstance(value, kind) else _REFUSED


def recipes_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("recipes")))


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description."""
    return {
        path.stem: str(yaml.safe_load(path.read_text()).get("description", ""))
        for path in sorted(recipes_dir().glob("*.yaml"))
    }


def load_recipe(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The options a recipe sets, checked (`checked_fields`): a name from train/recipes or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_recipes())
        raise ConfigError(f"recipe {str(name_or_path)!r} not found (looked at {path}); known recipes: {known}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of option: value")
    recipe.pop("description", None)
    return checked_fields(recipe, str(path), OPTION_KEYS)


def default_recipe(arch: str | None, data: str | None) -> str | None:
    """The recipe for `--arch ARCH --data DATA` without --recipe (None: the plain DEFAULTS)."""
    if not arch or not data:
        return None
    try:
        family = get_model_spec(arch).family
    except ValueError:
        return None  # validate() names the unknown architecture
    return DEFAULT_RECIPES.get((data, family))


def with_cifar_variant(overrides: dict[str, Any]) -> dict[str, Any]:
    """`--arch resnet18` on 32x32 data means `cifar_resnet18`: the overrides with the architecture
    resolved and `arch_source` saying so (unchanged for other data, --imagenet-stem or --pretrained)."""
    arch, data = overrides.get("arch"), overrides.get("data")
    if data not in CIFAR_SIZED_DATA or overrides.get("imagenet_stem") or overrides.get("pretrained"):
        return overrides
    try:
        is_imagenet_net = get_model_spec(arch).family == "imagenet"
        get_model_spec(f"cifar_{arch}")
    except ValueError:
        return overrides
    if not is_imagenet_net:
        return overrides
    variant = f"cifar_{arch}"
    source = f"{arch} -> {variant}: the CIFAR variant (3x3 stem, no max-pool) for 32x32 {data} images; "
    return {**overrides, "arch": variant, "arch_source": source + f"--imagenet-stem keeps {arch}"}


def resolve_config(overrides: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """The defaults < recipe (given, or the default for the data and architecture) < overrides, checked.

    `recipe_source` says where the recipe came from and `arch_source` why the architecture changed, for
    the lines every run prints at start.
    """
    overrides = with_cifar_variant(overrides)
    values: dict[str, Any] = {}
    source = "--recipe"
    if not recipe:
        recipe = default_recipe(overrides.get("arch"), overrides.get("data"))
        source = f"default for --data {overrides.get('data')} and {overrides.get('arch')}"
    if recipe:
        values.update(load_recipe(recipe), recipe=str(recipe), recipe_source=source)
    values.update(checked_overrides(overrides))
    config = TrainConfig(**values)
    if config.pretrained == BARE_PRETRAINED:
        config = config.replace(pretrained=f"torchvision:{config.arch}")  # its weights in the local torch hub cache
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """What a config's options must satisfy together (each one's type and choices: `checked_fields`)."""
    if not config.arch:
        raise ConfigError("choose a network with --arch (e.g. resnet20, resnet50) or a --recipe that sets one")
    try:
        get_model_spec(config.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not config.data:
        raise ConfigError(f"choose the data with --data ({', '.join(DATA_KINDS)})")
    for key in ("epochs", "batch_size", "accum_steps"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    if config.save_every_steps < 0:
        raise ConfigError(f"save_every_steps must be >= 0 (0: only at epoch ends), got {config.save_every_steps}")
    if config.freeze_backbone and config.freeze_until:
        raise ConfigError("--freeze-backbone and --freeze-until are exclusive: pick one")
    if config.log_internals and not config.tensorboard:
        raise ConfigError("--log-internals writes to TensorBoard: drop --no-tensorboard or --log-internals")
    if (config.mean is None) != (config.std is None):
        raise ConfigError("mean and std set the input normalisation together: give both (e.g. 0.5 0.5 0.5 twice)")
    for key in ("mean", "std"):
        values = getattr(config, key)
        if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
            raise ConfigError(f"{key} {values}: three values, one per RGB channel (std > 0)")
    if config.val_split is not None and not 0.0 < config.val_split < 1.0:
        raise ConfigError(f"val_split must be between 0 and 1, got {config.val_split}")


def arch_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The `create_model` options this config sets (stored in the checkpoint as `arch_kwargs`)."""
    keys = ("drop_path_rate", "dropout", "zero_init_residual", "norm", "shortcut")
    kwargs = {k: getattr(config, k) for k in keys if getattr(config, k) is not None}
    if config.plain:
        kwargs["residual"] = False
    return kwargs


def write_config(config: TrainConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
