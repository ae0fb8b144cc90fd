"""Default recipes: the headline commands resolve to the write-ups' recipes (`--dry-run` output), a dry run
touches nothing, flags still override, and a real run says which recipe it got."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from train.cli import main

QUIET = ["--no-tensorboard", "--no-plots", "--workers", "0", "--log-every", "1000"]


def dry_run(capsys, *args: str) -> dict:
    assert main([*args, "--dry-run"]) == 0
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out)


def test_resnet50_on_imagenet_gets_the_imagenet_recipe_and_the_dry_run_writes_nothing(tmp_path):
    # As a user types it, from an empty working directory: a new process, no data on disk.
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--arch", "resnet50", "--data", "imagenet", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    expected = {
        "arch": "resnet50",
        "data": "imagenet",
        "recipe": "imagenet_original",
        "epochs": 90,
        "batch_size": 256,
        "lr": 0.1,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "multistep",
        "milestones": [30, 60],
        "lr_gamma": 0.1,
        "train_crop": "random-resized-crop",
        "hflip": True,
        "image_size": 224,
        "val_resize": 256,
    }
    assert {k: config[k] for k in expected} == expected
    assert "default for --data imagenet" in config["recipe_source"]
    assert list(tmp_path.iterdir()) == []  # no runs/, no config, no lock


def test_the_cifar_papers_nets_get_the_paper_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = dry_run(capsys, "--arch", "resnet20", "--data", "cifar10")
    expected = {
        "recipe": "cifar_paper",
        "arch": "resnet20",
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "multistep",
        "milestones": [80, 120],
        "lr_gamma": 0.1,
        "train_crop": "random-crop",
        "crop_padding": 4,
        "hflip": True,
    }
    assert {k: config[k] for k in expected} == expected
    assert dry_run(capsys, "--arch", "resnet110", "--data", "cifar100")["recipe"] == "cifar_paper"
    assert not (tmp_path / "runs").exists()


def test_the_cifar_resnet18_gets_the_modern_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = dry_run(capsys, "--arch", "cifar_resnet18", "--data", "cifar10")
    expected = {
        "recipe": "cifar_modern",
        "arch": "cifar_resnet18",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "scheduler": "cosine",
        "warmup_start_factor": 0.0,
        "zero_init_residual": True,
        "label_smoothing": 0.1,
        "mixup": 0.2,
        "auto_augment": "randaugment",
        "randaugment_magnitude": 14,
        "train_crop": "random-crop",
        "crop_padding": 4,
        "hflip": True,
    }
    assert {k: config[k] for k in expected} == expected
    assert config["warmup_epochs"] > 0  # a linear warmup (from 0, above) precedes the cosine
    assert not (tmp_path / "runs").exists()


def test_flags_override_the_default_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = dry_run(
        capsys,
        "--arch",
        "resnet50",
        "--data",
        "imagenet",
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--weight-decay",
        "5e-5",
        "--scheduler",
        "cosine",
    )
    assert (config["epochs"], config["batch_size"], config["weight_decay"], config["scheduler"]) == (
        5,
        64,
        5e-5,
        "cosine",
    )
    assert config["recipe"] == "imagenet_original" and config["milestones"] == [30, 60]  # the rest still the recipe's
    # An explicit --recipe wins over the default one.
    assert dry_run(capsys, "--arch", "cifar_resnet18", "--data", "cifar10", "--recipe", "cifar_baseline")["recipe"] == (
        "cifar_baseline"
    )


@pytest.mark.parametrize("arch, data", [("resnet50", "folder"), ("resnet20", "synthetic")])
def test_data_without_a_recipe_gets_the_plain_defaults(capsys, arch, data):
    config = dry_run(capsys, "--arch", arch, "--data", data)
    assert "recipe" not in config


def test_a_real_run_prints_its_recipe_first(tmp_path, capsys):
    code = main(
        [
            "--arch",
            "resnet20",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--out",
            str(tmp_path),
            "--name",
            "r",
            *QUIET,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == "recipe: digits (default for --data digits and resnet20)"
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["recipe"] == "digits" and config["nesterov"] is True  # the recipe's
    assert (config["epochs"], config["batch_size"]) == (1, 128)  # the flags'


def test_an_imagenet_name_on_cifar_means_its_cifar_variant(capsys, tmp_path, monkeypatch):
    """The write-ups' `--arch resnet18 --data cifar10`: the CIFAR ResNet-18 and the CIFAR recipe, said so."""
    monkeypatch.chdir(tmp_path)
    config = dry_run(capsys, "--arch", "resnet18", "--data", "cifar10")
    assert (config["arch"], config["recipe"]) == ("cifar_resnet18", "cifar_modern")
    assert config["arch_source"].startswith("resnet18 -> cifar_resnet18") and "--imagenet-stem" in config["arch_source"]
    assert dry_run(capsys, "--arch", "preact_resnet50", "--data", "digits")["arch"] == "cifar_preact_resnet50"
    kept = dry_run(capsys, "--arch", "resnet18", "--data", "cifar10", "--imagenet-stem")
    assert (kept["arch"], kept["recipe"]) == ("resnet18", "cifar_modern") and "arch_source" not in kept
    # ImageNet weights need the ImageNet stem; nets without a CIFAR variant stay as named.
    assert dry_run(capsys, "--arch", "resnet18", "--data", "cifar10", "--pretrained", "w.pth")["arch"] == "resnet18"
    assert dry_run(capsys, "--arch", "resnet152", "--data", "cifar10")["arch"] == "resnet152"
    assert dry_run(capsys, "--arch", "resnet18", "--data", "imagenet")["arch"] == "resnet18"
