"""Helpers for the train tests: in-process runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.run import RunResult, build_config, run

QUIET = {"tensorboard": False, "plots": False, "log_every": 1000, "workers": 0}


def train_in_process(out: Path, name: str, **overrides: Any) -> RunResult:
    """`python -m train` minus the process: same config resolution, same run()."""
    config = build_config({"out": str(out), "name": name, "epochs": 1, "batch_size": 16, **QUIET, **overrides})
    return run(config)
