"""Fixed train/val splits: they never move with --seed, so a checkpoint's val set can be rebuilt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_SEED = 0


def split_indices(labels: Sequence[int], val_split: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices, stratified by label where every class has at least two images."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    stratify = labels if np.bincount(labels).min() >= 2 else None
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_split, stratify=stratify, random_state=SPLIT_SEED
    )
    return np.sort(train_idx), np.sort(val_idx)
