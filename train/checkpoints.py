"""Run directories, RNG state, and the checkpoint dict of contract 1 (docs/architecture.md).

`last.pt` is written at the end of every epoch, every --save-every-steps optimizer steps and when a run
is interrupted, `best.pt` whenever the validation top-1 improves; both through `models.Checkpoint.save`
(atomic). A checkpoint holds all a resumed run needs to continue bit-for-bit on CPU: optimizer,
scheduler, scaler, EMA, epoch and step within the epoch, and every rank's RNG states. One tolerance:
with data loader workers (--workers > 0) the rest of an epoch resumed mid-way sees the same images in
the same order but other random augmentations (each worker's RNG stream restarts at the resume point).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsutil.owned import MARKER_NAME, NotOwnedError, is_owned, mark_owned, remove_owned_tree, sweep_stale_temporaries
from models import Checkpoint, CheckpointError, load_checkpoint
from models.errors import first_line

from .distributed import elastic_restart_count

RUN_KIND = "run"  # the marker kind of a run directory (fsutil.owned.mark_owned)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it holds a run, is not ours, or --resume would rewrite it)."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (disk full, file size limit, permissions); the previous one is intact."""


def check_run_name(name: str) -> str:
    """A run name is one plain folder name inside --out: never `..`, an absolute path or a nested path."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("~"):
        raise RunDirError(
            f"--name {name!r}: a run name is one folder name inside --out (letters, digits, '-', '_', '.'), "
            "not a path; use --out to choose where runs go"
        )
    return name


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create and mark `run_dir`; refuse to clobber a previous run unless told to (rank 0 only).

    Our own temporaries left by a killed writer are swept first, so they never make a directory
    look in use; `--overwrite` deletes only a folder carrying the run marker, never through a symlink.
    """
    if run_dir.is_symlink():
        raise RunDirError(
            f"{run_dir} is a symlink; a run directory must be a real folder (choose another --name or --out)"
        )
    sweep_stale_temporaries(run_dir)
    if run_dir.exists() and not resume and any(p.name != MARKER_NAME for p in run_dir.iterdir()):
        if not overwrite and elastic_restart_count():
            raise RunDirError(
                f"{run_dir} holds a run but no last.pt: torchrun restarted the workers before the run's first "
                "checkpoint (or the folder held another run already). Start the job again with --overwrite, and "
                "pass --save-every-steps N so a restart has a checkpoint to continue from"
            )
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already holds a run; pass --resume auto to continue it, --overwrite to start "
                "over, or another --name"
            )
        try:
            remove_owned_tree(run_dir, RUN_KIND)
        except NotOwnedError as e:
            raise RunDirError(f"--overwrite: {e}") from None
    if resume and run_dir.is_dir() and not is_owned(run_dir, RUN_KIND):
        return  # a run from before markers existed: continue it, but do not claim it for --overwrite
    mark_owned(run_dir, RUN_KIND)


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`--resume PATH` must exist; `--resume auto` continues `run_dir/last.pt` when there is one."""
    if not resume:
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no checkpoint at {path}")
    return path


def continues_its_run(path: Path) -> bool:
    """True when `path` is a run's own newest checkpoint: `last.pt` in a folder marked as a run."""
    return path.name == "last.pt" and not path.is_symlink() and is_owned(path.parent, RUN_KIND)


def fork_refusal(path: Path) -> RunDirError:
    why = (
        f"{path} is not a run's newest last.pt"
        if path.name != "last.pt"
        else f"{path.parent} is not a run directory made by `python -m train`"
    )
    return RunDirError(
        f"--resume {path}: {why}; continuing in its folder would rewrite that run's history. To start a new run "
        f"from it, fork: add --name NEW_NAME (the new run goes to OUT/NEW_NAME and records forked_from)"
    )


def load_resume_checkpoint(path: Path) -> Checkpoint:
    ckpt = load_checkpoint(path)
    if not ckpt.resumable:
        raise CheckpointError(
            f"{path}: cannot resume from it, it has no optimizer, scheduler or config (was it written by train?)"
        )
    return ckpt


def save_checkpoint_file(ckpt: Checkpoint, path: Path) -> None:
    """`ckpt.save(path)` (atomic); a failed write raises CheckpointSaveError naming the intact previous file."""
    try:
        ckpt.save(path)
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise CheckpointSaveError(
            f"could not write {path}: {e.strerror or first_line(e)} (errno {e.errno}); {kept}. Free disk space "
            f"(or raise the file size limit) and continue with --resume {path.parent / 'last.pt'}"
        ) from e


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain tensors and lists (readable with weights_only=True)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
