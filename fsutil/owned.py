"""Folders we own: a marker file says "this project made it", and only such folders are ever deleted or
overwritten; temporaries that a killed writer left behind are swept."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fsutil.atomic import atomic_write_text

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


def replace_owned_folder(out: str | os.PathLike, kind: str, fill: Callable[[Path], None], command: str) -> Path:
    """Write the folder `out` whole: `fill` writes into a staging folder beside it, which is marked as our
    `kind` and swapped in, replacing an `out` of that kind (or an empty one); anything else is refused with
    NotOwnedError naming `command`. A failure leaves `out` as it was."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NotOwnedError(f"--out {out}: not a directory; choose a new folder")
    if out.is_dir() and any(out.iterdir()) and not is_owned(out, kind):
        raise NotOwnedError(
            f"--out {out}: the folder holds files `{command}` did not write (no {MARKER_NAME}); "
            "choose a new or empty folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the folder from the rest of a CI job or team
    try:
        fill(staging)
        mark_owned(staging, kind)
        if is_owned(out, kind):
            remove_owned_tree(out, kind)
        elif out.is_dir():
            out.rmdir()  # empty: checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


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
