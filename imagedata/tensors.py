"""Images held in memory (digits, CIFAR)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset


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
