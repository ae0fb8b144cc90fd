"""CIFAR-10/100 from torchvision's pickled `cifar-*-py/` batches on disk (never downloaded), read with an
unpickler that refuses everything but arrays, lists and strings."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError

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
