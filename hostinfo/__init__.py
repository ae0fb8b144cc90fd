"""What the host offers this process: the cores it may really use and the CPU's model and feature flags.

The ground floor: it imports nothing of ours and nothing outside the standard library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
# /proc/cpuinfo flags of CPUs with native bf16 arithmetic, and with int8 dot products (VNNI, AMX)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def usable_cores() -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota
    (`docker run --cpus 2` on a 64-core host is 2, not 64)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """Cores allowed by the cgroup v2 `cpu.max` file (quota / period), or None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...); empty
    where there is no such file (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where it does not say: not Linux, or no flags line)."""
    line = cpuinfo().get("flags")
    return set(line.split()) if line is not None else None
