"""Measure what one image costs to serve on this machine (serve/budget.py's `ImageCost`).

`serve package` calls `measure` with the artifact the handler will serve on the CPU, a worker's
threads and the archive's batch size, so the budget fits the machine that packages. Both figures are
taken pessimistically: the best of a few runs would flatter a loaded machine less than it flatters a
quiet one, so the slowest of the timed runs is kept, and the images are noisy (costlier to decode than
a typical photo).
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from classify.classifier import Classifier
from serve.budget import ImageCost

PHOTO_SIZE = (1280, 960)  # a 1.2-megapixel photo stands for "an ordinary image"
PROGRESSIVE_SIZE = (2048, 1536)  # decoded at 1/8 scale in draft mode: most of its cost is per file pixel
RUNS = 3


def noisy_jpeg(size: tuple[int, int], **options) -> bytes:
    rng = np.random.default_rng(0)
    width, height = size
    gradient = np.linspace(0, 200, width, dtype=np.float32)[None, :, None] + np.zeros((height, 1, 3), np.float32)
    pixels = np.clip(gradient + rng.normal(0, 24, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def slowest(fn, runs: int = RUNS) -> float:
    fn()  # warm-up: first-call allocations, lazy initialisation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return max(times)


def measure(classifier: Classifier, batch_size: int) -> ImageCost:
    """Seconds per photo (decode + preprocess + its share of a `batch_size` forward pass) and per
    megapixel of a progressive JPEG file decoded in draft mode, with `classifier`'s threads."""
    photo = noisy_jpeg(PHOTO_SIZE)
    progressive = noisy_jpeg(PROGRESSIVE_SIZE, progressive=True)
    batch = slowest(lambda: classifier.probabilities([classifier.pixels(photo) for _ in range(batch_size)]))
    decode = slowest(lambda: classifier.pixels(progressive))
    megapixels = PROGRESSIVE_SIZE[0] * PROGRESSIVE_SIZE[1] / 1e6
    return ImageCost(image_s=batch / batch_size, megapixel_s=decode / megapixels)
