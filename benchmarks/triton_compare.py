"""Triton beside TorchServe in `python -m benchmarks serve`: the same export (its fp32 ONNX artifact) through
the same Classifier, served by Triton's Python backend with the same instance count, batch size and batch
delay as TorchServe's workers, loaded by the same locust runs (`client loadtest --protocol v2`).

Per level: closed-loop requests/s and latency next to TorchServe's "ours onnx" at that level, and the
backend processes' CPU per served image against the raw runner's at the same batch (TorchServe's level
measured it minutes earlier). Then the open-loop ladder (`client openloop --protocol v2`) at fractions of
Triton's own closed-loop capacity: its highest rate within the p99 bound, against TorchServe's from its
ladder in its best layout. Plus Triton's cold start (start to every model ready) and its backend
processes' memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from .report import Table, Verdict

CPU_TARGET = 1.10  # backend CPU ms per served image over the raw runner's, same batch
RATE_TARGET = 1.2  # Triton's closed-loop requests/s over TorchServe's at the top level


def table() -> Table:
    return Table(
        "TorchServe vs Triton (same export, onnx, same workers / instances and batching)",
        [
            "model",
            "layout",
            "users",
            "TorchServe req/s",
            "Triton req/s",
            "Triton / TorchServe",
            "TorchServe p99 ms",
            "Triton p99 ms",
            "Triton failures",
            "Triton backend CPU ms / image",
            "raw CPU ms / image (same batch)",
            "Triton backend / raw CPU",
        ],
    )


def start(export_dir: Path, name: str, layout, run_dir: Path, log):
    from serve.server import free_ports
    from serve.triton_repo import RepoOptions
    from serve.triton_server import TritonSettings
    from serve.triton_server import start as start_triton

    port, grpc_port, metrics_port = free_ports(3)
    options = RepoOptions(
        backend="onnx",
        workers=layout.workers,
        batch_size=layout.batch_size,
        max_batch_delay_ms=layout.max_batch_delay_ms,
    )
    settings = TritonSettings(
        export_dirs=[export_dir],
        names=[name],
        repo=options,
        run_dir=run_dir,
        port=port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=240,
    )
    began = time.perf_counter()
    info = start_triton(settings, log=log)
    return info, time.perf_counter() - began


def backend_processes(info) -> list[psutil.Process]:
    from serve.triton_server import stub_processes

    return stub_processes(info.shm_prefix)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def compare(
    arch: str,
    export_dir: Path,
    layout,
    levels: list[int],
    duration: int,
    images: Path,
    work: Path,
    *,
    load_level,
    torchserve: dict[int, dict],
    raw_cpu_ms: dict[int, float | None],
    table: Table,
    report,
    log,
    open_loop=None,
    torchserve_bounded_rps: float | None = None,
) -> dict:
    """Serve `export_dir` with Triton in `layout` and load it at every level with `load_level` (serving.py's
    locust run); rows go into `table`, raw data into `report.data["triton"]`, verdicts into `report`.
    `torchserve[users]` is TorchServe's "ours onnx" summary and `raw_cpu_ms[users]` the raw runner's CPU ms
    per image at that level, same layout. `open_loop(info, model, capacity, users)`, when given, runs the
    open-loop ladder against Triton at fractions of its closed-loop capacity and returns the highest rate
    within the p99 bound, compared with TorchServe's (`torchserve_bounded_rps`)."""
    from serve.triton_server import stop

    name = f"{arch}-{layout.key}-triton"
    log(f"{arch}: starting Triton with {name}")
    run_dir = work / "triton" / arch
    info, start_s = start(export_dir, name, layout, run_dir, log)
    entry = {"model": arch, "layout": layout.key, "server_start_to_ready_s": start_s, "levels": []}
    try:
        backends = backend_processes(info)
        entry["backend_rss_mb_idle"], entry["instances"] = rss_mb(backends), len(backends)
        for users in levels:
            log(f"{arch}: Triton, layout {layout.key}, at {users} user(s)")
            before, began = cpu_seconds(backends), time.perf_counter()
            summary = load_level(info, name, users, duration, images, work / "loadtests-triton", protocol="v2")
            cpu_s, elapsed = cpu_seconds(backends) - before, time.perf_counter() - began
            completed = summary["requests"] - summary["failures"]
            cpu_ms = 1e3 * cpu_s / completed if completed else None
            raw_ms = raw_cpu_ms.get(users)
            ratio = cpu_ms / raw_ms if cpu_ms and raw_ms else None
            theirs = torchserve[users]
            speedup = summary["requests_per_s"] / theirs["requests_per_s"] if theirs["requests_per_s"] else None
            entry["levels"].append(
                {
                    "users": users,
                    "summary": summary,
                    "backend_cpu_cores": cpu_s / elapsed,
                    "backend_cpu_ms_per_image": cpu_ms,
                    "raw_cpu_ms_per_image": raw_ms,
                    "backend_cpu_over_raw": ratio,
                    "over_torchserve": speedup,
                }
            )
            table.add(
                arch,
                layout.key,
                users,
                theirs["requests_per_s"],
                summary["requests_per_s"],
                speedup and f"{speedup:.2f}x",
                theirs["p99_ms"],
                summary["p99_ms"],
                summary["failures"],
                cpu_ms,
                raw_ms,
                ratio and f"{ratio:.2f}x",
            )
        entry["backend_rss_mb_after"] = rss_mb(backends)
        if open_loop is not None:
            capacity, capacity_users = max((lv["summary"]["requests_per_s"], lv["users"]) for lv in entry["levels"])
            entry["max_rate_under_p99_bound"] = open_loop(info, name, capacity, capacity_users)
    finally:
        stop(run_dir)
    report.data.setdefault("triton", []).append(entry)
    report.verdicts += verdicts(arch, layout.key, entry, torchserve_bounded_rps if open_loop else None)
    return entry


