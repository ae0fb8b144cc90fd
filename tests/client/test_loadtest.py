"""`python -m client loadtest`: real headless locust runs (a few seconds, two users) against the real
TorchServe on 127.0.0.1, and the thresholds that decide the exit status."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.loadtest import Summary, parse_duration, percentile, verdict

REPO = Path(__file__).parents[2]


def loadtest(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", "loadtest", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def only_run_dir(root: Path) -> Path:
    (run_dir,) = root.iterdir()
    return run_dir


def test_short_run_with_zero_failures_writes_reports(torchserve_url, digit_images, tmp_path):
    assert torchserve_url.startswith("http://127.0.0.1:")
    result = loadtest(
        "--host",
        torchserve_url,
        "--model",
        "digits",
        "--users",
        2,
        "--spawn-rate",
        2,
        "--duration",
        "6s",
        "--images",
        digit_images,
        "--method",
        "PUT",
        "--p95-ms",
        60_000,
        "--output-root",
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = only_run_dir(tmp_path)
    for name in (
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "locust_final_stats.json",
        "report.html",
        "throughput_latency.png",
        "summary.json",
        "locust.log",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "throughput_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in (run_dir / "report.html").read_text().lower()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["passed"] and summary["failures"] == 0 and summary["requests"] > 0
    with (run_dir / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert rows["/predictions/digits"]["Type"] == "PUT"
    # The CSV is a snapshot taken once a second; the summary counts every request.
    assert 0 < int(rows["Aggregated"]["Request Count"]) <= summary["requests"]
    for line in ("requests/s", "failures: 0 (0.00%)", "p50 ", "p95 ", "p99 ", "PASSED"):
        assert line in result.stdout


def test_failures_above_the_ratio_fail_the_run(torchserve_url, tmp_path):
    # An unknown model: every request is a 404, on TorchServe's default images (scikit-image photos).
    result = loadtest(
        "--host",
        torchserve_url,
        "--model",
        "no_such_model",
        "--users",
        1,
        "--duration",
        "3s",
        "--output-root",
        tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failure ratio 1.0000 exceeds --max-failure-ratio 0" in result.stderr
    assert "HTTP 404" in result.stdout  # the most frequent failure, as locust recorded it
    assert not json.loads((only_run_dir(tmp_path) / "summary.json").read_text())["passed"]


def test_p95_above_the_limit_fails_the_run(torchserve_url, digit_images, tmp_path):
    result = loadtest(
        "--host",
        torchserve_url,
        "--model",
        "digits",
        "--users",
        1,
        "--duration",
        "3s",
        "--images",
        digit_images,
        "--p95-ms",
        0.01,
        "--output-root",
        tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "exceeds --p95-ms 0.01" in result.stderr and "failure ratio" not in result.stderr


def thresholds(max_failure_ratio=0.0, p95_ms=None) -> argparse.Namespace:
    return argparse.Namespace(max_failure_ratio=max_failure_ratio, p95_ms=p95_ms)


def test_verdict():
    clean = Summary(requests=100, failures=0, requests_per_s=10, p50_ms=20, p95_ms=50, p99_ms=80, max_ms=90)
    assert verdict(clean, thresholds()) == []
    assert verdict(clean, thresholds(p95_ms=50)) == []
    assert verdict(clean, thresholds(p95_ms=49)) == ["p95 latency 50 ms exceeds --p95-ms 49"]
    some_failed = Summary(requests=100, failures=2, requests_per_s=10, p50_ms=20, p95_ms=50, p99_ms=80, max_ms=90)
    assert verdict(some_failed, thresholds(max_failure_ratio=0.05)) == []
    assert len(verdict(some_failed, thresholds(max_failure_ratio=0.01))) == 1
    nothing = Summary(requests=0, failures=0, requests_per_s=0, p50_ms=None, p95_ms=None, p99_ms=None, max_ms=None)
    assert verdict(nothing, thresholds()) == ["no request completed"]


def test_percentile_is_locusts():
    histogram = {10.0: 90, 100.0: 9, 1000.0: 1}  # 100 requests
    assert percentile(histogram, 0.5) == 10.0
    assert percentile(histogram, 0.95) == 100.0
    assert percentile(histogram, 0.98) == 100.0
    assert percentile(histogram, 0.99) == 1000.0  # locust counts the slowest 1% as the 99th percentile
    assert percentile({}, 0.5) is None


def test_parse_duration():
    assert parse_duration("60s") == 60
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2m5s") == 125
    for bad in ("", "0s", "soon", "5 minutes"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_bad_command_line(tmp_path):
    result = loadtest("--host", "http://127.0.0.1:1", "--images", tmp_path, "--output-root", tmp_path)
    assert result.returncode == 2 and "not a folder holding image files" in result.stderr
    result = loadtest("--host", "http://127.0.0.1:1", "--duration", "soon")
    assert result.returncode == 2 and "is not a duration" in result.stderr
    # A run that outlives the inference key would fail part-way: refused before it starts.
    result = loadtest("--host", "http://127.0.0.1:1", "--duration", "2h", "--token=-abc", "--output-root", tmp_path)
    assert result.returncode == 2 and "outlives the inference key" in result.stderr
    assert "--token-expiration-min" in result.stderr and not list(tmp_path.iterdir())
