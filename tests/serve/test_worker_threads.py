"""Threads per worker come from the cores the process may really use: its CPU affinity capped by a
cgroup v2 CPU quota (`docker run --cpus 2` on a 64-core host must not give each worker 32 threads).

The quota is read from a real `cpu.max` file in cgroup v2's format, written by the test.
"""

from __future__ import annotations

import os

import pytest

import hostinfo
from serve.handler import threads_per_worker


def fake_cpu_max(tmp_path, text: str):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, cores",
    [
        ("200000 100000\n", 2.0),  # --cpus 2
        ("150000 100000\n", 1.5),  # --cpus 1.5
        ("50000 100000\n", 0.5),
        ("max 100000\n", None),  # no quota
        ("", None),
        ("not a cgroup file\n", None),
    ],
)
def test_cgroup_cpu_quota_parses_cpu_max(tmp_path, text, cores):
    assert hostinfo.cgroup_cpu_quota(fake_cpu_max(tmp_path, text)) == cores


def test_no_cpu_max_file_means_no_quota(tmp_path):
    assert hostinfo.cgroup_cpu_quota(tmp_path / "missing" / "cpu.max") is None


@pytest.mark.parametrize("text, expected", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1)])
def test_usable_cores_and_worker_threads_follow_the_quota(tmp_path, monkeypatch, text, expected):
    """A quota below the affinity caps the cores (rounded up: 1.5 CPUs keep two threads busy part-time),
    and the handler's threads per worker with them."""
    cpu_max, read_quota = fake_cpu_max(tmp_path, text), hostinfo.cgroup_cpu_quota
    monkeypatch.setattr(hostinfo, "cgroup_cpu_quota", lambda: read_quota(cpu_max))
    affinity = len(os.sched_getaffinity(0))
    assert hostinfo.usable_cores() == min(affinity, expected)
    assert threads_per_worker({"minWorkers": 1, "maxWorkers": 1}) == min(affinity, expected)
    assert threads_per_worker({"minWorkers": 4, "maxWorkers": 4}) == 1


def test_without_a_quota_the_affinity_decides(tmp_path, monkeypatch):
    cpu_max, read_quota = fake_cpu_max(tmp_path, "max 100000"), hostinfo.cgroup_cpu_quota
    monkeypatch.setattr(hostinfo, "cgroup_cpu_quota", lambda: read_quota(cpu_max))
    assert hostinfo.usable_cores() == len(os.sched_getaffinity(0))
