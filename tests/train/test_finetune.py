"""Fine-tuning: torchvision-format weights with a new head, a frozen backbone, the weights' own preprocessing."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
import yaml

from models import CheckpointError, create_model, load_checkpoint, load_pretrained
from models.preprocess import CIFAR10_MEAN
from models.pretrained import read_pretrained
from train.cli import main
from train.config import resolve_config

from .helpers import train_in_process


def test_finetune_torchvision_weights_with_new_head(tmp_path, jpeg_folder, torchvision_resnet18_file):
    source = torch.load(torchvision_resnet18_file, weights_only=True)
    result = train_in_process(
        tmp_path,
        "ft",
        arch="resnet18",
        data="folder",
        data_dir=str(jpeg_folder),
        image_size=32,
        pretrained=str(torchvision_resnet18_file),
        head_lr=0.5,
        lr=0.01,
    )
    ckpt = load_checkpoint(result.run_dir / "last.pt")
    assert ckpt.num_classes == 4 and tuple(ckpt.model["fc.weight"].shape) == (4, 512)
    assert not torch.equal(ckpt.model["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
    assert [g["lr"] for g in ckpt.optimizer["param_groups"]] == [0.0, 0.0]  # cosine ran to its end
    assert [g["initial_lr"] for g in ckpt.optimizer["param_groups"]] == [0.01, 0.5]  # backbone, head


def test_freeze_backbone_leaves_it_unchanged(tmp_path, jpeg_folder, torchvision_resnet18_file):
    source = torch.load(torchvision_resnet18_file, weights_only=True)
    result = train_in_process(
        tmp_path,
        "frozen",
        arch="resnet18",
        data="folder",
        data_dir=str(jpeg_folder),
        image_size=32,
        pretrained=str(torchvision_resnet18_file),
        freeze_backbone=True,
        epochs=2,
    )
    trained = load_checkpoint(result.run_dir / "last.pt").model
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) == 120
    for key in backbone:  # weights and BN running statistics alike
        assert torch.equal(trained[key], source[key]), key
    assert tuple(trained["fc.weight"].shape) == (4, 512)


def test_finetune_uses_the_pretrained_preprocessing(tmp_path, jpeg_folder, cifar_root):
    """Weights trained on CIFAR carry CIFAR's mean/std into the fine-tuned checkpoint."""
    first = train_in_process(tmp_path, "cifar", arch="resnet20", data="cifar10", data_dir=str(cifar_root))
    result = train_in_process(
        tmp_path,
        "from-cifar",
        arch="resnet20",
        data="folder",
        data_dir=str(jpeg_folder),
        pretrained=str(first.run_dir / "best.pt"),
        freeze_until="layer2",
    )
    ckpt = load_checkpoint(result.run_dir / "best.pt")
    assert ckpt.preprocess.mean == CIFAR10_MEAN
    source = load_checkpoint(first.run_dir / "best.pt").model
    assert torch.equal(ckpt.model["layer2.0.conv1.weight"], source["layer2.0.conv1.weight"])
    assert torch.equal(ckpt.model["layer2.0.bn1.running_mean"], source["layer2.0.bn1.running_mean"])
    assert not torch.equal(ckpt.model["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"])


def test_the_finetune_recipe_follows_the_cheat_sheet():
    config = resolve_config({"arch": "resnet50"}, "finetune")
    assert (config.lr, config.head_lr, config.optimizer, config.momentum) == (0.001, None, "sgd", 0.9)


def test_bare_pretrained_means_torchvisions_weights_for_the_arch_from_the_local_cache(
    tmp_path, monkeypatch, capsys, jpeg_folder, torchvision_resnet18_file
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = ["--arch", "resnet18", "--data", "folder", "--data-dir", str(jpeg_folder), "--out", str(tmp_path / "runs")]
    assert main([*args, "--pretrained", "--epochs", "1", "--no-tensorboard", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "no torchvision weights for resnet18 in the local torch hub cache" in err and "resnet18-f37072fd.pth" in err
    assert not (tmp_path / "runs" / "resnet18-folder").exists()  # a run that could not start leaves no folder

    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(torchvision_resnet18_file, cache / "resnet18-f37072fd.pth")  # torchvision's published file name
    assert main([*args, "--pretrained", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["pretrained"] == "torchvision:resnet18"
    model = create_model("resnet18")
    info = load_pretrained(model, "torchvision:resnet18")
    assert info.source == "torchvision:resnet18.IMAGENET1K_V1" and info.class_names[0] == "tench"
    torch.testing.assert_close(model.state_dict(), torch.load(torchvision_resnet18_file, weights_only=True))


def test_timm_weights_without_timm_installed_are_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets when it is not installed
    with pytest.raises(CheckpointError, match="needs the timm package, which is not installed: pip install timm"):
        read_pretrained("timm:resnet50.a1_in1k")
    assert main(["--predict", "x.jpg", "--checkpoint", "timm:resnet50.a1_in1k", "--arch", "resnet50"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: timm:resnet50.a1_in1k needs the timm package") and "Traceback" not in err
