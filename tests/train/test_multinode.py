"""Real torchrun agents on one machine standing in for nodes: two single-process agents joined by c10d
rendezvous train exactly like one agent with two processes, and print the run's lines once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagedata.digits import write_digits_folder
from models import load_checkpoint
from tests.fixtures.trained import train_command

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """30 train / 20 val real digits as PNG class folders: 3 steps per epoch at batch 10."""
    root = tmp_path_factory.mktemp("digits_folder")
    write_digits_folder(root / "train", "train", limit_per_class=3)
    write_digits_folder(root / "val", "val", limit_per_class=2)
    return root


def recipe_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        *("--recipe", "digits", "--data", "folder", "--data-dir", str(data_dir)),
        *("--epochs", "2", "--batch-size", "10", "--workers", "0", "--seed", "3", "--log-every", "1"),
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_cores() -> None:
    """Both layouts on the same two cores, without OMP_NUM_THREADS: the threads come from our own rule."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


def launch(cmd: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=two_cores,
        start_new_session=True,  # its own process group, so its workers can be stopped with it
    )


def finish(*agents: subprocess.Popen) -> list[str]:
    """The agents' stdout once all exited 0; whatever happens, none of their processes outlives the test."""
    try:
        results = [agent.communicate(timeout=600) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    for agent, (out, err) in zip(agents, results):
        assert agent.returncode == 0, f"exit {agent.returncode}\n{out}\n{err}"
    return [out for out, _ in results]


def test_two_single_process_nodes_equal_one_two_process_node(tmp_path, digits_folder):
    train = train_command(tmp_path, "nodes", *recipe_args(digits_folder))[3:]
    port = free_port()
    nodes = [
        launch(
            [
                *TORCHRUN,
                *("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"),
                *("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "h37-nodes", "--max-restarts", "0"),
                *("-m", "train", *train),
            ]
        )
        for _ in range(2)
    ]
    outputs = finish(*nodes)
    (single_out,) = finish(
        launch(
            [
                *TORCHRUN,
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "train",
                *train_command(tmp_path, "one", *recipe_args(digits_folder))[3:],
            ]
        )
    )

    together = "".join(outputs)
    for line in ("recipe: ", "steps per epoch", "epoch 2/2  train loss", "done: best val top-1"):
        assert together.count(line) == 1, f"{line!r} printed {together.count(line)} times:\n{together}"
        assert single_out.count(line) == 1, single_out
    assert "1 CPU thread(s) per process" in together  # 2 cores / 2 processes on this host
    assert "1 CPU thread(s) per process" in single_out  # torchrun's own OMP_NUM_THREADS=1

    a, b = load_checkpoint(tmp_path / "nodes" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert a.step == b.step == 6 and len(a.rng) == 2
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert a.metrics == b.metrics
