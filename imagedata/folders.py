"""ImageFolder trees (`--data imagenet` and `--data folder`): `<dir>/train/<class>/<image>` and
`<dir>/val/<class>/<image>`, or for `folder` one tree split by `--val-split`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset
from torchvision import datasets

from models import imagenet_class_names

from .decoders import DecodeAndTransform, read_bytes
from .errors import DataError
from .splits import split_indices

FOLDER_LAYOUT = (
    "expected an ImageFolder layout: <dir>/train/<class>/<image> and <dir>/val/<class>/<image> "
    "(or one tree <dir>/<class>/<image> with --val-split 0.1)"
)
IMAGENET_LAYOUT = (
    "expected <dir>/train/<wnid>/*.JPEG and <dir>/val/<wnid>/*.JPEG (1000 class folders such as n01440764 "
    "in each); the official validation archive is flat, sort it into class folders first "
    "(e.g. with the valprep.sh script from the PyTorch ImageNet example)"
)


@dataclass(frozen=True)
class FolderTree:
    """How one folder kind's files must lie."""

    kind: str  # the --data name, for messages
    layout: str  # the expected layout, said in every error
    default_dir: str | None
    imagenet: bool  # wnid class folders: the val tree must be sorted into them, and they get ImageNet's names
    may_split: bool  # one tree split by --val-split is allowed


IMAGENET_TREE = FolderTree("imagenet", IMAGENET_LAYOUT, "data/imagenet", imagenet=True, may_split=False)
PLAIN_TREE = FolderTree("folder", FOLDER_LAYOUT, None, imagenet=False, may_split=True)


def _class_folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_folder(path: Path, transform: Callable | None, layout: str, decoder: str = "pil") -> datasets.ImageFolder:
    """The tree at `path`; with a decoder other than `pil`, files are read as bytes and decoded by it
    (imagedata/decoders.py) before the rest of `transform`."""
    if not path.is_dir():
        raise DataError(f"{path}: no such directory; {layout}")
    if not _class_folders(path):
        raise DataError(f"{path}: has no class folders; {layout}")
    if decoder == "pil":
        options = {"transform": transform}
    else:
        options = {"loader": read_bytes, "transform": DecodeAndTransform(decoder, transform)}
    try:
        return datasets.ImageFolder(str(path), **options)
    except FileNotFoundError as e:
        raise DataError(f"{path}: {e}; {layout}") from None


def folder_roots(tree: FolderTree, config: dict[str, Any]) -> tuple[Path, Path | None]:
    """(train root, val root) of an ImageFolder dataset; val root None means split the train tree."""
    data_dir = config.get("data_dir") or tree.default_dir
    if not data_dir:
        raise DataError(f"--data {tree.kind} needs --data-dir; {tree.layout}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; {tree.layout}")
    train, val = root / "train", root / "val"
    if train.is_dir() and val.is_dir():
        if tree.imagenet and not _class_folders(val):
            raise DataError(f"{val}: the validation images are not in class folders; {tree.layout}")
        return train, val
    if tree.may_split and config.get("val_split"):
        return root, None
    missing = [str(p) for p in (train, val) if not p.is_dir()]
    raise DataError(f"{root}: missing {' and '.join(missing)}; {tree.layout}")


def folder_dataset(
    tree: FolderTree, config: dict[str, Any], split: str, transform: Callable | None, decoder: str = "pil"
) -> tuple[Dataset, list[str]]:
    train_root, val_root = folder_roots(tree, config)
    if val_root is not None:
        dataset = image_folder(train_root if split == "train" else val_root, transform, tree.layout, decoder)
        other = _class_folders(val_root if split == "train" else train_root)
        if other != dataset.classes:
            raise DataError(
                f"{train_root} and {val_root} have different class folders "
                f"({len(dataset.classes)} vs {len(other)}); both need the same set"
            )
        return dataset, _class_names(tree, dataset.classes)
    dataset = image_folder(train_root, transform, tree.layout, decoder)
    train_idx, val_idx = split_indices(dataset.targets, float(config["val_split"]))
    return Subset(dataset, (train_idx if split == "train" else val_idx).tolist()), dataset.classes


def _class_names(tree: FolderTree, folders: list[str]) -> list[str]:
    """ImageNet's wnid folders (n01440764, ...) sort into the standard index order: give them names."""
    if tree.imagenet and len(folders) == 1000:
        return list(imagenet_class_names())
    return list(folders)
