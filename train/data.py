"""Datasets, training augmentation and loaders for every `--data` kind.

Kinds: `digits` (scikit-learn's handwritten digits, upscaled to 32x32 RGB, the built-in real data),
`cifar10` / `cifar100` (torchvision's pickled `cifar-*-py/` batches, read from disk, never
downloaded), `imagenet` and `folder` (ImageFolder trees) and `synthetic` (random images shaped like
the chosen architecture's input).

Every dataset yields `(uint8 CHW tensor, int label)`: batches travel as uint8 and are normalised on
the device (`models.normalize_batch`). Validation images go through `models.eval_resize_crop`, the
same code the export parity check, the server and the client use.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, Subset, default_collate
from torchvision import datasets
from torchvision.transforms import v2

from models import PreprocessSpec, eval_resize_crop, get_model_spec, imagenet_class_names
from models.preprocess import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, interpolation_mode

DATA_KINDS = ("digits", "cifar10", "cifar100", "imagenet", "folder", "synthetic", "shards")

# Mean and std of the digits training split after upscaling (computed once; the split is fixed).
DIGITS_MEAN = (0.3054, 0.3054, 0.3054)
DIGITS_STD = (0.3237, 0.3237, 0.3237)
DIGITS_VAL_SPLIT = 0.2
SPLIT_SEED = 0  # train/val splits never move with --seed, so a checkpoint's val set can be rebuilt

DEFAULT_DATA_DIRS = {"imagenet": "data/imagenet", "cifar10": "data/cifar", "cifar100": "data/cifar"}

FOLDER_LAYOUT = (
    "expected an ImageFolder layout: <dir>/train/<class>/<image> and <dir>/val/<class>/<image> "
    "(or one tree <dir>/<class>/<image> with --val-split 0.1)"
)
IMAGENET_LAYOUT = (
    "expected <dir>/train/<wnid>/*.JPEG and <dir>/val/<wnid>/*.JPEG (1000 class folders such as n01440764 "
    "in each); the official validation archive is flat, sort it into class folders first "
    "(e.g. with the valprep.sh script from the PyTorch ImageNet example)"
)


class DataError(ValueError):
    """The data asked for is absent or not laid out as expected; the message says what to do."""


@dataclass(frozen=True)
class TrainAugmentDefaults:
    """What a dataset's training crop looks like unless the recipe or a flag says otherwise."""

    crop: str  # "random-crop" (pad + crop at the native size) or "random-resized-crop"
    hflip: bool
    padding: int = 4


def dataset_defaults(kind: str) -> TrainAugmentDefaults:
    if kind == "digits":  # a flipped 2 is not a 2
        return TrainAugmentDefaults(crop="random-crop", hflip=False, padding=2)
    if kind in ("cifar10", "cifar100"):
        return TrainAugmentDefaults(crop="random-crop", hflip=True, padding=4)
    return TrainAugmentDefaults(crop="random-resized-crop", hflip=True)


