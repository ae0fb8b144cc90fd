"""Atomic file writes (a crash leaves the old file or the new one, never a partial one) and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (the rename itself lives in the directory's entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, fsync it, rename it onto `path` and
    fsync the directory. A crash at any moment leaves the old file or the new one, never a partial one.

    The temporary file is named `.<name>.<random>.tmp`, so sweepers and `.dockerignore` can recognise it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """`figure.savefig` as a PNG through `atomic_path` (a matplotlib Figure; matplotlib is not imported here)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
