"""`python -m client openloop`: the Poisson schedule, latency from the scheduled time (no coordinated
omission) against a deliberately slow HTTP server in this process, the latency-bounded rate, and a
short real run against the session's TorchServe."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading

import pytest

from client.openloop import OpenLoop, arrival_times, max_rate_under_bound, quantile


def test_poisson_schedule_is_seeded_with_mean_gap_one_over_rate():
    rate = 50.0
    times = arrival_times(rate, duration_s=2000, seed=7)
    assert times == arrival_times(rate, duration_s=2000, seed=7)  # reproducible
    assert times != arrival_times(rate, duration_s=2000, seed=8)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    assert len(gaps) == pytest.approx(rate * 2000, rel=0.02)  # ~100,000 draws
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.01)
    # exponential gaps: standard deviation equals the mean (an even spacing would have none)
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.03)
    assert all(0 < t < 2000 for t in times) and times == sorted(times)
    # one schedule scaled: the same seed at twice the rate sends at half the times
    assert arrival_times(2 * rate, 10, seed=7) == pytest.approx([t / 2 for t in arrival_times(rate, 20, seed=7)])


def test_uniform_schedule_and_bad_rates():
    assert arrival_times(4, 1.0, arrival="uniform") == pytest.approx([0.25, 0.5, 0.75])
    for rate in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of requests per second"):
            arrival_times(rate, 1.0)
    with pytest.raises(ValueError, match="unknown arrival process 'bursty'"):
        arrival_times(1, 1.0, arrival="bursty")


def test_quantile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (quantile(values, 0.5), quantile(values, 0.99), quantile(values, 1.0)) == (50, 99, 100)
    assert quantile([], 0.5) is None


def test_max_rate_under_bound_is_the_last_rate_before_the_first_miss():
    def point(rate, p99, errors=0):
        return {"offered_rps": rate, "p99_ms": p99, "error_count": errors}

    ladder = [point(40, 90), point(10, 20), point(20, 30), point(30, 60), point(50, 40)]
    assert max_rate_under_bound(ladder, 100) == 50
    # 40 req/s misses 80 ms: the lucky 50 req/s above it does not count
    assert max_rate_under_bound(ladder, 80) == 30
    assert max_rate_under_bound(ladder, 10) is None
    # a rate with failed requests misses the bound whatever its p99, and so does one with no answers
    assert max_rate_under_bound([point(10, 20), point(20, 30, errors=1)], 100) == 10
    assert max_rate_under_bound([point(10, None)], 100) is None


class SlowServer:
    """A real HTTP/1.1 server on 127.0.0.1 that answers one request at a time, each after `service_s`,
    with keep-alive: a server of known capacity (1 / service_s requests per second)."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.busy = asyncio.Lock()
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self.handle, sock=self.sock), self.loop).result()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"tabby": 0.9, "tiger_cat": 0.1}'
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:"))
                await reader.readexactly(int(length.split(b":")[1]))
                async with self.busy:
                    await asyncio.sleep(self.service_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):  # the client closed its connection
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def slow_server():
    server = SlowServer(service_s=0.02)
    yield server
    server.close()


def test_latency_runs_from_the_scheduled_time_when_the_server_falls_behind(slow_server):
    # 100 requests at 200/s on one connection to a server that does 50/s: sent one after another as
    # answers come, they finish ~2 s after the start. A closed-loop clock (from the actual send)
    # would see ~20 ms each; from the schedule the last waited ~1.5 s.
    generator = OpenLoop(f"http://127.0.0.1:{slow_server.port}", "m", [b"x" * 1000], connections=1, timeout_s=10)
    result = generator.run(200, duration_s=0.5, arrival="uniform")
    assert result.scheduled == 99 and result.answered == 99 and not result.errors
    assert result.throughput_rps == pytest.approx(50, rel=0.2)
    assert result.late_no_connection >= 90  # every connection (one) was busy at their send times
    assert result.p50_ms > 500 and result.max_ms == pytest.approx(1000 * (99 * 0.02 - 0.495), rel=0.2)
    assert result.send_lag_max_ms > 1000 and result.connections_opened == 1
    assert result.generator_cpu_s > 0


def test_enough_connections_keep_up_with_the_schedule(slow_server):
    # Under capacity (25/s against 50/s), a request rarely waits: latency is about the service time.
    generator = OpenLoop(f"127.0.0.1:{slow_server.port}", "m", [b"x"], connections=8, timeout_s=10)
    result = generator.run(25, duration_s=1.0, seed=3)
    assert result.answered == result.scheduled > 10 and result.late_no_connection == 0
    assert 15 < result.p50_ms < 200 and result.send_lag_p99_ms < 50


def test_bad_command_lines_and_an_unreachable_server(run_client, tmp_path):
    status, _, err = run_client("openloop", "--host", "http://127.0.0.1:1", "--rate", "0")
    assert status == 2 and "--rate: must be a positive number, got 0" in err
    status, _, err = run_client("openloop", "--host", "http://127.0.0.1:1", "--rate", "5", "--images", tmp_path)
    assert status == 2 and "not a folder holding image files" in err
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    images = tmp_path / "images"
    images.mkdir()
    (images / "one.jpg").write_bytes(b"not really a jpeg")
    status, _, err = run_client(
        "openloop", "--host", f"http://127.0.0.1:{port}", "--rate", "5", "--images", images, "--output-root", tmp_path
    )
    assert status == 3 and "connection refused" in err and "Is TorchServe running?" in err
    assert [p.name for p in tmp_path.iterdir()] == ["images"]  # refused before making a run folder


def test_short_real_run_against_torchserve(torchserve_url, digit_images, run_client, tmp_path):
    status, out, err = run_client(
        "openloop",
        "--host",
        torchserve_url,
        "--model",
        "digits",
        "--rate",
        "10",
        "30",
        "--duration",
        "2s",
        "--images",
        digit_images,
        "--p99-bound-ms",
        "60000",
        "--output-root",
        tmp_path,
    )
    assert status == 0, out + err
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["passed"] and summary["latency_from"] == "scheduled send time"
    assert [r["offered_rps"] for r in summary["rates"]] == [10, 30]
    for rate in summary["rates"]:
        assert rate["scheduled"] > 0 and rate["answered"] == rate["scheduled"] and rate["errors"] == {}
        assert 0 < rate["p50_ms"] <= rate["p90_ms"] <= rate["p99_ms"] <= rate["max_ms"]
        assert rate["generator_cpu_s"] > 0 and rate["connections_opened"] >= 1
    assert summary["max_rate_under_p99_bound"] == 30
    assert "highest rate with p99 <= 60000 ms: 30 req/s" in out and "PASSED" in out
    assert summary["model"] == "digits" and summary["arrival"] == "poisson"
