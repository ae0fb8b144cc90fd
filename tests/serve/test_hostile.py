"""Hostile traffic and faults against a real TorchServe serving a 224-px model (random-init resnet18,
exported to ONNX), so that memory and time effects show: each hostile request gets its status code
quickly, the worker survives it (same pids), and a normal request right after gets its usual answer.
Then a short soak (`python -m client soak`), a worker killed with -9 under load, and a frontend killed
with -9 (`serve status` must say so).

The time bounds are generous (a shared 2-core machine); what they catch is the old behaviour, a request
that ran into the response timeout and killed the worker.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image
from urllib3 import encode_multipart_formdata

from client.soak import hostile_cases, photo, same_answer
from serve.package import PackageOptions, package
from serve.server import ServerInfo, ServerSettings, free_ports, start, status, stop
from tests.fixtures.exported import run_export

MODEL = "resnet18"
QUICK_S = 5.0  # a refusal from the headers (was: the response timeout, then "Worker died")
RECOVERY_S = 120.0  # a killed worker replaced and answering again


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory) -> Path:
    from benchmarks.artifacts import random_checkpoint

    work = tmp_path_factory.mktemp("resnet18")
    checkpoint = random_checkpoint("resnet18", work)
    out = work / "export"
    process = run_export(
        "--to",
        "onnx",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--parity-samples",
        "8",
        "--parity-batch",
        "4",
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return out


@pytest.fixture(scope="module")
def server(resnet_export, tmp_path_factory) -> ServerInfo:
    store = tmp_path_factory.mktemp("store")
    package(
        resnet_export,
        store,
        name=MODEL,
        options=PackageOptions(workers=1, batch_size=4, max_batch_delay_ms=20, response_timeout_s=60),
    )
    run_dir = tmp_path_factory.mktemp("ts")
    port, management, metrics, grpc_inference, grpc_management = free_ports(5)
    settings = ServerSettings(
        model_store=store,
        models=[MODEL],
        run_dir=run_dir,
        port=port,
        management_port=management,
        metrics_port=metrics,
        grpc_inference_port=grpc_inference,
        grpc_management_port=grpc_management,
        startup_timeout_s=240,
    )
    try:
        yield start(settings, log=lambda message: None)
    finally:
        stop(run_dir)


def post(server: ServerInfo, body: bytes, content_type: str = "application/octet-stream", timeout: float = 90):
    headers = {"Content-Type": content_type, **server.headers("inference")}
    return requests.post(f"{server.inference_url}/predictions/{MODEL}", data=body, headers=headers, timeout=timeout)


def worker_pids(server: ServerInfo) -> list[int]:
    return status(Path(server.run_dir))["models"][MODEL]["pids"]


@pytest.fixture(scope="module")
def normal(server):
    """A normal photo and the server's answer to it before any hostile request."""
    body = photo(7)
    response = post(server, body)
    assert response.status_code == 200, response.text
    return body, list(response.json().items())


def assert_still_serving(server, normal, pids):
    body, expected = normal
    response = post(server, body)
    assert response.status_code == 200, response.text
    assert same_answer(expected, list(response.json().items()))
    assert worker_pids(server) == pids, "a worker was restarted"


def lossless_webp(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def flood(parts: int) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 200, 30)).save(buffer, "PNG")
    return encode_multipart_formdata({f"img{i}": (f"{i}.png", buffer.getvalue(), "image/png") for i in range(parts)})


HOSTILE = {case.name: case for case in hostile_cases()}
EXTRA = {
    "flood_3000": lambda: (*flood(3000), (413,), "TooManyImages"),
    "webp_7999": lambda: (lossless_webp(7999), "application/octet-stream", (400,), "InvalidImage"),
    "many_pixels": lambda: (
        *encode_multipart_formdata({f"p{i}": (f"{i}.png", HOSTILE["png_16bit"].body, "image/png") for i in range(4)}),
        (413,),
        "TooManyPixels",
    ),
}


@pytest.mark.parametrize("name", [*HOSTILE, *EXTRA])
def test_hostile_request_is_answered_quickly_and_the_worker_survives(server, normal, name):
    pids = worker_pids(server)
    if name in HOSTILE:
        case = HOSTILE[name]
        body, content_type, expected, kind = case.body, case.content_type, case.expected, None
    else:
        body, content_type, expected, kind = EXTRA[name]()
    started = time.perf_counter()
    response = post(server, body, content_type)
    elapsed = time.perf_counter() - started
    assert response.status_code in expected, response.text[:500]
    if response.status_code != 200:
        error = response.json()
        assert error.get("message") and len(response.text) < 2000
        if kind:
            assert error["type"] == kind
    if name == "flood":
        assert "limit of 32" in response.json()["message"]
    assert elapsed < (30 if name == "png_16bit" else QUICK_S), f"{name}: {elapsed:.1f} s"
    assert_still_serving(server, normal, pids)


