"""`--log-internals`: gradient norms and residual ratios per epoch in TensorBoard, training unchanged."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models import load_checkpoint
from train.config import ConfigError

from .helpers import train_in_process

SYNTHETIC = dict(
    arch="resnet20", data="synthetic", num_classes=4, synthetic_size=32, epochs=2, seed=3, drop_path_rate=0.1
)


def test_internals_are_logged_per_epoch_and_leave_training_unchanged(tmp_path):
    logged = train_in_process(tmp_path, "on", tensorboard=True, log_internals=True, **SYNTHETIC)
    plain = train_in_process(tmp_path, "off", tensorboard=True, **SYNTHETIC)

    events = EventAccumulator(str(logged.run_dir)).Reload()
    tags = events.Tags()["scalars"]
    ratios = [t for t in tags if t.startswith("internals/residual_ratio/")]
    grads = [t for t in tags if t.startswith("internals/grad_norm/")]
    assert len(ratios) == 9 and "internals/residual_ratio/layer3.2" in ratios
    assert "internals/grad_norm/conv1" in grads and "internals/grad_norm/fc" in grads
    for tag in ratios + grads:
        points = events.Scalars(tag)
        assert [p.step for p in points] == [2, 4]  # one point per epoch, at its last step
        assert all(p.value > 0 for p in points)
    off = EventAccumulator(str(plain.run_dir)).Reload().Tags()["scalars"]
    assert not [t for t in off if t.startswith("internals/")]

    # The probes restore BN statistics and the RNG: the weights are those of a run without them.
    a, b = load_checkpoint(logged.run_dir / "last.pt").model, load_checkpoint(plain.run_dir / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_log_internals_needs_tensorboard(tmp_path):
    with pytest.raises(ConfigError, match="--log-internals writes to TensorBoard"):
        train_in_process(tmp_path, "x", log_internals=True, **SYNTHETIC)
