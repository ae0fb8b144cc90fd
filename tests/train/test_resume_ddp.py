"""Real processes: a run killed by SIGTERM and resumed ends bit-identical to an uninterrupted one, and
two gloo DDP processes compute what one process computes with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from imagedata.kinds import build_validation_set
from models import load_checkpoint, model_from_checkpoint
from tests.fixtures.trained import run_train, train_command
from train.config import TrainConfig
from train.data import build_val_loader
from train.engine import StepParts, evaluate

THREADS = {"OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_to_identical_weights(tmp_path, cifar_root):
    # mixup, dropout, random crops and flips all draw random numbers: the resume must restore them all
    args = [
        "--arch",
        "resnet20",
        "--data",
        "cifar10",
        "--data-dir",
        str(cifar_root),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--seed",
        "7",
        "--workers",
        "0",
        "--mixup",
        "0.4",
        "--dropout",
        "0.2",
        "--ema",
        "--ema-decay",
        "0.9",
        "--warmup-epochs",
        "1",
        "--log-every",
        "1",
    ]
    full = run_train(train_command(tmp_path, "full", *args))
    assert full.returncode == 0, full.stderr

    env = dict(os.environ, **THREADS)
    proc = subprocess.Popen(
        train_command(tmp_path, "killed", *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # somewhere in epoch 2
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, f"{proc.returncode}\n{out}\n{err}"
    assert "stopped by SIGTERM" in out
    interrupted = load_checkpoint(last)
    assert interrupted.epoch == 1 and interrupted.step < 30

    resumed = run_train(train_command(tmp_path, "killed", "--resume", str(last)))  # its own run: continued
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(last)
    assert a.step == b.step == 30
    for part in ("model", "ema"):
        for key, value in getattr(a, part).items():
            assert torch.equal(value, getattr(b, part)[key]), f"{part}.{key}"
    assert a.metrics == b.metrics


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    """2 processes x 6 images = 1 process x 12 images in 2 accumulation steps (the same shards)."""
    common = [
        "--arch",
        "resnet20",
        "--data",
        "synthetic",
        "--num-classes",
        "3",
        "--synthetic-size",
        "36",
        "--batch-size",
        "12",
        "--epochs",
        "2",
        "--train-crop",
        "center",
        "--no-hflip",
        "--workers",
        "0",
        "--seed",
        "1",
        "--lr",
        "0.05",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train"]
    ddp = run_train([*torchrun, *train_command(tmp_path, "ddp", *common)[3:]])
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert ddp.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    single = run_train(train_command(tmp_path, "single", *common, "--accum-steps", "2"))
    assert single.returncode == 0, single.stderr

    a, b = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "single" / "last.pt")
    assert a.step == b.step == 6
    assert len(a.rng) == 2  # every rank's RNG state, for an exact resume
    model_a, _ = model_from_checkpoint(a)
    params_b = dict(model_from_checkpoint(b)[0].named_parameters())
    for name, param in model_a.named_parameters():
        torch.testing.assert_close(param, params_b[name], rtol=1e-4, atol=1e-5, msg=name)

    # validation over the 9 (odd) val images, split over 2 ranks, counted each exactly once
    spec = a.preprocess
    loader = build_val_loader(
        build_validation_set(a.config, spec), TrainConfig.from_dict(a.config, "ddp"), 4, 1, 0, False
    )
    metrics = evaluate(
        model_a,
        loader,
        StepParts(
            model=model_a,
            optimizer=torch.optim.SGD(model_a.parameters()),
            criterion=torch.nn.CrossEntropyLoss(),
            preprocess=spec,
            device=torch.device("cpu"),
        ),
    )
    assert metrics["images"] == 9
    assert metrics["top1"] == a.metrics["top1"]
    assert abs(metrics["loss"] - a.metrics["loss"]) < 1e-4
    assert not (tmp_path / "ddp" / "metrics.csv.1").exists()
    assert Path(tmp_path / "ddp" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs, once
