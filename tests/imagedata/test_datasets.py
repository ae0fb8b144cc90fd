"""Every --data kind read from its true on-disk format, the validation-set contract, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagedata.digits import digits_split, write_digits_folder
from imagedata.errors import DataError
from imagedata.kinds import DATA_KINDS, build_dataset, build_validation_set, default_preprocess
from models import PreprocessSpec
from tests.fixtures.datasets import DIGIT_NAMES
from train.config import TrainConfig
from train.data import train_transform


def cfg(**kw):
    return {"arch": "resnet20", "data_dir": None, "val_split": None, "seed": 0, "synthetic_size": 64, **kw}


def test_digits_fixed_stratified_split():
    train_images, train_labels = digits_split("train")
    val_images, val_labels = digits_split("val")
    assert train_images.shape == (1437, 3, 32, 32) and val_images.shape == (360, 3, 32, 32)
    assert train_images.dtype == torch.uint8 and int(train_images.max()) == 255
    assert np.bincount(val_labels).min() >= 35  # every digit about 36 times: stratified
    again, _ = digits_split("val")
    assert torch.equal(again, val_images)


def test_write_digits_folder_is_an_image_folder(tmp_path):
    root = write_digits_folder(tmp_path / "digits", split="val", limit_per_class=3)
    assert sorted(p.name for p in root.iterdir()) == [str(i) for i in range(10)]
    files = sorted((root / "7").glob("*.png"))
    assert len(files) == 3
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    dataset = build_validation_set(
        cfg(data="folder", data_dir=str(root), val_split=0.5), default_preprocess(cfg(data="digits"))
    )
    assert len(dataset) == 15  # half of each class


@pytest.mark.parametrize("kind", ["digits", "synthetic"])
def test_validation_set_yields_uint8_chw_of_the_spec(kind):
    spec = PreprocessSpec(input_size=28, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = build_validation_set(cfg(data=kind), spec)
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 28, 28) and isinstance(label, int)


def test_jpeg_image_folder(jpeg_folder):
    spec = default_preprocess(cfg(data="folder"))
    train, names = build_dataset(
        cfg(data="folder", data_dir=str(jpeg_folder)), "train", train_transform(TrainConfig(**cfg(data="folder")), spec)
    )
    val = build_validation_set(cfg(data="folder", data_dir=str(jpeg_folder)), spec)
    assert names == sorted(DIGIT_NAMES[:4])
    assert len(train) == 48 and len(val) == 16
    image, label = train[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)


def test_imagenet_layout_errors(tmp_path, jpeg_folder):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        build_dataset(cfg(data="imagenet", data_dir=str(tmp_path / "nowhere")), "val", None)
    flat = tmp_path / "flat"
    (flat / "train" / "n01440764").mkdir(parents=True)
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="not in class folders"):
        build_dataset(cfg(data="imagenet", data_dir=str(flat)), "val", None)
    with pytest.raises(DataError, match="missing .*val"):
        build_dataset(cfg(data="imagenet", data_dir=str(jpeg_folder / "train")), "val", None)
    dataset, names = build_dataset(cfg(data="imagenet", data_dir=str(jpeg_folder)), "val", None)
    assert len(dataset) == 16 and names == sorted(DIGIT_NAMES[:4])


def test_folder_split_and_mismatched_classes(tmp_path, jpeg_folder):
    single = cfg(data="folder", data_dir=str(jpeg_folder / "train"), val_split=0.25)
    train, _ = build_dataset(single, "train", None)
    val, _ = build_dataset(single, "val", None)
    assert len(train) == 36 and len(val) == 12
    assert not set(train.indices) & set(val.indices)
    with pytest.raises(DataError, match="--val-split"):
        build_dataset(cfg(data="folder", data_dir=str(jpeg_folder / "train")), "train", None)
    odd = tmp_path / "odd"
    for split, classes in (("train", ["a", "b"]), ("val", ["a", "c"])):
        for c in classes:
            (odd / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(odd / split / c / "x.png")
    with pytest.raises(DataError, match="different class folders"):
        build_dataset(cfg(data="folder", data_dir=str(odd)), "train", None)


@pytest.mark.parametrize("kind,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickled_batches(cifar_root, kind, classes):
    spec = default_preprocess(cfg(data=kind))
    train, names = build_dataset(
        cfg(data=kind, data_dir=str(cifar_root)), "train", train_transform(TrainConfig(**cfg(data=kind)), spec)
    )
    val = build_validation_set(cfg(data=kind, data_dir=str(cifar_root)), spec)
    assert len(names) == classes and len(train) == 80 and len(val) == 30
    # the rows are CIFAR's planar RGB: reading them back gives the digit images exactly
    raw, _ = build_dataset(cfg(data=kind, data_dir=str(cifar_root)), "val", None)
    expected, _ = digits_split("val")
    first_zero = expected[np.flatnonzero(digits_split("val")[1] == 0)[0]]
    assert torch.equal(raw[0][0], first_zero)


def test_cifar_missing_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*never|nothing is downloaded"):
        build_dataset(cfg(data="cifar10", data_dir=str(tmp_path)), "train", None)


def test_synthetic_is_deterministic_and_shaped_like_the_arch():
    a, names = build_dataset(cfg(data="synthetic", arch="resnet18", num_classes=7), "train", None)
    b, _ = build_dataset(cfg(data="synthetic", arch="resnet18", num_classes=7), "train", None)
    assert len(names) == 7 and a[3][1] == 3
    assert tuple(a[3][0].shape) == (3, 256, 256) and torch.equal(a[3][0], b[3][0])


def test_unknown_kind():
    with pytest.raises(DataError, match="unknown --data"):
        build_dataset(cfg(data="mnist"), "train", None)


def test_every_kind_builds_from_the_one_registry(tmp_path):
    """Each registered kind answers with its own reader: a data-less kind builds, the others name what is missing."""
    for kind in DATA_KINDS:
        config = cfg(data=kind, data_dir=str(tmp_path / "nowhere"))
        if kind in ("digits", "synthetic"):
            dataset, names = build_dataset(config, "val", None)
            assert len(dataset) > 0 and names
        else:
            with pytest.raises(DataError, match="nowhere"):
                build_dataset(config, "val", None)
