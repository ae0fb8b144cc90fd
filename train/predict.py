"""`python -m train --predict IMG... --checkpoint PATH`: top-k classes per image.

Images are decoded by `models.imageio.decode_image` (the server's decoder) and preprocessed by
`models.eval_transform` with the checkpoint's own spec: what validation measured is what you get.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from models import checkpoint_preprocess, eval_transform, model_from_checkpoint
from models.imageio import ImageDecodeError, decode_image


def predict_images(paths: Sequence[str], checkpoint: str, topk: int = 5) -> int:
    """Print the top-k classes of each image; returns the exit code (1 if any image failed)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    spec = checkpoint_preprocess(ckpt)
    transform = eval_transform(spec)
    names = ckpt["class_names"]
    k = max(1, min(topk, len(names)))
    failed = 0
    for path in paths:
        try:
            image = decode_image(Path(path).read_bytes(), draft_size=spec.resize_size)
        except (OSError, ImageDecodeError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        with torch.inference_mode():
            probs = model(transform(image).unsqueeze(0)).softmax(dim=1)[0]
        values, indices = probs.topk(k)
        print(path)
        for p, i in zip(values.tolist(), indices.tolist()):
            print(f"  {p * 100:6.2f}%  {names[i]}")
    return 1 if failed else 0
