"""Ground-floor helpers every layer shares: atomic file writes, file hashes, usable cores, error lines,
and the marker files that say which folders this project made (the only ones it ever deletes).

They live in `models` because it is the bottom layer (it imports nothing of ours), so `train`,
`export`, `serve`, `client` and `benchmarks` can all use the one implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
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
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...); empty
    where there is no such file (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where it does not say: not Linux, or no flags line)."""
    line = cpuinfo().get("flags")
    return set(line.split()) if line is not None else None


# -- Folders we own: a marker file says "this project made it", and only such folders are ever deleted --

MARKER_NAME = ".resnet-deploy-owned"
PROCESS_START = time.time()  # temporaries older than this belong to a process that died (see sweep below)


class NotOwnedError(RuntimeError):
    """A folder we were asked to delete or overwrite was not made by this project (or is a symlink)."""


def mark_owned(directory: str | os.PathLike, kind: str) -> Path:
    """Create `directory` (if needed) and mark it as made by this project for `kind` (run, export, demo, ...)."""
    directory = Path(directory)
    if directory.is_symlink():
        raise NotOwnedError(f"{directory} is a symlink; this project writes only into real folders")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / MARKER_NAME, json.dumps({"kind": kind, "created": time.time()}) + "\n")
    return directory


def owned_kind(directory: str | os.PathLike) -> str | None:
    """The kind recorded in `directory`'s marker, or None (no marker, unreadable, or a symlink anywhere in it)."""
    directory, marker = Path(directory), Path(directory) / MARKER_NAME
    if directory.is_symlink() or not directory.is_dir() or marker.is_symlink() or not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_owned(directory: str | os.PathLike, kind: str) -> bool:
    return owned_kind(directory) == kind


def remove_owned_tree(directory: str | os.PathLike, kind: str) -> None:
    """Delete `directory` only when it is a real folder carrying our `kind` marker.

    The path is judged as given (a symlink is refused, never followed); inside, `shutil.rmtree`
    unlinks symlinks rather than descending into them.
    """
    directory = Path(directory)
    if directory.is_symlink():
        raise NotOwnedError(f"{directory} is a symlink; refusing to delete through it (remove the link yourself)")
    if not directory.exists():
        return
    found = owned_kind(directory)
    if found != kind:
        what = f"a {found} folder" if found else f"not marked as made by this project (no {MARKER_NAME} file)"
        raise NotOwnedError(f"{directory} is {what}; refusing to delete it. Move or delete it yourself if it must go")
    shutil.rmtree(directory)


def is_temporary_name(name: str) -> bool:
    """`.<name>.<random>.tmp`: the temporaries of `atomic_path` (files) and of our staging folders."""
    return name.startswith(".") and name.endswith(".tmp")


def sweep_stale_temporaries(directory: str | os.PathLike, older_than: float | None = None) -> list[Path]:
    """Delete our temporaries in `directory` (not below it) last modified before `older_than`
    (default: this process's start): what a writer killed with `kill -9` left behind. Returns them.
    A folder of that name is deleted only when it carries our marker (staging folders are marked) or is empty."""
    directory = Path(directory)
    cutoff = PROCESS_START if older_than is None else older_than
    removed = []
    if directory.is_symlink() or not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not is_temporary_name(entry.name):
            continue
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue  # a live writer's file
            if entry.is_dir() and not entry.is_symlink():
                if owned_kind(entry) is not None:
                    shutil.rmtree(entry)
                elif not any(entry.iterdir()):
                    entry.rmdir()  # a staging folder its maker died in before marking it
                else:
                    continue  # a folder we did not make, whatever its name
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # its writer finished (or another sweeper got it) meanwhile
        removed.append(entry)
    return removed
