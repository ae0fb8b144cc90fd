"""ImageNet-like JPEGs made from scikit-image's sample photos (real photographs shipped with the package):
random crops of each photo resized to about 500x375, JPEG quality 90, written as an ImageFolder tree."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
SIZE = (500, 375)  # (width, height): ImageNet's typical landscape image
QUALITY = 90


def sample_photos() -> list[np.ndarray]:
    import skimage.data  # the loadtest extra; only the image makers need it

    return [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]


def photo_jpeg(photo: np.ndarray, rng: random.Random, size: tuple[int, int] = SIZE) -> bytes:
    """A random crop (60-100% of each side) of `photo`, resized to `size` (or its transpose), as a JPEG."""
    height, width = photo.shape[:2]
    h, w = int(height * rng.uniform(0.6, 1.0)), int(width * rng.uniform(0.6, 1.0))
    top, left = rng.randrange(height - h + 1), rng.randrange(width - w + 1)
    out = size if rng.random() < 0.75 else size[::-1]  # a quarter portrait, as in ImageNet
    image = Image.fromarray(photo[top : top + h, left : left + w]).resize(out, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def write_photo_folder(root: Path, per_split: dict[str, int], classes: int = 2, seed: int = 0) -> Path:
    """`root/<split>/class_<k>/<n>.jpg` with `per_split[split]` images per split, classes taking turns."""
    rng = random.Random(seed)
    photos = sample_photos()
    for split, count in per_split.items():
        for n in range(count):
            folder = root / split / f"class_{n % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{n:05d}.jpg").write_bytes(photo_jpeg(photos[n % len(photos)], rng))
    return root
