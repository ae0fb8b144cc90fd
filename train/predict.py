"""`python -m train --predict IMG... --checkpoint PATH`: top-k classes per image.

Images go through `models.EncodedImageTransform` with the checkpoint's own spec (the server's decoder,
then the validation transform): what validation measured is what you get.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from models import EncodedImageTransform, checkpoint_preprocess, model_from_checkpoint, top_k_labels
from models.imageio import ImageDecodeError


def predict_images(paths: Sequence[str], checkpoint: str, topk: int = 5) -> int:
    """Print the top-k classes of each image; returns the exit code (1 if any image failed)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    to_input = EncodedImageTransform(checkpoint_preprocess(ckpt))
    names = ckpt["class_names"]
    k = max(1, topk)
    failed = 0
    for path in paths:
        try:
            batch = to_input(Path(path).read_bytes()).unsqueeze(0)
        except (OSError, ImageDecodeError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        with torch.inference_mode():
            probabilities = model(batch).softmax(dim=1)[0]
        print(path)
        for name, p in top_k_labels(probabilities, names, k):
            print(f"  {p * 100:6.2f}%  {name}")
    return 1 if failed else 0