def verdicts(arch: str, layout: str, entry: dict, torchserve_bounded_rps: float | None) -> list[Verdict]:
    """CPU per image against the raw runner at the top level, the p99-bounded rate against TorchServe's
    (when the open loop ran), and the closed-loop rate at the top level."""
    top = entry["levels"][-1]
    bounded = entry.get("max_rate_under_p99_bound")
    bounded_ratio = bounded / torchserve_bounded_rps if bounded and torchserve_bounded_rps else None
    found = [
        Verdict(
            f"Triton backend CPU ms per served image <= {CPU_TARGET:g}x the raw runner's ({arch}, onnx, layout "
            f"{layout}, {top['users']} users)",
            f"{top['backend_cpu_over_raw']:.2f}x" if top["backend_cpu_over_raw"] else "not measured",
            top["backend_cpu_over_raw"] <= CPU_TARGET if top["backend_cpu_over_raw"] else None,
        ),
    ]
    if "max_rate_under_p99_bound" in entry:
        found.append(
            Verdict(
                f"Triton's p99-bounded open-loop rate >= {RATE_TARGET:g}x TorchServe's ({arch}, Triton in layout "
                f"{layout}, TorchServe in its best layout)",
                f"{bounded_ratio:.2f}x ({bounded} vs {torchserve_bounded_rps} req/s)"
                if bounded_ratio
                else f"not comparable (Triton {bounded}, TorchServe {torchserve_bounded_rps} req/s)",
                bounded_ratio >= RATE_TARGET if bounded_ratio else None,
            )
        )
    found.append(
        Verdict(
            f"Triton >= {RATE_TARGET:g}x TorchServe's closed-loop requests/s ({arch}, layout {layout}, "
            f"{top['users']} users; closed loop)",
            f"{top['over_torchserve']:.2f}x" if top["over_torchserve"] else "not measured",
            top["over_torchserve"] >= RATE_TARGET if top["over_torchserve"] else None,
        )
    )
    return found
