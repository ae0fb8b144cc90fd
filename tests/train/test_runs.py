"""End-to-end runs in-process: every --data kind, the checkpoint contract, overfitting, EMA, run dirs."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
import yaml

from models import load_checkpoint, model_from_checkpoint
from models.checkpoint import REQUIRED_KEYS
from tests.fixtures.datasets import DIGIT_NAMES
from train.checkpoints import RunDirError
from train.data import DataError

from .helpers import train_in_process


@pytest.mark.parametrize("kind", ["folder", "imagenet", "cifar10", "cifar100", "synthetic"])
def test_every_data_kind_trains_and_writes_a_checkpoint(tmp_path, kind, jpeg_folder, cifar_root):
    data_dir = {"folder": jpeg_folder, "imagenet": jpeg_folder, "cifar10": cifar_root, "cifar100": cifar_root}.get(kind)
    extra = {"num_classes": 4, "synthetic_size": 32} if kind == "synthetic" else {}
    result = train_in_process(
        tmp_path, kind, arch="resnet20", data=kind, data_dir=str(data_dir) if data_dir else None, **extra
    )
    on_disk = torch.load(result.run_dir / "best.pt", weights_only=True)  # contract 1: plain containers only
    assert set(REQUIRED_KEYS) <= set(on_disk)
    assert {"optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config", "metrics"} <= set(on_disk)
    ckpt = load_checkpoint(result.run_dir / "best.pt")
    assert ckpt.config["data"] == kind and ckpt.epoch == 1
    assert {"data", "data_dir", "val_split", "seed"} <= set(ckpt.config)
    assert set(ckpt.metrics) == {"top1", "top5", "loss"}
    expected = {"folder": 4, "imagenet": 4, "cifar10": 10, "cifar100": 100, "synthetic": 4}[kind]
    assert ckpt.num_classes == len(ckpt.class_names) == expected
    model, _ = model_from_checkpoint(result.run_dir / "last.pt")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, expected)
    assert (result.run_dir / "config.yaml").is_file()


def test_overfits_a_few_dozen_images(tmp_path, jpeg_folder):
    """48 JPEGs, no augmentation: the network must learn them all (val is the same images here)."""
    data = tmp_path / "same"
    shutil.copytree(jpeg_folder / "train", data / "train")
    shutil.copytree(jpeg_folder / "train", data / "val")
    result = train_in_process(
        tmp_path,
        "overfit",
        arch="resnet20",
        data="folder",
        data_dir=str(data),
        epochs=15,
        batch_size=16,
        lr=0.05,
        weight_decay=0.0,
        train_crop="center",
        hflip=False,
        plots=True,
        tensorboard=True,
    )
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15
    assert float(rows[-1]["train_top1"]) == 100.0
    assert result.best_top1 == 100.0
    assert (result.run_dir / "curves.png").stat().st_size > 0
    assert list(result.run_dir.glob("events.out.tfevents.*"))


def test_run_dir_is_not_overwritten_without_asking(tmp_path, cifar_root):
    common = dict(arch="resnet20", data="cifar10", data_dir=str(cifar_root))
    train_in_process(tmp_path, "r", **common)
    with pytest.raises(RunDirError, match="--resume auto"):
        train_in_process(tmp_path, "r", **common)
    result = train_in_process(tmp_path, "r", resume="auto", epochs=2, **common)  # continue for one more epoch
    assert load_checkpoint(result.run_dir / "last.pt").epoch == 2
    with open(result.run_dir / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    result = train_in_process(tmp_path, "r", overwrite=True, **common)
    assert load_checkpoint(result.run_dir / "last.pt").epoch == 1


def test_ema_weights_are_saved_and_deployed(tmp_path, cifar_root):
    result = train_in_process(
        tmp_path,
        "ema",
        arch="resnet20",
        data="cifar10",
        data_dir=str(cifar_root),
        ema=True,
        ema_decay=0.5,
        label_smoothing=0.1,
        mixup=0.2,
        cutmix=1.0,
        auto_augment="trivialaugment",
        random_erasing=0.25,
        no_wd_norm_bias=True,
        warmup_epochs=0.5,
        grad_clip=1.0,
    )
    ckpt = load_checkpoint(result.run_dir / "last.pt")
    assert ckpt.ema_updates == ckpt.step == 5
    assert not torch.equal(ckpt.ema["fc.weight"], ckpt.model["fc.weight"])
    model, _ = model_from_checkpoint(ckpt)
    assert torch.equal(model.state_dict()["fc.weight"], ckpt.ema["fc.weight"])
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["mixup"] == 0.2 and config["ema"] is True


def test_folder_class_names_and_accumulation(tmp_path, jpeg_folder):
    result = train_in_process(
        tmp_path, "acc", arch="resnet20", data="folder", data_dir=str(jpeg_folder), batch_size=16, accum_steps=2
    )
    ckpt = load_checkpoint(result.run_dir / "best.pt")
    assert ckpt.class_names == sorted(DIGIT_NAMES[:4])
    assert ckpt.step == 3  # 48 images / 16 per step


def test_a_run_that_fails_its_data_check_leaves_no_run_folder(tmp_path):
    with pytest.raises(DataError):
        train_in_process(tmp_path, "no-data", arch="resnet20", data="folder", data_dir=str(tmp_path / "missing"))
    assert not (tmp_path / "no-data").exists()
