"""Finding the image files named on a command line (files as given, folders searched recursively).

Kept free of torch and of the HTTP library, so the locustfile and the remote client can both use it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

# What a folder search picks up. A file named explicitly is always sent: the server (or `--local`'s
# decoder) is what decides whether it is an image, and says so.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


def images_in_folder(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted so runs are reproducible."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a list of image files, in the order given.

    Raises FileNotFoundError for a path that does not exist and ValueError for a folder holding no
    image, naming the path and the suffixes searched.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = images_in_folder(path)
            if not images:
                raise ValueError(
                    f"{path}: folder holds no image files (searched recursively for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def sample_photos() -> list[tuple[str, bytes]]:
    """scikit-image's bundled photos (offline), colour and grayscale, each as JPEG and PNG: the load
    tests' default images, as (name, encoded bytes)."""
    import skimage.data  # the loadtest extra; imported only when no folder is given
    from PIL import Image

    encoded = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
        picture = Image.fromarray(getattr(skimage.data, name)())
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt)
            encoded.append((f"{name}.{suffix}", buffer.getvalue()))
    return encoded
