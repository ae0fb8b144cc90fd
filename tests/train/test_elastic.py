"""torchrun's elastic agent restarting a worker group: a worker killed with SIGKILL mid-epoch under
--max-restarts 1 brings the group back, which continues from the run's last.pt by itself and ends with
the weights of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imagedata.digits import write_digits_folder
from models import load_checkpoint
from tests.fixtures.trained import train_command
from train.checkpoints import RunDirError, prepare_run_dir
from train.config import ConfigError
from train.run import build_config, check_topology

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def recipe(tmp_path: Path, name: str) -> list[str]:
    data = tmp_path / "digits"
    if not data.exists():  # 60 train / 20 val real digits: 6 steps per epoch at batch 10
        write_digits_folder(data / "train", "train", limit_per_class=6)
        write_digits_folder(data / "val", "val", limit_per_class=2)
    return train_command(
        tmp_path,
        name,
        *("--recipe", "digits", "--data", "folder", "--data-dir", str(data), "--workers", "0"),
        *("--epochs", "2", "--batch-size", "10", "--seed", "5", "--log-every", "1", "--save-every-steps", "2"),
    )[3:]


def workers_of(agent: int) -> dict[int, int]:
    """{rank: pid} of the agent's worker processes."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == agent:
                env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                ranks[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, IndexError, ValueError):
            continue  # a process that ended while we looked
    return ranks


def freeze_mid_epoch(agent: subprocess.Popen, last: Path) -> tuple[dict[int, int], int]:
    """Poll until last.pt is a mid-epoch checkpoint, stop both workers (SIGSTOP) and return them with the
    step of the last.pt they left: nothing can write it while they are stopped."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and agent.poll() is None:
        if last.is_file() and load_checkpoint(last).steps_into_epoch:
            workers = workers_of(agent.pid)
            for pid in workers.values():
                os.kill(pid, signal.SIGSTOP)
            frozen = load_checkpoint(last)
            if frozen.steps_into_epoch and len(workers) == 2:
                return workers, frozen.step
            for pid in workers.values():
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"no mid-epoch last.pt while the job ran (exit {agent.poll()})")


def test_killed_worker_restarts_and_ends_like_an_uninterrupted_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun sets 1 per process
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # a fresh store per attempt (see train/distributed.py)
    whole = subprocess.run(
        [*TORCHRUN, "-m", "train", *recipe(tmp_path, "whole")], env=env, capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stdout + whole.stderr

    agent = subprocess.Popen(
        [*TORCHRUN, "--max-restarts", "1", "-m", "train", *recipe(tmp_path, "killed")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the workers go with the agent if the test fails
    )
    try:
        workers, step = freeze_mid_epoch(agent, tmp_path / "killed" / "last.pt")
        shutil.copy(tmp_path / "killed" / "last.pt", tmp_path / "mid-epoch.pt")
        os.kill(workers[0], signal.SIGKILL)  # the writer, between two of its checkpoints
        os.kill(workers[1], signal.SIGCONT)
        out, err = agent.communicate(timeout=600)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, f"exit {agent.returncode}\n{out}\n{err}"
    assert f"at epoch {(step - 1) // 6}, step {step}" in out, out  # resumed mid-epoch, from the frozen last.pt

    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a.step == b.step == 12 and b.steps_into_epoch == 0
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert a.metrics == b.metrics
    with open(tmp_path / "killed" / "metrics.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]

    # the same job restarted with another number of processes (elastic --nnodes MIN:MAX) cannot continue
    # that mid-epoch checkpoint: each rank's place in the epoch's shuffled order depends on the count
    mid = load_checkpoint(tmp_path / "mid-epoch.pt")
    check_topology(mid, tmp_path / "mid-epoch.pt", 2)
    with pytest.raises(ConfigError, match=r"with 2 process\(es\) in all.*not 3.*only at an epoch end"):
        check_topology(mid, tmp_path / "mid-epoch.pt", 3)


def test_a_restart_continues_the_runs_last_pt_without_a_flag(tmp_path, monkeypatch, digits_checkpoint):
    run_dir = tmp_path / "digits"
    prepare_run_dir(run_dir, resume=False, overwrite=False)
    shutil.copy(digits_checkpoint, run_dir / "last.pt")
    first = build_config({"out": str(tmp_path), "name": "digits", "arch": "resnet20", "data": "digits"})
    assert first.resume is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    again = build_config({"out": str(tmp_path), "name": "digits", "arch": "resnet20", "data": "digits"})
    assert again.resume == str(run_dir / "last.pt")

    # a fork (--resume best.pt --name NEW) restarted after its first checkpoint continues that checkpoint
    fork = tmp_path / "fork"
    prepare_run_dir(fork, resume=False, overwrite=False)
    shutil.copy(digits_checkpoint, fork / "last.pt")
    forked = build_config({"out": str(tmp_path), "name": "fork", "resume": str(digits_checkpoint)})
    assert forked.resume == str(fork / "last.pt") and forked.name == "fork"


def test_a_restart_before_the_first_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, resume=False, overwrite=False)
    (run_dir / "config.yaml").write_text("arch: resnet20\n")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(RunDirError, match="before the run's first checkpoint.*--save-every-steps"):
        prepare_run_dir(run_dir, resume=False, overwrite=False)