def default_preprocess(config: dict[str, Any]) -> PreprocessSpec:
    """The evaluation preprocessing a dataset kind implies (before --pretrained or --image-size)."""
    kind = config["data"]
    if kind == "digits":
        return PreprocessSpec(input_size=32, resize_size=32, mean=DIGITS_MEAN, std=DIGITS_STD)
    if kind == "cifar10":
        return PreprocessSpec(input_size=32, resize_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    if kind == "cifar100":
        return PreprocessSpec(input_size=32, resize_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    return get_model_spec(config["arch"]).preprocess


# --------------------------------------------------------------------------------------------------
# In-memory images (digits, CIFAR)


class TensorImages(Dataset):
    """uint8 NCHW images and int labels held in memory, with an optional per-image transform."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], transform: Callable | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 Nx3xHxW images, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


@lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 RGB, their labels, and the fixed stratified train/val indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # 0..16 -> 0..255
    gray = torch.nn.functional.interpolate(gray, size=image_size, mode="bilinear", align_corners=False)
    images = gray.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_VAL_SPLIT, stratify=labels, random_state=SPLIT_SEED
    )
    return images, labels, np.sort(train_idx), np.sort(val_idx)


def digits_split(split: str, image_size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    if split not in ("train", "val"):
        raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
    images, labels, train_idx, val_idx = _digits_arrays(image_size)
    idx = train_idx if split == "train" else val_idx
    return images[idx], labels[idx]


DIGITS_CLASSES = [str(i) for i in range(10)]


def write_digits_folder(
    root: str | Path, split: str = "val", limit_per_class: int | None = None, image_size: int = 32
) -> Path:
    """Write the digits split as an ImageFolder tree `root/<class>/<index>.png`; returns `root`.

    Real image files for tests and demos (the server, the client, `--data folder`).
    """
    from PIL import Image

    root = Path(root)
    images, labels = digits_split(split, image_size)
    written = dict.fromkeys(range(10), 0)
    for index, (image, label) in enumerate(zip(images, labels)):
        label = int(label)
        if limit_per_class is not None and written[label] >= limit_per_class:
            continue
        folder = root / DIGITS_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index}.png")
        written[label] += 1
    return root


_CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def cifar_dir(kind: str, data_dir: str | Path) -> Path:
    """`data_dir` may be the folder holding `cifar-10-batches-py/` (torchvision's root) or that folder."""
    folder_name = _CIFAR_FILES[kind][0]
    data_dir = Path(data_dir)
    for candidate in (data_dir / folder_name, data_dir):
        if (candidate / _CIFAR_FILES[kind][3]).is_file():
            return candidate
    raise DataError(
        f"{kind}: no {folder_name}/ found at {data_dir}. Expected {data_dir / folder_name}/ with "
        f"{', '.join(_CIFAR_FILES[kind][1] + _CIFAR_FILES[kind][2] + [_CIFAR_FILES[kind][3]])} "
        "(torchvision's pickled format, as extracted from the python version archive from "
        "https://www.cs.toronto.edu/~kriz/cifar.html); nothing is downloaded."
    )


def read_cifar(kind: str, data_dir: str | Path, train: bool) -> tuple[torch.Tensor, list[int], list[str]]:
    """Images (uint8 Nx3x32x32), labels and class names from the pickled CIFAR batches."""
    folder = cifar_dir(kind, data_dir)
    _, train_files, test_files, meta_file, label_key, names_key = _CIFAR_FILES[kind]
    arrays, labels = [], []
    for name in train_files if train else test_files:
        entry = _unpickle(folder / name)
        try:
            arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in entry[label_key])
        except (KeyError, ValueError) as e:
            raise DataError(
                f"{folder / name}: not a {kind} batch ({e!r}); expected 'data' Nx3072 and {label_key!r}"
            ) from None
    meta = _unpickle(folder / meta_file)
    if names_key not in meta:
        raise DataError(f"{folder / meta_file}: not a {kind} meta file (no {names_key!r})")
    class_names = [str(n) for n in meta[names_key]]
    return torch.from_numpy(np.concatenate(arrays)), labels, class_names


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, strings, numbers and numpy arrays.

    Plain `pickle.load` would run any callable a file names (a crafted batch next to a downloaded
    checkpoint would run code during export); here every global outside this list is refused.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # the official files (numpy 1.x pickles)
        ("numpy._core.multiarray", "_reconstruct"),  # files pickled by numpy 2.x
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes written by Python 3
            return _latin1_bytes
        if (module, name) in self.ALLOWED:
            return _plain_dtype if name == "dtype" else super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
        )


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(spec: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(spec, *args)
    if dtype.hasobject:  # object arrays would unpickle arbitrary objects element by element
        raise pickle.UnpicklingError(f"refused an object array (dtype {dtype})")
    return dtype


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing CIFAR file (torchvision's pickled format is expected)")
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise DataError(
            f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e}); the file is corrupt, truncated or not "
            "from the python version archive. Replace it with the original file"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR batch (holds a {type(entry).__name__}, expected a dict)")
    return entry


# --------------------------------------------------------------------------------------------------
# Image folders (imagenet, folder)


def _class_folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_folder(path: Path, transform: Callable | None, layout: str) -> datasets.ImageFolder:
    if not path.is_dir():
        raise DataError(f"{path}: no such directory; {layout}")
    if not _class_folders(path):
        raise DataError(f"{path}: has no class folders; {layout}")
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as e:
        raise DataError(f"{path}: {e}; {layout}") from None


def folder_roots(config: dict[str, Any]) -> tuple[Path, Path | None]:
    """(train root, val root) of an ImageFolder dataset; val root None means split the train tree."""
    kind = config["data"]
    layout = IMAGENET_LAYOUT if kind == "imagenet" else FOLDER_LAYOUT
    data_dir = config.get("data_dir") or DEFAULT_DATA_DIRS.get(kind)
    if not data_dir:
        raise DataError(f"--data {kind} needs --data-dir; {layout}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; {layout}")
    train, val = root / "train", root / "val"
    if train.is_dir() and val.is_dir():
        if kind == "imagenet" and not _class_folders(val):
            raise DataError(f"{val}: the validation images are not in class folders; {layout}")
        return train, val
    if kind == "folder" and config.get("val_split"):
        return root, None
    missing = [str(p) for p in (train, val) if not p.is_dir()]
    raise DataError(f"{root}: missing {' and '.join(missing)}; {layout}")


def _split_indices(labels: Sequence[int], val_split: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    stratify = labels if np.bincount(labels).min() >= 2 else None
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_split, stratify=stratify, random_state=SPLIT_SEED
    )
    return np.sort(train_idx), np.sort(val_idx)


def _folder_dataset(config: dict[str, Any], split: str, transform: Callable) -> tuple[Dataset, list[str]]:
    layout = IMAGENET_LAYOUT if config["data"] == "imagenet" else FOLDER_LAYOUT
    train_root, val_root = folder_roots(config)
    if val_root is not None:
        dataset = image_folder(train_root if split == "train" else val_root, transform, layout)
        other = _class_folders(val_root if split == "train" else train_root)
        if other != dataset.classes:
            raise DataError(
                f"{train_root} and {val_root} have different class folders "
                f"({len(dataset.classes)} vs {len(other)}); both need the same set"
            )
        return dataset, _class_names(config["data"], dataset.classes)
    dataset = image_folder(train_root, transform, layout)
    train_idx, val_idx = _split_indices(dataset.targets, float(config["val_split"]))
    return Subset(dataset, (train_idx if split == "train" else val_idx).tolist()), dataset.classes


def _class_names(kind: str, folders: list[str]) -> list[str]:
    """ImageNet's wnid folders (n01440764, ...) sort into the standard index order: give them names."""
    if kind == "imagenet" and len(folders) == 1000:
        return list(imagenet_class_names())
    return list(folders)


# --------------------------------------------------------------------------------------------------
# Synthetic


class SyntheticImages(Dataset):
    """Random uint8 images, generated per index (the same image every time), labels cycling the classes."""

    def __init__(self, length: int, image_size: int, num_classes: int, seed: int, transform: Callable | None):
        self.length, self.image_size, self.num_classes = length, image_size, num_classes
        self.seed, self.transform = seed, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randint(0, 256, (3, self.image_size, self.image_size), dtype=torch.uint8, generator=g)
        if self.transform is not None:
            image = self.transform(image)
        return image, index % self.num_classes


def _synthetic(config: dict[str, Any], split: str, transform: Callable | None) -> tuple[Dataset, list[str]]:
    spec = get_model_spec(config["arch"])
    num_classes = int(config.get("num_classes") or spec.default_num_classes)
    size = spec.preprocess.resize_size  # the uncropped size, as real images arrive
    length = int(config["synthetic_size"]) if split == "train" else max(int(config["synthetic_size"]) // 4, 1)
    seed = SPLIT_SEED + (0 if split == "train" else 1)
    names = list(imagenet_class_names()) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    return SyntheticImages(length, size, num_classes, seed, transform), names


# --------------------------------------------------------------------------------------------------
# Public entry points


def build_dataset(config: dict[str, Any], split: str, transform: Callable | None) -> tuple[Dataset, list[str]]:
    """(dataset, class names) for `split` ("train" or "val") of `config["data"]`."""
    kind = config["data"]
    if kind not in DATA_KINDS:
        raise DataError(f"unknown --data {kind!r}; choose one of {', '.join(DATA_KINDS)}")
    if kind == "digits":
        images, labels = digits_split(split)
        return TensorImages(images, labels, transform), list(DIGITS_CLASSES)
    if kind in ("cifar10", "cifar100"):
        images, labels, names = read_cifar(kind, config.get("data_dir") or DEFAULT_DATA_DIRS[kind], split == "train")
        return TensorImages(images, labels, transform), names
    if kind == "synthetic":
        return _synthetic(config, split, transform)
    if kind == "shards":  # hook: tar shards (train/shard_reader.py)
        from .shard_reader import shard_dataset  # noqa: PLC0415  (it imports this module)

        return shard_dataset(config, split, transform)
    return _folder_dataset(config, split, transform)


def build_validation_set(config: dict[str, Any], preprocess: PreprocessSpec) -> Dataset:
    """The validation split of a run's data as `(uint8 CHW, label)`, through `eval_resize_crop(preprocess)`.

    `config` is a checkpoint's `config` (needs `data`, `data_dir`, `val_split`, `arch`).
    """
    dataset, _ = build_dataset(config, "val", eval_resize_crop(preprocess))
    return dataset


def class_names(config: dict[str, Any]) -> list[str]:
    return build_dataset(config, "val", None)[1]


def train_transform(config: dict[str, Any], spec: PreprocessSpec) -> v2.Compose:
    """Per-image training augmentation ending in a uint8 CHW tensor of `spec.input_size`."""
    defaults = dataset_defaults(config["data"])
    crop = config.get("train_crop") or defaults.crop
    hflip = defaults.hflip if config.get("hflip") is None else bool(config["hflip"])
    size = int(config.get("train_size") or spec.input_size)
    interpolation = interpolation_mode(spec)
    ops: list[Any] = [v2.ToImage()]
    if crop == "random-resized-crop":
        ops.append(v2.RandomResizedCrop(size, interpolation=interpolation, antialias=True))
    elif crop == "random-crop":
        padding = defaults.padding if config.get("crop_padding") is None else int(config["crop_padding"])
        ops += [v2.Resize(size, interpolation=interpolation, antialias=True), v2.RandomCrop(size, padding=padding)]
    elif crop == "center":  # no crop augmentation: exactly the evaluation view
        ops.append(eval_resize_crop(spec))
    else:
        raise ValueError(f"train_crop {crop!r}: expected random-resized-crop, random-crop or center")
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    auto = (config.get("auto_augment") or "none").lower()
    if auto == "randaugment":
        ops.append(v2.RandAugment(magnitude=int(config.get("randaugment_magnitude") or 9), interpolation=interpolation))
    elif auto == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif auto == "autoaugment":
        ops.append(v2.AutoAugment(interpolation=interpolation))
    elif auto != "none":
        raise ValueError(f"auto_augment {auto!r}: expected none, randaugment, trivialaugment or autoaugment")
    if config.get("random_erasing"):
        # Erased pixels take the dataset mean, i.e. zero after normalisation.
        fill = [round(m * 255) for m in spec.mean]
        ops.append(v2.RandomErasing(p=float(config["random_erasing"]), value=fill))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)


# --------------------------------------------------------------------------------------------------
# Samplers and loaders


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, sharded by rank) that can start mid-epoch.

    `set_epoch(epoch, skip=n)` drops this rank's first n samples: a run resumed after an interruption
    sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler[int]):
    """Rank r of n takes indices r, r+n, ...: every sample exactly once over all ranks, no padding."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader_options(config: dict[str, Any], in_memory: bool, pin_memory: bool) -> dict[str, Any]:
    workers = config.get("workers")
    if workers is None:  # decoding files wants workers; in-memory tensors are faster in-process
        workers = 0 if in_memory else min(8, max(1, (torch.get_num_threads() or 1)))
    workers = int(workers)
    options: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory)
    if workers > 0:
        # Persistent workers keep their RNG across epochs, which a resumed run cannot reproduce.
        options.update(persistent_workers=not config.get("deterministic"), prefetch_factor=4)
    return options


@dataclass(frozen=True)
class UnreadableImage:
    """Stands in for a training image that failed to decode; `collate_skipping` drops it from its batch."""

    path: str
    reason: str


class SkipUnreadable(Dataset):
    """A file-backed training set where an image that cannot be decoded becomes an `UnreadableImage`
    instead of an exception that would end the epoch (and the run) part-way."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what PIL raises on bad files
            return UnreadableImage(_sample_path(self.dataset, index), f"{type(e).__name__}: {e}")


