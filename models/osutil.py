"""Ground-floor helpers every layer shares: atomic file writes, file hashes, usable cores, error lines.

They live in `models` because it is the bottom layer (it imports nothing of ours), so `train`,
`export`, `serve`, `client` and `benchmarks` can all use the one implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


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


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def first_line(error: BaseException) -> str:
    """An exception's first message line (or its type name): enough to say what failed, in one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def usable_cores() -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota
    (`docker run --cpus 2` on a 64-core host is 2, not 64)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """Cores allowed by the cgroup v2 `cpu.max` file (quota / period), or None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None
