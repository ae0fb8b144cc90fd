"""The registry of `--data` kinds: one record per kind says how its dataset is built, the preprocessing it
implies and how its training crop looks by default. Every command that names data (`python -m train
--data`, `python -m client evaluate --data`) reads this one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch.utils.data import Dataset

from models import PreprocessSpec, eval_resize_crop, get_model_spec
from models.preprocess import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

from .cifar import read_cifar
from .digits import DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD, digits_split
from .errors import DataError
from .folders import IMAGENET_TREE, PLAIN_TREE, folder_dataset
from .shards import shard_dataset
from .synthetic import synthetic_dataset
from .tensors import TensorImages

# (config, split, per-image transform) -> (dataset, class names)
DatasetBuilder = Callable[[dict[str, Any], str, Callable | None], tuple[Dataset, list[str]]]


@dataclass(frozen=True)
class TrainAugmentDefaults:
    """What a dataset's training crop looks like unless the recipe or a flag says otherwise."""

    crop: str  # "random-crop" (pad + crop at the native size) or "random-resized-crop"
    hflip: bool
    padding: int = 4


@dataclass(frozen=True)
class DataKind:
    name: str
    build: DatasetBuilder
    preprocess: PreprocessSpec | None  # the evaluation preprocessing it implies; None: the architecture's own
    augment: TrainAugmentDefaults
    streamed: bool = False  # training reads it as a stream (train.shard_reader), not by index
    decodes_files: bool = False  # its builder takes a `decoder` (imagedata/decoders.py) for encoded files


def _digits(config: dict[str, Any], split: str, transform: Callable | None) -> tuple[Dataset, list[str]]:
    images, labels = digits_split(split)
    return TensorImages(images, labels, transform), list(DIGITS_CLASSES)


def _cifar(
    kind: str, default_dir: str, config: dict[str, Any], split: str, transform: Callable | None
) -> tuple[Dataset, list[str]]:
    images, labels, names = read_cifar(kind, config.get("data_dir") or default_dir, split == "train")
    return TensorImages(images, labels, transform), names


def _small(mean: tuple[float, ...], std: tuple[float, ...]) -> PreprocessSpec:
    return PreprocessSpec(input_size=32, resize_size=32, mean=mean, std=std)


PHOTO_CROP = TrainAugmentDefaults(crop="random-resized-crop", hflip=True)
CIFAR_CROP = TrainAugmentDefaults(crop="random-crop", hflip=True, padding=4)

KINDS: dict[str, DataKind] = {
    kind.name: kind
    for kind in (
        # A flipped 2 is not a 2: no horizontal flips for digits.
        DataKind(
            "digits", _digits, _small(DIGITS_MEAN, DIGITS_STD), TrainAugmentDefaults("random-crop", False, padding=2)
        ),
        DataKind("cifar10", partial(_cifar, "cifar10", "data/cifar"), _small(CIFAR10_MEAN, CIFAR10_STD), CIFAR_CROP),
        DataKind(
            "cifar100", partial(_cifar, "cifar100", "data/cifar"), _small(CIFAR100_MEAN, CIFAR100_STD), CIFAR_CROP
        ),
        DataKind("imagenet", partial(folder_dataset, IMAGENET_TREE), None, PHOTO_CROP, decodes_files=True),
        DataKind("folder", partial(folder_dataset, PLAIN_TREE), None, PHOTO_CROP, decodes_files=True),
        DataKind("synthetic", synthetic_dataset, None, PHOTO_CROP),
        DataKind("shards", shard_dataset, None, PHOTO_CROP, streamed=True),
    )
}
DATA_KINDS = tuple(KINDS)


def data_kind(name: str) -> DataKind:
    if name not in KINDS:
        raise DataError(f"unknown --data {name!r}; choose one of {', '.join(DATA_KINDS)}")
    return KINDS[name]


def default_preprocess(config: dict[str, Any]) -> PreprocessSpec:
    """The evaluation preprocessing a dataset kind implies (before --pretrained or --image-size)."""
    return data_kind(config["data"]).preprocess or get_model_spec(config["arch"]).preprocess


def build_dataset(
    config: dict[str, Any], split: str, transform: Callable | None, decoder: str = "pil"
) -> tuple[Dataset, list[str]]:
    """(dataset, class names) for `split` ("train" or "val") of `config["data"]`; image files decoded by
    `decoder` (imagedata/decoders.py; in-memory kinds have nothing to decode)."""
    kind = data_kind(config["data"])
    if kind.decodes_files:
        return kind.build(config, split, transform, decoder=decoder)
    return kind.build(config, split, transform)


def build_validation_set(config: dict[str, Any], preprocess: PreprocessSpec) -> Dataset:
    """The validation split of a run's data as `(uint8 CHW, label)`, through `eval_resize_crop(preprocess)`.

    `config` is a checkpoint's `config` (needs `data`, `data_dir`, `val_split`, `arch`).
    """
    dataset, _ = build_dataset(config, "val", eval_resize_crop(preprocess))
    return dataset


def class_names(config: dict[str, Any]) -> list[str]:
    return build_dataset(config, "val", None)[1]
