"""Fixtures for the train tests: one torch thread. The datasets on disk come from `tests.fixtures.datasets`,
the torchvision-format weight file from `tests.fixtures.weights`.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one intra-op thread (CI has 2 cores, shared with subprocesses and servers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
