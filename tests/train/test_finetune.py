"""Fine-tuning: torchvision-format weights with a new head, a frozen backbone, the weights' own preprocessing."""

from __future__ import annotations

import torch

from models import load_checkpoint
from models.preprocess import CIFAR10_MEAN

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
