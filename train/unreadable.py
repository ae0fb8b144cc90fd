"""Training images that cannot be read: each stands in as an `UnreadableImage`, is dropped from its batch by
`collate_skipping`, and is counted per epoch by `UnreadableImages` (more than the cap stops the run)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, default_collate

from imagedata.errors import DataError


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


def collate_skipping(
    samples: list[Any], channels_last: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[UnreadableImage]]:
    """(images, labels, unreadable): the batch without its unreadable images (None, None when none was read).
    `channels_last`: the images stacked in NHWC memory (then a plain copy of the HWC memory the decoders
    leave them in, and the device's channels_last copy is free), else in NCHW."""
    kept = [s for s in samples if not isinstance(s, UnreadableImage)]
    skipped = [s for s in samples if isinstance(s, UnreadableImage)]
    if not kept:
        return None, None, skipped
    if not channels_last:
        images, labels = default_collate(kept)
        return images, labels, skipped
    # default_collate still stacks (into shared memory in a loader worker); NCHW is a view of the NHWC batch
    images, labels = default_collate([(image.permute(1, 2, 0), label) for image, label in kept])
    return images.permute(0, 3, 1, 2), labels, skipped


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
