"""The classifier (docs/architecture.md, contract 3): encoded image -> the manifest's preprocessing -> runner
-> softmax -> top-k labels. The only prediction path: the TorchServe handler, `client --local`,
`train --predict` and evaluation all go through it, so they can never disagree.

    classifier = Classifier.from_export("exports/digits")     # or Classifier.from_checkpoint("best.pt")
    classifier.classify([Path("cat.jpg").read_bytes()])         # [[("tabby", 0.41), ("tiger_cat", 0.35), ...]]

Callers that must isolate failures per image (the server) use the steps: `pixels` per image (raises
`ImageDecodeError` for that image only), then `probabilities` on the good ones, then `top_k`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from export.runners import Runner, open_runner, runner_from_checkpoint
from models import EncodedImageTransform, PreprocessSpec, top_k_labels
from models.imageio import DEFAULT_MAX_PIXELS

Prediction = list[tuple[str, float]]  # (class name, probability), highest first
PROBABILITY_DECIMALS = 6  # what the server sends; every path rounds the same way


class Classifier:
    """A runner plus the preprocessing and labels it was exported with."""

    def __init__(
        self,
        runner: Runner,
        *,
        top_k: int = 5,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int | None = None,
    ) -> None:
        """`batch_size` caps one forward pass (the runner's own maximum applies too); None: the runner's
        maximum, or the whole input at once when it has none."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.runner = runner
        self.top_k = min(top_k, len(runner.class_names))
        self.transform = EncodedImageTransform(runner.preprocess, max_pixels=max_pixels)
        limits = [b for b in (batch_size, runner.max_batch_size) if b is not None]
        self.batch_size = min(limits) if limits else None

    @classmethod
    def from_export(
        cls,
        export_dir: str | os.PathLike,
        *,
        fmt: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        allow_failed: bool = False,
        **options,
    ) -> Classifier:
        """The artifact `fmt` of an export directory (None: the fastest that passed parity on `device`)."""
        runner = open_runner(export_dir, fmt=fmt, device=device, threads=threads, allow_failed=allow_failed)
        return cls(runner, **options)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None, **options
    ) -> Classifier:
        """Eager PyTorch from one of our checkpoints (EMA weights when it has them)."""
        return cls(runner_from_checkpoint(path, device=device, threads=threads), **options)

    @property
    def class_names(self) -> list[str]:
        return self.runner.class_names

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.runner.preprocess

    def pixels(self, data: bytes) -> torch.Tensor:
        """One encoded image -> resized, cropped uint8 CHW pixels; raises `ImageDecodeError` for a bad image."""
        return self.transform.pixels(data)

    def logits(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Several images' `pixels` -> float32 logits, normalised together and run in chunks of `batch_size`."""
        if not pixels:
            return torch.empty(0, len(self.class_names))
        step = self.batch_size or len(pixels)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pixels), step):
                chunks.append(self.runner.predict(self.transform.batch(list(pixels[start : start + step]))))
        return torch.cat(chunks)

    def probabilities(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.logits(pixels).float().softmax(dim=1)

    def top_k_of(self, probabilities: torch.Tensor) -> Prediction:
        """One image's probabilities -> its top-k (name, probability), highest first, rounded as served."""
        return [
            (name, round(p, PROBABILITY_DECIMALS))
            for name, p in top_k_labels(probabilities, self.class_names, self.top_k)
        ]

    def classify(self, images: Sequence[bytes]) -> list[Prediction]:
        """Encoded images -> one top-k prediction each; the first bad image raises `ImageDecodeError`."""
        probabilities = self.probabilities([self.pixels(data) for data in images])
        return [self.top_k_of(row) for row in probabilities]

    def __repr__(self) -> str:
        return f"Classifier({self.runner!r}, top_k={self.top_k}, batch_size={self.batch_size})"
