"""Run directories, RNG state, and the checkpoint dict of contract 1 (shared/DESIGN.md).

`last.pt` is written at the end of every epoch and when a run is interrupted, `best.pt` whenever the
validation top-1 improves; both through `models.Checkpoint.save` (atomic). A checkpoint holds all a
resumed run needs to continue bit-for-bit on CPU: optimizer, scheduler, scaler, EMA, epoch and step
within the epoch, and every rank's RNG states.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import Checkpoint, CheckpointError, load_checkpoint

class RunDirError(RuntimeError):
    """The run directory exists and the command did not say to resume or overwrite it."""


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create `run_dir`; refuse to clobber a previous run unless told to (rank 0 only)."""
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already holds a run; pass --resume auto to continue it, --overwrite to start "
                "over, or another --name"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


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


def load_resume_checkpoint(path: Path) -> Checkpoint:
    ckpt = load_checkpoint(path)
    if not ckpt.resumable:
        raise CheckpointError(
            f"{path}: cannot resume from it, it has no optimizer, scheduler or config (was it written by train?)"
        )
    return ckpt


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain tensors and lists (readable with weights_only=True)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }  # fmt: skip


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
