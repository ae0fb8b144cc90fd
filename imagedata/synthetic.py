"""Random images shaped like an architecture's input: data for smoke runs and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from models import get_model_spec, imagenet_class_names

from .splits import SPLIT_SEED


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


def synthetic_dataset(config: dict[str, Any], split: str, transform: Callable | None) -> tuple[Dataset, list[str]]:
    """`config["synthetic_size"]` training images (a quarter as many for val) at the architecture's input size."""
    spec = get_model_spec(config["arch"])
    num_classes = int(config.get("num_classes") or spec.default_num_classes)
    size = spec.preprocess.resize_size  # the uncropped size, as real images arrive
    length = int(config["synthetic_size"]) if split == "train" else max(int(config["synthetic_size"]) // 4, 1)
    seed = SPLIT_SEED + (0 if split == "train" else 1)
    names = list(imagenet_class_names()) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    return SyntheticImages(length, size, num_classes, seed, transform), names
