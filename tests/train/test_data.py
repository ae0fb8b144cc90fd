"""Training augmentation built on the data kinds' defaults."""

from __future__ import annotations

import torch
from PIL import Image

from imagedata.kinds import default_preprocess
from models import PreprocessSpec
from train.config import TrainConfig
from train.data import train_transform


def cfg(**kw):
    return {"arch": "resnet20", "data_dir": None, "val_split": None, "seed": 0, "synthetic_size": 64, **kw}


def test_train_transform_options():
    spec = default_preprocess(cfg(data="cifar10"))
    t = train_transform(
        TrainConfig(**cfg(data="cifar10", auto_augment="randaugment", random_erasing=0.5, hflip=True)), spec
    )
    out = t(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 32, 32) and type(out) is torch.Tensor
    t = train_transform(
        TrainConfig(**cfg(data="imagenet", train_size=48, auto_augment="trivialaugment")), PreprocessSpec()
    )
    assert tuple(t(Image.new("RGB", (80, 60))).shape) == (3, 48, 48)
