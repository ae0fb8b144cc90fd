"""Run configuration: defaults, YAML recipes and command-line overrides, resolved into one flat dict.

Precedence: `DEFAULTS` < the recipe (`--recipe NAME` or a path to a YAML file) < flags given on the
command line. The resolved dict is written to `runs/<name>/config.yaml` and stored in every
checkpoint, so a run can always be reproduced (and its validation set rebuilt) from either.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fsutil.atomic import atomic_write_text
from models import get_model_spec

DEFAULTS: dict[str, Any] = {
    # what and where
    "arch": None,
    "data": None,
    "data_dir": None,
    "val_split": None,
    "max_unreadable_images": 100,  # training images that fail to decode, skipped per epoch before the run stops
    "num_classes": None,  # synthetic data only; other kinds count their classes
    "synthetic_size": 1024,
    "out": "runs",
    "name": None,
    # the network
    "drop_path_rate": None,
    "dropout": None,
    "zero_init_residual": None,
    "norm": None,  # None: BatchNorm; "none": the norm-free ablation
    "plain": False,  # no shortcuts: the CIFAR paper's plain networks
    "shortcut": None,  # None: the architecture's own (A for the paper's nets, B otherwise)
    "imagenet_stem": False,  # keep an ImageNet net's 7x7 stem + max-pool on 32x32 data (else: its CIFAR variant)
    "pretrained": None,
    "freeze_backbone": False,
    "freeze_until": None,
    # optimisation
    "epochs": 10,
    "batch_size": 64,  # global: images per optimizer step over all processes and accumulation steps
    "lr": 0.1,
    "lr_base_batch": None,  # when set, lr is scaled linearly by batch_size / lr_base_batch
    "head_lr": None,
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "no_wd_norm_bias": False,
    "scheduler": "cosine",
    "warmup_epochs": 0.0,
    "warmup_start_factor": 0.01,
    "milestones": [],
    "lr_gamma": 0.1,
    "min_lr": 0.0,
    "grad_clip": None,
    "accum_steps": 1,
    # regularisation and augmentation
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "train_crop": None,  # None: the dataset's default (random-crop for 32x32 data, random-resized-crop else)
    "train_size": None,
    "crop_padding": None,
    "hflip": None,
    "auto_augment": "none",
    "randaugment_magnitude": 9,
    "random_erasing": 0.0,
    "ema": False,
    "ema_decay": 0.999,
    # evaluation preprocessing overrides
    "image_size": None,
    "val_resize": None,
    "interpolation": None,
    "mean": None,  # input normalisation per RGB channel (None: the data's or the weights' own)
    "std": None,
    # speed and determinism
    "amp": "none",
    "channels_last": False,
    "grad_checkpoint": False,  # recompute blocks in backward: less activation memory, ~1/3 more compute
    "compile": False,
    "sync_bn": False,
    "device": "auto",
    "workers": None,
    "decoder": "auto",  # how training image files are decoded (imagedata/decoders.py)
    "val_batch_size": None,
    "seed": 0,
    "deterministic": False,
    # outputs
    "log_every": 10,
    "save_every_steps": 0,
    "tensorboard": True,
    "plots": True,
    "log_internals": False,
    "resume": None,
    "overwrite": False,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "adamw"),
    "scheduler": ("cosine", "step", "multistep", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "auto_augment": ("none", "randaugment", "trivialaugment", "autoaugment"),
    "train_crop": ("random-resized-crop", "random-crop", "center"),
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "decoder": ("auto", "pil", "turbo", "draft", "cuda"),
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


def recipes_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("recipes")))


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description."""
    return {
        path.stem: str(yaml.safe_load(path.read_text()).get("description", ""))
        for path in sorted(recipes_dir().glob("*.yaml"))
    }


def load_recipe(name_or_path: str | os.PathLike) -> dict[str, Any]:
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
    unknown = sorted(set(recipe) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown options {unknown}; see `python -m train --help` for the names")
    return recipe


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


def resolve_config(overrides: dict[str, Any], recipe: str | None = None) -> dict[str, Any]:
    """DEFAULTS < recipe (given, or the default for the data and architecture) < overrides, validated.

    `recipe_source` says where the recipe came from and `arch_source` why the architecture changed, for
    the lines every run prints at start.
    """
    overrides = with_cifar_variant(overrides)
    config = dict(DEFAULTS)
    source = "--recipe"
    if not recipe:
        recipe = default_recipe(overrides.get("arch"), overrides.get("data"))
        source = f"default for --data {overrides.get('data')} and {overrides.get('arch')}"
    if recipe:
        config.update(load_recipe(recipe))
        config["recipe"] = str(recipe)
        config["recipe_source"] = source
    config.update(overrides)
    if config.get("pretrained") == BARE_PRETRAINED:
        config["pretrained"] = f"torchvision:{config['arch']}"  # its weights in the local torch hub cache
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    if not config.get("arch"):
        raise ConfigError("choose a network with --arch (e.g. resnet20, resnet50) or a --recipe that sets one")
    try:
        get_model_spec(config["arch"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not config.get("data"):
        raise ConfigError("choose the data with --data (digits, cifar10, cifar100, imagenet, folder, synthetic)")
    for key, allowed in CHOICES.items():
        if config.get(key) is not None and config[key] not in allowed:
            raise ConfigError(f"{key} {config[key]!r}: expected one of {', '.join(allowed)}")
    for key in ("epochs", "batch_size", "accum_steps"):
        if int(config[key]) < 1:
            raise ConfigError(f"{key} must be >= 1, got {config[key]}")
    if int(config.get("save_every_steps") or 0) < 0:
        raise ConfigError(f"save_every_steps must be >= 0 (0: only at epoch ends), got {config['save_every_steps']}")
    if config["freeze_backbone"] and config["freeze_until"]:
        raise ConfigError("--freeze-backbone and --freeze-until are exclusive: pick one")
    if config.get("log_internals") and not config.get("tensorboard"):
        raise ConfigError("--log-internals writes to TensorBoard: drop --no-tensorboard or --log-internals")
    if (config.get("mean") is None) != (config.get("std") is None):
        raise ConfigError("mean and std set the input normalisation together: give both (e.g. 0.5 0.5 0.5 twice)")
    for key in ("mean", "std"):
        values = config.get(key)
        if values is not None and (len(values) != 3 or (key == "std" and min(map(float, values)) <= 0)):
            raise ConfigError(f"{key} {values}: three values, one per RGB channel (std > 0)")
    if config["val_split"] is not None and not 0.0 < float(config["val_split"]) < 1.0:
        raise ConfigError(f"val_split must be between 0 and 1, got {config['val_split']}")


def arch_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The `create_model` options this config sets (stored in the checkpoint as `arch_kwargs`)."""
    keys = ("drop_path_rate", "dropout", "zero_init_residual", "norm", "shortcut")
    kwargs = {k: config[k] for k in keys if config.get(k) is not None}
    if config.get("plain"):
        kwargs["residual"] = False
    return kwargs


def write_config(config: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