def progressive_bomb() -> bytes:
    """A 7999x7999 progressive JPEG of 376 KB: inside the pixel and size limits, seconds to decode even
    at 1/8 scale (libjpeg reads every coefficient, in several passes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (7999, 7999), (120, 140, 90)).save(buffer, "JPEG", quality=90, progressive=True)
    return buffer.getvalue()


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    return encode_multipart_formdata({f"img{i}": (f"{i}.jpg", data, "image/jpeg") for i, data in enumerate(images)})


def test_valid_traffic_at_any_concurrency_never_runs_a_worker_into_the_timeout(server, normal):
    """Eight 32-photo requests and three progressive-JPEG bomb requests at once, all inside the
    per-request limits: each is answered 200, 413 or 503 (shed with Retry-After before its work
    started) within the response timeout, the worker is never replaced, and a single image sent
    meanwhile is answered (retrying its 503s)."""
    pids = worker_pids(server)
    bomb = progressive_bomb()
    photos = multipart([photo(i) for i in range(32)])
    bombs = [multipart([bomb, bomb]), multipart([bomb, bomb]), multipart([bomb] * 32)]
    timeout_s = 60  # the archive's responseTimeout (PackageOptions in the `server` fixture)

    def timed(body_and_type):
        started = time.monotonic()
        response = post(server, *body_and_type, timeout=timeout_s * 2)
        return response, time.monotonic() - started

    def single_image():
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            response = post(server, normal[0], timeout=timeout_s)
            if response.status_code != 503:
                return response
            time.sleep(min(2.0, float(response.headers.get("Retry-After", 1))))
        return response

    with ThreadPoolExecutor(12) as pool:
        loads = [pool.submit(timed, body) for body in [photos] * 8 + bombs]
        time.sleep(1)
        single = pool.submit(single_image)
        results = [load.result() for load in loads]
        single = single.result()
    statuses = [response.status_code for response, _ in results]
    assert set(statuses) <= {200, 413, 503}, [r.text[:300] for r, _ in results]
    assert all(elapsed < timeout_s for _, elapsed in results), [round(e, 1) for _, e in results]
    assert 200 in statuses[:8] and statuses[-1] == 413  # photos served; 32 bombs could never finish in a call
    shed = [response for response, _ in results if response.status_code == 503]
    assert all(r.headers.get("Retry-After") or "worker" in r.text for r in shed)  # ours, or the full queue's
    assert single.status_code == 200, single.text
    assert_still_serving(server, normal, pids)


def test_short_soak_passes(server, normal, tmp_path):
    report = tmp_path / "soak.json"
    # 25 s is too short for a fresh worker's allocator to reach its plateau (runs of it grew 0-12% after a
    # 10 s warm-up; a 3-minute soak, 0.1%): here the bound only catches a leak, the 10% target is for minutes.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "soak",
            "--run-dir",
            server.run_dir,
            "--duration",
            "25s",
            "--warmup",
            "10s",
            "--threads",
            "3",
            "--max-rss-growth",
            "0.3",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    summary = json.loads(report.read_text())
    assert summary["passed"] and summary["valid_failures"] == [] and summary["worker_restarts"] == 0
    assert sum(summary["requests"].values()) > 20 and any(not n.startswith("valid") for n in summary["requests"])


def serve_status(server) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve", "status", "--run-dir", server.run_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_killed_worker_fails_only_requests_in_flight_and_is_replaced(server, normal):
    """kill -9 of the worker under a running load: the requests in flight fail, the frontend starts a new
    worker, the server answers again within RECOVERY_S, and `serve status` says what is true throughout."""
    [pid] = worker_pids(server)
    body, expected = normal
    results, stop_load = [], threading.Event()

    def load():
        with requests.Session() as session:
            while not stop_load.is_set():
                started = time.monotonic()
                try:
                    r = session.post(
                        f"{server.inference_url}/predictions/{MODEL}",
                        data=body,
                        headers=server.headers("inference"),
                        timeout=90,
                    )
                    results.append((started, time.monotonic(), r.status_code))
                except requests.RequestException:
                    results.append((started, time.monotonic(), 0))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    assert psutil.Process(pid).ppid() == server.pid and "model_service_worker" in " ".join(
        psutil.Process(pid).cmdline()
    )
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    during = serve_status(server)  # the frontend is alive; the model has no ready worker for a moment, or a new one
    assert during.returncode in (0, 1) and "TorchServe running" in during.stdout, during.stdout + during.stderr
    deadline = killed_at + RECOVERY_S
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if pids and pid not in pids and any(s == 200 and t0 > killed_at + 0.5 for t0, _, s in results):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no answer from a new worker within {RECOVERY_S} s: {results[-5:]}")
    recovered_at = time.monotonic()
    time.sleep(2)
    stop_load.set()
    for thread in threads:
        thread.join(timeout=100)
    failed = [(t0, t1, s) for t0, t1, s in results if s != 200]
    # Only requests in flight when the worker died, or queued before its replacement answered, failed.
    assert all(t0 < recovered_at and t1 > killed_at for t0, t1, _ in failed), failed
    assert len(failed) <= len(threads) * 4
    after = serve_status(server)
    assert after.returncode == 0 and "1/1 workers ready" in after.stdout, after.stdout
    [new_pid] = worker_pids(server)
    assert new_pid != pid
    assert_still_serving(server, normal, [new_pid])


def test_status_tells_a_dead_frontend_from_a_stopped_server(server):
    """Last: kill -9 of the Java frontend. `serve status` exits 4 and says it died (not 3, "not running");
    `serve stop` then removes the workers it left behind, and status is "not running"."""
    os.kill(server.pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(server.pid)], timeout=30) if psutil.pid_exists(server.pid) else None
    result = serve_status(server)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "DIED" in result.stdout and f"pid {server.pid}" in result.stdout and "serve stop" in result.stdout
    stopped = subprocess.run(
        [sys.executable, "-m", "serve", "stop", "--run-dir", server.run_dir], capture_output=True, text=True, timeout=90
    )
    assert stopped.returncode == 0
    result = serve_status(server)
    assert result.returncode == 3 and "no TorchServe running" in result.stdout
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(server.run_dir in a for a in (p.info["cmdline"] or []))
        and "model_service_worker" in " ".join(p.info["cmdline"] or [])
    ]
