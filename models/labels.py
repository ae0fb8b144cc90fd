"""Class names that ship with the package (no download)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import torch


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (from torchvision's weight metadata)."""
    text = resources.files(__package__).joinpath("data/imagenet_classes.json").read_text()
    names = tuple(json.loads(text))
    assert len(names) == 1000, f"imagenet_classes.json has {len(names)} names, expected 1000"
    return names


def top_k_labels(probabilities: torch.Tensor, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (class name, probability) pairs of one image, highest first; k is capped
    at the number of classes."""
    values, indices = probabilities.topk(min(k, len(class_names)))
    return [(class_names[i], p) for p, i in zip(values.tolist(), indices.tolist())]
