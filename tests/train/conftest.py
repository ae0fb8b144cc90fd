"""Fixtures for the train tests: one torch thread, and a torchvision-format ResNet-18 weight file (a bare
`state_dict` saved with `torch.save`). The datasets on disk come from `tests.fixtures.datasets`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one intra-op thread (CI has 2 cores, shared with subprocesses and servers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def torchvision_resnet18_file(tmp_path_factory) -> Path:
    """torchvision's ResNet-18 (random init) saved as torchvision publishes weights: a bare state_dict."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_torchvision.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path
