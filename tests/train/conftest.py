"""Data fixtures for the train tests, each in its true on-disk format, made from the real digits.

- an ImageFolder tree of JPEG files (`train/<class>/*.jpg`, `val/<class>/*.jpg`);
- CIFAR-10 and CIFAR-100 as torchvision's pickled batches (`cifar-10-batches-py/data_batch_1` ...);
- a torchvision-format ResNet-18 weight file (a bare `state_dict` saved with `torch.save`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from .helpers import DIGIT_NAMES, digits_subset, write_cifar, write_jpeg_tree


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one intra-op thread (CI has 2 cores, shared with subprocesses and servers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    """train/ and val/ JPEG class folders: 4 digit classes, 12 train and 4 val images each."""
    root = tmp_path_factory.mktemp("jpeg_folder")
    for split, per_class in (("train", 12), ("val", 4)):
        images, labels = digits_subset(split, per_class, classes=4)
        write_jpeg_tree(root / split, images, labels, DIGIT_NAMES)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100")
    return root


@pytest.fixture(scope="session")
def torchvision_resnet18_file(tmp_path_factory) -> Path:
    """torchvision's ResNet-18 (random init) saved as torchvision publishes weights: a bare state_dict."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_torchvision.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path
