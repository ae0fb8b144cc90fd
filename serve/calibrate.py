"""Measure what one image costs to serve on this machine (serve/budget.py's `ImageCost`).

`serve package` and `serve triton-repo` call `measure` with the artifact a worker will serve on the
CPU, a worker's threads and the batch size, so the budget fits the machine that packages. Both figures
are taken pessimistically: the best of a few runs would flatter a loaded machine less than it flatters
a quiet one, so the slowest of the timed runs is kept, and the images are noisy (costlier to decode
than a typical photo).

The machine that serves may not be the one that packaged (an archive built on a laptop, run in a
container elsewhere): each worker measures again when it loads (`budget_here`), and a machine slower
than the recorded cost starts its budget that many times slower, as if a call had just run that slowly,
so the first calls are sized for it; later calls keep it up to date (`Budget.observe`). A cost the user
gave (`--image-seconds`) is theirs to keep and is not measured again.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from PIL import Image

from classify.classifier import Classifier
from models.preprocess import EncodedImageTransform
from serve.budget import Budget, ImageCost

PHOTO_SIZE = (1280, 960)  # a 1.2-megapixel photo stands for "an ordinary image"
PROGRESSIVE_SIZE = (2048, 1536)  # decoded at 1/8 scale in draft mode: most of its cost is per file pixel
RUNS = 3
SLOWER_WARNING = 1.25  # below it, a slower measurement here is noise between runs, not another machine


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
    # The default image limit, not the classifier's: a server may cap images below these test images.
    transform = EncodedImageTransform(classifier.runner.preprocess)
    batch = slowest(lambda: classifier.probabilities([transform.pixels(photo) for _ in range(batch_size)]))
    decode = slowest(lambda: transform.pixels(progressive))
    megapixels = PROGRESSIVE_SIZE[0] * PROGRESSIVE_SIZE[1] / 1e6
    return ImageCost(image_s=batch / batch_size, megapixel_s=decode / megapixels)


def budget_here(
    classifier: Classifier,
    batch_size: int,
    *,
    call_s: float,
    max_call_pixels: int,
    recorded: ImageCost | None,
    measure_again: bool,
    log,
) -> Budget:
    """A worker's budget on the machine it loads on: the recorded cost, checked against a measurement
    here unless `measure_again` is false; with no recorded cost (an archive older than the budget), the
    measurement itself. `log(level, message)` reports what was found."""
    if recorded is not None and not measure_again:
        return Budget(call_s, recorded, max_call_pixels)
    here = measure(classifier, batch_size)
    if recorded is None:
        log(logging.WARNING, f"no image cost recorded with this model (an older archive); measured here: {here}")
        return Budget(call_s, here, max_call_pixels)
    budget = Budget(call_s, recorded, max_call_pixels)
    photo_pixels = PHOTO_SIZE[0] * PHOTO_SIZE[1]
    slower = here.of(photo_pixels) / recorded.of(photo_pixels)
    if slower > SLOWER_WARNING:
        budget.observe(recorded.of(photo_pixels), here.of(photo_pixels))
        log(
            logging.WARNING,
            f"this machine runs a photo {slower:.1f}x slower than where the image cost was measured "
            f"({here} here, {recorded} recorded): calls start sized for it; package again on this machine "
            "(python -m serve package) so the batch size and caps fit it",
        )
    else:
        log(logging.INFO, f"image cost measured here {here}, recorded {recorded}")
    return budget
