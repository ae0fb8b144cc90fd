"""Helpers for the train tests: real digits written in the true on-disk formats, in-process runs."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from train.data import digits_split
from train.run import RunResult, build_config, run

QUIET = {"tensorboard": False, "plots": False, "log_every": 1000, "workers": 0}


def digits_subset(split: str, per_class: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` digits of each of the first `classes` classes, as uint8 NHWC."""
    images, labels = digits_split(split)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])
    return images[keep].permute(0, 2, 3, 1).numpy(), labels[keep]


def write_jpeg_tree(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img_{i:04d}.jpg", quality=95)
    return root


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_cifar(root: Path, kind: str, train_per_class: int = 8, test_per_class: int = 3) -> Path:
    """A CIFAR directory in torchvision's pickled format (digits stand in for the photos)."""
    classes = 10

    def batch(split: str, per_class: int) -> tuple[np.ndarray, list[int]]:
        images, labels = digits_subset(split, per_class, classes)
        data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # row: 1024 R, 1024 G, 1024 B
        return np.ascontiguousarray(data), [int(v) for v in labels]

    def dump(path: Path, obj: dict[str, Any]) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    train_data, train_labels = batch("train", train_per_class)
    test_data, test_labels = batch("val", test_per_class)
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        chunks = np.array_split(np.arange(len(train_labels)), 5)
        for i, idx in enumerate(chunks, start=1):
            dump(
                folder / f"data_batch_{i}",
                {
                    "batch_label": f"training batch {i} of 5",
                    "data": train_data[idx],
                    "labels": [train_labels[j] for j in idx],
                    "filenames": [],
                },
            )
        dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test_data, "labels": test_labels})
        dump(folder / "batches.meta", {"label_names": DIGIT_NAMES, "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        fine = [f"fine_{n}" for n in DIGIT_NAMES] + [f"unused_{i}" for i in range(90)]
        dump(
            folder / "train",
            {"data": train_data, "fine_labels": train_labels, "coarse_labels": [0] * len(train_labels)},
        )
        dump(folder / "test", {"data": test_data, "fine_labels": test_labels, "coarse_labels": [0] * len(test_labels)})
        dump(folder / "meta", {"fine_label_names": fine, "coarse_label_names": ["all"]})
    return root


def train_in_process(out: Path, name: str, **overrides: Any) -> RunResult:
    """`python -m train` minus the process: same config resolution, same run()."""
    config = build_config({"out": str(out), "name": name, "epochs": 1, "batch_size": 16, **QUIET, **overrides})
    return run(config)
