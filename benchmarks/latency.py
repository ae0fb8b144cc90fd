"""Latency under load for `python -m benchmarks serve`: an open-loop ladder of Poisson arrival rates
(`python -m client openloop`) and a closed-loop capacity cross-check with ApacheBench beside locust.

The open loop's rates are fractions of the capacity the closed-loop sweep measured, so the ladder
crosses the knee on any machine; the result is the highest rate whose p99 stays within a stated bound
(with every lower rate's), the way MLPerf's server scenario reports a latency-bounded throughput.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .apachebench import AB_MISSING, ab_path, run_ab
from .errors import BenchmarkError
from .report import Table

REPO = Path(__file__).resolve().parent.parent
LOAD_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)  # of the closed-loop capacity
QUICK_FRACTIONS = (0.5, 1.0)
P99_BOUND_MS = 100.0  # a web request that answers within 100 ms feels immediate
OPEN_LOOP_TIMEOUT_S = 30
OPEN_LOOP_GENERATOR = "`python -m client openloop` (asyncio, keep-alive HTTP/1.1, Poisson arrivals)"


def rate_ladder(capacity_rps: float, fractions: tuple[float, ...] | list[float]) -> list[float]:
    """Arrival rates (requests/s, 2 decimals, at least 0.01) at `fractions` of the measured capacity."""
    return sorted({max(0.01, round(f * capacity_rps, 2)) for f in fractions})


def client_env(token: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if token:
        env["TORCHSERVE_TOKEN"] = token  # in the environment, not on a command line others can list
    return env


def open_loop(
    url: str,
    token: str | None,
    model: str,
    rates: list[float],
    seconds: int,
    images: Path,
    bound_ms: float,
    out: Path,
    protocol: str = "torchserve",
) -> dict:
    """`python -m client openloop` at each rate in turn (its own process, so that its CPU counters are its
    own; `protocol` v2 for Triton); its summary.json, with the run folder."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    command = [sys.executable, "-m", "client", "openloop", "--host", url, "--model", model, "--protocol", protocol]
    command += ["--rate", *map(str, rates), "--duration", f"{seconds}s", "--images", str(images)]
    command += ["--p99-bound-ms", f"{bound_ms:g}", "--max-failure-ratio", "1", "--output-root", str(out)]
    command += ["--timeout", str(OPEN_LOOP_TIMEOUT_S)]
    process = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=client_env(token),
        cwd=REPO,
        timeout=len(rates) * (seconds + OPEN_LOOP_TIMEOUT_S) + 120,
    )
    created = sorted(set(out.iterdir()) - before)
    # exit 1: a rate's p99 exceeded the bound, which the ladder is meant to find
    if process.returncode not in (0, 1) or not created or not (created[-1] / "summary.json").is_file():
        raise BenchmarkError(
            f"the open-loop run of {model} failed (exit {process.returncode}): "
            f"{(process.stdout + process.stderr).strip()[-1500:]}"
        )
    summary = json.loads((created[-1] / "summary.json").read_text())
    summary["run_dir"] = str(created[-1])
    return summary


def open_loop_table(bound_ms: float) -> Table:
    return Table(
        f"Open loop: Poisson arrivals at fixed rates ({OPEN_LOOP_GENERATOR}; latency from each request's "
        f"scheduled send time; p99 bound {bound_ms:g} ms)",
        [
            "model",
            "layout",
            "offered req/s",
            "x closed-loop capacity",
            "served req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "late (no free connection)",
            "p99 <= bound",
            "generator CPU cores",
        ],
    )


def add_open_loop_rows(table: Table, model: str, layout: str, capacity_rps: float, summary: dict) -> list[dict]:
    """The rows of one model's ladder; returns the points for `plots.latency_vs_load`."""
    bound = summary["p99_bound_ms"]
    points = []
    for rate in summary["rates"]:
        errors = ", ".join(f"{count} {kind}" for kind, count in rate["errors"].items()) or "0"
        within = rate["p99_ms"] is not None and rate["p99_ms"] <= bound and not rate["error_count"]
        table.add(
            model,
            layout,
            rate["offered_rps"],
            f"{rate['offered_rps'] / capacity_rps:.2f}",
            rate["throughput_rps"],
            rate["p50_ms"],
            rate["p90_ms"],
            rate["p99_ms"],
            rate["max_ms"],
            errors,
            rate["late_no_connection"],
            "yes" if within else "no",
            rate["generator_cores"],
        )
        points.append(
            {
                "model": model,
                "offered_rps": rate["offered_rps"],
                **{key: math.nan if rate[key] is None else rate[key] for key in ("p50_ms", "p90_ms", "p99_ms")},
            }
        )
    return points


def bounded_table(bound_ms: float) -> Table:
    return Table(
        f"Latency-bounded throughput (p99 <= {bound_ms:g} ms, no errors, at that rate and every lower one)",
        [
            "model",
            "layout",
            "highest offered req/s within the bound",
            "x closed-loop capacity",
            "closed-loop capacity req/s (locust, users)",
        ],
    )


def cross_check_table(users: int) -> Table:
    return Table(
        f"Capacity cross-check: closed loop, {users} requests in flight, the same JPEG, ours onnx",
        [
            "model",
            "layout",
            "generator",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "failures",
            "generator CPU cores",
            "generator CPU ms / request",
            "worker CPU cores",
        ],
    )


def ab_cross_check(url: str, token: str | None, model: str, body: Path, users: int, seconds: int, out: Path) -> dict:
    """ApacheBench at `users` requests in flight on `body`, or {"missing": why} when ab is not installed."""
    ab = ab_path()
    if ab is None:
        return {"missing": AB_MISSING}
    try:
        return run_ab(ab, f"{url}/predictions/{model}", body, users, seconds, token, out)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        raise BenchmarkError(f"ApacheBench against {model} failed: {e}") from None
