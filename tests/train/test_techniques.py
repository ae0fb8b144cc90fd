"""The pieces of a training step: schedules, parameter groups, AMP on CPU, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imagedata.kinds import default_preprocess
from models import create_model
from train.config import TrainConfig
from train.engine import StepParts, train_step
from train.finetune import freeze, frozen_norm_layers, set_train_mode
from train.optim import build_optimizer, build_scheduler, lr_factor_fn, parameter_groups

BASE = TrainConfig(lr=0.1, batch_size=64, epochs=10, weight_decay=1e-4, scheduler="cosine", warmup_epochs=0.0)


def test_warmup_then_cosine_per_iteration():
    f = lr_factor_fn(BASE.replace(warmup_epochs=1.0, warmup_start_factor=0.1), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)  # linear, per step
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # half-way through the 90 cosine steps
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_multistep_and_linear_scaling():
    config = BASE.replace(scheduler="multistep", milestones=[3.0, 6.0], lr_gamma=0.1, lr_base_batch=256)
    f = lr_factor_fn(config, steps_per_epoch=4)
    assert [f(s) for s in (11, 12, 23, 24)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    model = create_model("resnet20")
    opt = build_optimizer(model, config)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 64 / 256)
    sched = build_scheduler(opt, config, steps_per_epoch=4)
    for _ in range(12):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 64 / 256 * 0.1)


def test_no_weight_decay_on_norms_and_biases_and_head_lr():
    model = create_model("resnet20")
    groups = parameter_groups(model, BASE.replace(no_wd_norm_bias=True, head_lr=1.0))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.bn1.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.fc.bias)]["weight_decay"] == 0.0 and by_param[id(model.fc.bias)]["lr"] == 1.0
    assert by_param[id(model.fc.weight)]["weight_decay"] == 1e-4 and by_param[id(model.fc.weight)]["lr"] == 1.0
    assert by_param[id(model.conv1.weight)]["weight_decay"] == 1e-4 and by_param[id(model.conv1.weight)]["lr"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _parts(model, amp_dtype=None, scaler=None, grad_clip=None, accum=1):
    return StepParts(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        preprocess=default_preprocess({"data": "digits"}),
        device=torch.device("cpu"),
        scaler=scaler,
        amp_dtype=amp_dtype,
        grad_clip=grad_clip,
        accum_steps=accum,
    )


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = create_model("resnet20")
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = model.conv1.weight.detach().clone()
    loss, correct = train_step(_parts(model, amp_dtype=torch.bfloat16), *_batch())
    assert seen == [torch.bfloat16]  # the matmuls ran in bf16
    assert math.isfinite(float(loss)) and 0 <= int(correct) <= 8
    assert model.conv1.weight.dtype == torch.float32 and not torch.equal(model.conv1.weight, before)


def test_fp16_grad_scaler_clips_after_unscale():
    torch.manual_seed(0)
    model = create_model("resnet20")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    parts = _parts(model, amp_dtype=torch.float16, scaler=scaler, grad_clip=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(parts, *_batch())
    # SGD's first step moves each weight by lr * grad; clipped to norm 1e-3 *after* unscaling, the total
    # move is at most lr * 1e-3 (clipping the scaled gradients would have let through 2**10 times more)
    moved = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.named_parameters()))
    assert 0 < float(moved) <= 0.1 * 1e-3 * 1.01
    assert scaler.get_scale() == 2.0**10


def test_accumulation_splits_the_batch_into_interleaved_micro_batches():
    """k accumulation steps over x[i::k] equal one step over the batch when BN sees the same shards."""
    torch.manual_seed(0)
    a = create_model("resnet20")
    b = create_model("resnet20")
    b.load_state_dict(a.state_dict())
    images, labels = _batch(8)
    train_step(_parts(a, accum=2), images, labels)
    # the same two shards, by hand
    parts = _parts(b)
    parts.optimizer.zero_grad()
    from models import normalize_batch

    x = normalize_batch(images, parts.preprocess)
    for i in range(2):
        (nn.functional.cross_entropy(b(x[i::2]), labels[i::2]) / 2).backward()
    parts.optimizer.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)


def test_freeze_backbone_and_until():
    model = create_model("resnet18", num_classes=3)
    frozen = freeze(model, backbone=True)
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    assert model.fc.weight.requires_grad and "fc.weight" not in frozen
    norms = frozen_norm_layers(model)
    set_train_mode(model, norms)
    assert model.training and all(not m.training for m in norms) and len(norms) == 20

    model = create_model("resnet18", num_classes=3)
    freeze(model, until="layer2")
    assert not model.conv1.weight.requires_grad and not model.layer2[1].conv2.weight.requires_grad
    assert model.layer3[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="layer5"):
        freeze(create_model("resnet18"), until="layer5")


def test_grad_checkpoint_trains_the_same_weights(tmp_path):
    from models import load_checkpoint

    from .helpers import train_in_process

    states = []
    for flag in (False, True):
        options = dict(arch="resnet20", data="synthetic", num_classes=4, synthetic_size=48, grad_checkpoint=flag)
        result = train_in_process(tmp_path, f"ckpt-{flag}", **options)
        ckpt = load_checkpoint(result.run_dir / "last.pt")
        assert "grad_checkpoint" not in ckpt.arch_kwargs  # a training setting, not part of the network
        states.append(ckpt.model)
    torch.testing.assert_close(states[1], states[0])
