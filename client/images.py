"""Finding the image files named on a command line (files as given, folders searched recursively).

Kept free of torch and of the HTTP library, so the locustfile and the remote client can both use it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

# What a folder search picks up. A file named explicitly is always sent: the server (or `--local`'s
# decoder) is what decides whether it is an image, and says so.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Larger files are refused before a byte is read: three times the server's default request size
# (20 MiB), and more than any image the decoder's pixel limits let through takes.
MAX_IMAGE_FILE_BYTES = 64 * 2**20


class ImageTooLarge(ValueError):
    """An image file over `MAX_IMAGE_FILE_BYTES`."""


def check_image_size(path: Path, size: int, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> None:
    if size > max_bytes:
        raise ImageTooLarge(
            f"{path}: {size / 2**20:,.1f} MiB, above the {max_bytes / 2**20:.0f} MiB an image file may take; "
            "not read. Shrink or re-encode it"
        )


def read_image(path: Path, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The file's bytes, refused by its size before reading (and never more than `max_bytes` read,
    should it grow meanwhile). Raises ImageTooLarge or OSError."""
    with open(path, "rb") as file:
        check_image_size(path, os.fstat(file.fileno()).st_size, max_bytes)
        data = file.read(max_bytes + 1)
    check_image_size(path, len(data), max_bytes)
    return data


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
