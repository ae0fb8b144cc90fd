"""`python -m train --predict IMG... --checkpoint PATH [--arch A]`: top-k classes per image.

Images go through `classify.classifier.Classifier` with the model's own preprocessing (the checkpoint's,
or a torchvision/timm weight file's with `--arch`): the server's prediction path with the eager model,
so what validation measured is what you get.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from models.imageio import ImageDecodeError

from .classifier import Classifier
from .weights import open_model


def predict_images(paths: Sequence[str], checkpoint: str, topk: int = 5, arch: str | None = None) -> int:
    """Print the top-k classes of each image; returns the exit code (1 if any image failed)."""
    model, _, _ = open_model(checkpoint, arch, {})
    classifier = Classifier(model.runner, top_k=max(1, topk))
    failed = 0
    for path in paths:
        try:
            (prediction,) = classifier.classify([Path(path).read_bytes()])
        except (OSError, ImageDecodeError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(path)
        for name, p in prediction:
            print(f"  {p * 100:6.2f}%  {name}")
    return 1 if failed else 0
