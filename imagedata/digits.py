"""scikit-learn's handwritten digits, upscaled to RGB: the built-in real data (no files, no download)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .splits import split_indices

# Mean and std of the digits training split after upscaling (computed once; the split is fixed).
DIGITS_MEAN = (0.3054, 0.3054, 0.3054)
DIGITS_STD = (0.3237, 0.3237, 0.3237)
DIGITS_VAL_SPLIT = 0.2


@lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 RGB, their labels, and the fixed stratified train/val indices."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # 0..16 -> 0..255
    gray = torch.nn.functional.interpolate(gray, size=image_size, mode="bilinear", align_corners=False)
    images = gray.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = digits.target.astype(np.int64)
    return images, labels, *split_indices(labels, DIGITS_VAL_SPLIT)


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