def _sample_path(dataset: Dataset, index: int) -> str:
    if isinstance(dataset, Subset):
        return _sample_path(dataset.dataset, dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"image #{index}"


def collate_skipping(samples: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[UnreadableImage]]:
    """(images, labels, unreadable): the batch without its unreadable images (None, None when none was read)."""
    kept = [s for s in samples if not isinstance(s, UnreadableImage)]
    skipped = [s for s in samples if isinstance(s, UnreadableImage)]
    if not kept:
        return None, None, skipped
    images, labels = default_collate(kept)
    return images, labels, skipped


class UnreadableImages:
    """Counts the images `collate_skipping` dropped in one epoch; more than `cap` stops the run."""

    def __init__(self, cap: int):
        self.cap = cap
        self.skipped: list[UnreadableImage] = []

    def batches(self, loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        for batch in loader:
            if len(batch) == 2:  # in-memory data: nothing to skip
                yield batch
                continue
            images, labels, skipped = batch
            self.skipped += skipped
            if len(self.skipped) > self.cap:
                raise DataError(
                    f"{len(self.skipped)} training images could not be read this epoch (more than "
                    f"--max-unreadable-images {self.cap}); the first: {self.skipped[0].path} "
                    f"({self.skipped[0].reason}). Fix or remove them, or raise the limit"
                )
            if images is not None:
                yield images, labels

    def report(self) -> str | None:
        if not self.skipped:
            return None
        shown = "; ".join(f"{s.path} ({s.reason})" for s in self.skipped[:5])
        more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
        return f"warning: skipped {len(self.skipped)} unreadable training image(s) this epoch: {shown}{more}"


def is_in_memory(dataset: Dataset) -> bool:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return isinstance(base, TensorImages)


def build_train_loader(
    dataset: Dataset, config: dict[str, Any], batch_size: int, world_size: int, rank: int, pin_memory: bool
) -> DataLoader:
    """Shuffled per-process batches of `batch_size`; incomplete last batches are dropped."""
    from .shard_reader import ShardStream, build_shard_train_loader  # noqa: PLC0415  (hook: tar shards)

    if isinstance(dataset, ShardStream):
        return build_shard_train_loader(dataset, config, batch_size, world_size, rank, pin_memory)
    sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, seed=int(config["seed"]))
    batches = BatchSampler(sampler, batch_size, drop_last=True)
    if len(batches) == 0:
        raise DataError(
            f"{len(dataset)} training images give no full batch of {batch_size} per process; "
            "lower --batch-size or add data"
        )
    # The loader draws its workers' base seed from its own generator, reseeded every epoch
    # (`start_epoch`), never from the global RNG: a resumed run must not see one draw more or less.
    generator = torch.Generator()
    in_memory = is_in_memory(dataset)
    if not in_memory:  # files can be unreadable: skip and count them instead of ending the run
        dataset = SkipUnreadable(dataset)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        generator=generator,
        collate_fn=None if in_memory else collate_skipping,
        **_loader_options(config, in_memory, pin_memory),
    )


def start_epoch(loader: DataLoader, epoch: int, skip_samples: int = 0) -> None:
    """Shuffle for `epoch` (from its first sample or `skip_samples` in) and reseed the worker seeds."""
    from .shard_reader import ShardBatches  # noqa: PLC0415  (hook: tar shards)

    if isinstance(loader.dataset, ShardBatches):
        loader.dataset.set_epoch(epoch, skip_samples // loader.dataset.batch_size)
        return
    sampler: EpochSampler = loader.batch_sampler.sampler
    sampler.set_epoch(epoch, skip=skip_samples)
    loader.generator.manual_seed(sampler.seed * 100_003 + epoch * 1_009 + sampler.rank)


def build_val_loader(
    dataset: Dataset, config: dict[str, Any], batch_size: int, world_size: int, rank: int, pin_memory: bool
) -> DataLoader:
    sampler = ShardSampler(len(dataset), world_size, rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        **_loader_options(config, is_in_memory(dataset), pin_memory),
    )
