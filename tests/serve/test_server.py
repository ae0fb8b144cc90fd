"""End to end against the session's real TorchServe (tests/fixtures/served.py): model `digits`.

Requests go over HTTP exactly as users send them (raw body, `curl -T`, multipart), concurrently so
that TorchServe's dynamic batching mixes them, and the answers are compared with the local pipeline
(decode_image -> eval_transform -> the export's runner) on the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from skimage import data as skdata

from export.runners import open_runner
from models import eval_transform
from models.imageio import decode_image
from serve.server import ServerSettings, expires_soon, is_torchserve, render_config, running_command_line, stop
from tests.fixtures.served import encode

MODEL = "digits"


@pytest.fixture(scope="module")
def predict_url(torchserve) -> str:
    return f"{torchserve.inference_url}/predictions/{MODEL}"


@pytest.fixture(scope="module")
def auth(torchserve) -> dict[str, str]:
    return torchserve.headers("inference")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[tuple[Path, str]]:
    """Real digits images as PNG files (2 per class) with their true class names."""
    from imagedata.digits import write_digits_folder

    root = write_digits_folder(tmp_path_factory.mktemp("digits"), limit_per_class=2)
    return [(path, path.parent.name) for path in sorted(root.glob("*/*.png"))]


@pytest.fixture(scope="module")
def local_answers(digits_export, digit_files) -> dict[Path, dict[str, float]]:
    """What the server must answer, computed without it: same decoder, transform and runner."""
    runner = open_runner(digits_export)
    transform = eval_transform(runner.preprocess)
    batch = torch.stack(
        [transform(decode_image(p.read_bytes(), draft_size=runner.preprocess.resize_size)) for p, _ in digit_files]
    )
    probabilities = runner.predict(batch).softmax(dim=1)
    answers = {}
    for (path, _), row in zip(digit_files, probabilities):
        values, indices = row.topk(5)
        answers[path] = {runner.class_names[i]: float(v) for v, i in zip(values.tolist(), indices.tolist())}
    return answers


def worker_pids(torchserve) -> list[int]:
    url = f"{torchserve.management_url}/models/{MODEL}"
    response = requests.get(url, headers=torchserve.headers("management"), timeout=10)
    response.raise_for_status()
    return sorted(w["pid"] for w in response.json()[0]["workers"] if w["status"] == "READY")


def assert_same_answer(server: dict[str, float], local: dict[str, float]) -> None:
    assert list(server) == list(local), (server, local)
    for label, probability in local.items():
        assert server[label] == pytest.approx(probability, abs=1e-4)


def test_raw_body_put_gives_labelled_top_k(predict_url, auth, digit_files, local_answers):
    path, _ = digit_files[0]
    response = requests.put(predict_url, data=path.read_bytes(), headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer) == 5 and all(label in [str(d) for d in range(10)] for label in answer)
    assert list(answer.values()) == sorted(answer.values(), reverse=True)
    assert_same_answer(answer, local_answers[path])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_upload_exactly_as_documented(torchserve, digit_files, local_answers):
    path, _ = digit_files[1]
    token = torchserve.key("inference")
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-H",
            f"Authorization: Bearer {token}",
            "-T",
            str(path),
            f"http://localhost:{torchserve.port}/predictions/{MODEL}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert_same_answer(json.loads(out.stdout), local_answers[path])


def test_multipart_gives_one_answer_per_image_in_order(predict_url, auth, digit_files, local_answers):
    chosen = digit_files[:4]
    files = [(f"image{i}", (path.name, path.read_bytes(), "image/png")) for i, (path, _) in enumerate(chosen)]
    response = requests.post(predict_url, files=files, headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert isinstance(answers, list) and len(answers) == len(chosen)
    for (path, _), answer in zip(chosen, answers):
        assert_same_answer(answer, local_answers[path])


@pytest.mark.parametrize("field", ["b64", "datatype"])
def test_a_form_field_named_like_an_envelope_key_is_an_image_alone_and_under_load(
    predict_url, auth, digit_files, local_answers, field
):
    """`curl -F b64=@cat.jpg`: the same answer alone and among concurrent requests batched with it."""
    path = digit_files[0][0]
    files = [(field, (path.name, path.read_bytes(), "image/png"))]
    alone = requests.post(predict_url, files=files, headers=auth, timeout=30)
    assert alone.status_code == 200, alone.text
    assert_same_answer(alone.json(), local_answers[path])
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: requests.post(predict_url, files=files, headers=auth, timeout=60), range(16)))
    assert [r.status_code for r in loaded] == [200] * 16, [r.text[:200] for r in loaded if r.status_code != 200]
    assert all(r.json() == alone.json() for r in loaded)


def test_concurrent_requests_under_dynamic_batching_match_the_local_runner(
    predict_url, auth, digit_files, local_answers
):
    def send(path: Path) -> dict[str, float]:
        response = requests.post(predict_url, data=path.read_bytes(), headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, [p for p, _ in digit_files] * 2))
    paths = [p for p, _ in digit_files] * 2
    for path, answer in zip(paths, answers):
        assert_same_answer(answer, local_answers[path])
    correct = sum(next(iter(a)) == label for a, (_, label) in zip(answers, digit_files * 2))
    assert correct / len(answers) >= 0.8  # the trained digits model really classifies


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty", "empty image: 0 bytes"),
        ("random_bytes", "not a supported image"),
        ("text", "not a supported image"),
        ("truncated_jpeg", "truncated or corrupt JPEG image"),
        ("png_huge_dimensions", "decompression bomb"),
        ("png_extreme_aspect", "refused for its extreme aspect ratio"),
        ("tiff", "not a supported image"),
    ],
)
def test_bad_inputs_get_400_with_a_message(predict_url, auth, invalid_images, name, message):
    response = requests.put(predict_url, data=invalid_images[name], headers=auth, timeout=30)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400 and message in body["message"]


@pytest.mark.parametrize(
    "name",
    [
        "png_1x1",
        "jpeg_gray",
        "png_gray16",
        "png_rgba",
        "jpeg_cmyk",
        "gif_palette",
        "gif_animated",
        "webp",
        "bmp",
        "jpeg_exif_rotated",
    ],
)
def test_odd_valid_images_get_200(predict_url, auth, valid_images, name):
    response = requests.put(predict_url, data=valid_images[name], headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 5


def test_mixed_good_and_bad_requests_each_get_their_own_answer(
    torchserve, predict_url, auth, digit_files, local_answers, invalid_images
):
    pids_before = worker_pids(torchserve)
    bad = [invalid_images[n] for n in ("random_bytes", "truncated_jpeg", "empty", "png_huge_dimensions")]
    good = [p for p, _ in digit_files[:12]]
    bodies = [(p.read_bytes(), p) for p in good[:6]] + [(b, None) for b in bad]
    bodies += [(p.read_bytes(), p) for p in good[6:]]

    def send(item):
        body, path = item
        return path, requests.put(predict_url, data=body, headers=auth, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(send, bodies))
    for path, response in results:
        if path is None:
            assert response.status_code == 400 and response.json()["type"] == "InvalidImage"
        else:
            assert response.status_code == 200, response.text
            assert_same_answer(response.json(), local_answers[path])
    # the worker survived every bad input: same processes, still answering correctly
    assert worker_pids(torchserve) == pids_before
    path = digit_files[-1][0]
    response = requests.put(predict_url, data=path.read_bytes(), headers=auth, timeout=30)
    assert_same_answer(response.json(), local_answers[path])


def test_photo_sized_requests_fit_and_oversized_ones_get_413(predict_url, auth):
    # 12 megapixels of noise: a 9 MB JPEG, above TorchServe's default 6.5 MB request limit, below ours (20 MiB)
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    photo = encode(Image.fromarray(noise), "JPEG", quality=85)
    assert 9_000_000 < len(photo) < 20 * 1024 * 1024
    response = requests.put(predict_url, data=photo, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    response = requests.put(predict_url, data=bytes(20 * 1024 * 1024 + 1), headers=auth, timeout=60)
    assert response.status_code == 413


def test_inference_without_the_key_is_refused(predict_url, digit_files):
    response = requests.put(predict_url, data=digit_files[0][0].read_bytes(), timeout=30)
    assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"


def test_management_needs_its_key_and_cannot_register_models(torchserve):
    models = f"{torchserve.management_url}/models"
    assert requests.get(models, timeout=10).status_code == 400  # no key
    response = requests.get(models, headers=torchserve.headers("management"), timeout=10)
    assert response.status_code == 200 and response.json()["models"][0]["modelName"] == MODEL
    register = requests.post(
        models, params={"url": "https://example.com/evil.mar"}, headers=torchserve.headers("management"), timeout=10
    )
    assert register.status_code == 405  # enable_model_api=false: the registration API is off


def test_prometheus_metrics(torchserve):
    response = requests.get(torchserve.metrics_url, timeout=10)
    assert response.status_code == 200
    assert "# TYPE" in response.text and "Requests2XX" in response.text


def config_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_config_binds_everything_to_loopback_by_default(tmp_path):
    props = config_properties(render_config(ServerSettings(model_store=tmp_path, port=8080), ["digits"]))
    assert props["inference_address"] == "http://127.0.0.1:8080"  # TorchServe's own default; --host opens it
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_address"].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["allowed_urls"] == f"file://{re_escape_for_properties(tmp_path.resolve())}/[^/]+[.]mar"
    assert props["metrics_mode"] == "prometheus" and int(props["max_request_size"]) == 20 * 1024 * 1024
    assert props["load_models"] == "digits=digits.mar"
    assert props["vmargs"].split() == ["-Xmx1g", "-XX:MaxDirectMemorySize=256m", "-XX:+ExitOnOutOfMemoryError"]
    props = config_properties(render_config(ServerSettings(model_store=tmp_path, host="0.0.0.0", port=80), ["x"]))
    assert props["inference_address"] == "http://0.0.0.0:80"


def re_escape_for_properties(path: Path) -> str:
    import re

    return re.escape(str(path)).replace("\\", "\\\\")


def test_allowed_urls_match_only_archives_of_a_store_whose_path_has_regex_characters(tmp_path):
    """The allowed_urls regex as Java's String.matches reads it (Python's re agrees on these escapes):
    a store path with '(', '[', '.', ',' or '+' is taken literally."""
    import re

    store = tmp_path / "my store (v1.2)[x],a+b"
    props = config_properties(render_config(ServerSettings(model_store=store), ["digits"]))
    pattern = props["allowed_urls"].replace("\\\\", "\\")  # undo the .properties escaping
    assert "," not in pattern  # TorchServe splits allowed_urls at commas
    assert re.fullmatch(pattern, f"file://{store.resolve()}/digits.mar")
    assert not re.fullmatch(pattern, f"file://{store.resolve()}/sub/digits.mar")
    assert not re.fullmatch(pattern, f"file://{str(store.resolve()).replace('.', 'X')}/digits.mar")
    assert not re.fullmatch(pattern, "https://example.com/evil.mar")


def test_log_config_rolls_every_file_by_size_and_uses_the_console_only_in_the_foreground():
    from serve.server import render_log_config

    background = render_log_config(ServerSettings(log_to_console=False))
    foreground = render_log_config(ServerSettings(log_to_console=True))
    assert '<AppenderRef ref="STDOUT"/>' not in background and '<AppenderRef ref="STDOUT"/>' in foreground
    assert background.count("<RollingFile") == 5 and background.count("SizeBasedTriggeringPolicy") == 5
    assert "TimeBasedTriggeringPolicy" not in background and "${env:LOG_LOCATION:-logs}" in background


def test_no_token_auth_is_refused_on_a_network_address_unless_explicitly_allowed(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "digits.mar").write_bytes(b"never loaded: the exposure check comes first")
    base = ["start", "--run-dir", str(tmp_path / "run"), "--model-store", str(tmp_path / "store"), "--no-token-auth"]
    result = run_serve(*base, "--host", "0.0.0.0")
    assert result.returncode == 1
    assert "--no-token-auth with --host 0.0.0.0" in result.stderr and "--allow-no-auth-on-network" in result.stderr
    from serve.server import ServerError, check_exposure

    check_exposure(ServerSettings(host="0.0.0.0", token_auth=False, allow_no_auth_on_network=True))
    check_exposure(ServerSettings(host="127.0.0.1", token_auth=False))
    check_exposure(ServerSettings(host="0.0.0.0", token_auth=True))
    with pytest.raises(ServerError):
        check_exposure(ServerSettings(host="10.0.0.5", token_auth=False))


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve", *args], capture_output=True, text=True, timeout=120)


def test_status_and_token_commands(torchserve):
    result = run_serve("status", "--run-dir", torchserve.run_dir, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"][MODEL]["ready"] == 1
    result = run_serve("token", "--run-dir", torchserve.run_dir)
    assert result.returncode == 0 and result.stdout.strip() == torchserve.key("inference")


def test_start_refuses_a_second_server_in_the_same_run_dir(torchserve):
    result = run_serve("start", "--run-dir", torchserve.run_dir, "--model-store", str(Path(torchserve.run_dir)))
    assert result.returncode == 1
    assert "already running" in result.stderr and str(torchserve.pid) in result.stderr


def test_status_and_start_without_a_server_or_archives(tmp_path):
    result = run_serve("status", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 3 and "no TorchServe running" in result.stdout
    result = run_serve("start", "--run-dir", str(tmp_path / "run"), "--model-store", str(tmp_path / "missing"))
    assert result.returncode == 1 and "model store" in result.stderr and "python -m serve package" in result.stderr
    (tmp_path / "store").mkdir()
    store, run = str(tmp_path / "store"), str(tmp_path / "run")
    result = run_serve("start", "--run-dir", run, "--model-store", store, "--models", "nope")
    assert result.returncode == 1 and "nope.mar not found" in result.stderr


def test_start_refuses_a_busy_port(torchserve, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "digits.mar").write_bytes(b"never loaded: the port check comes first")
    result = run_serve(
        "start",
        "--run-dir",
        str(tmp_path / "run"),
        "--model-store",
        str(tmp_path / "store"),
        "--host",
        "127.0.0.1",
        "--port",
        str(torchserve.port),
    )
    assert result.returncode == 1
    assert f"inference port 127.0.0.1:{torchserve.port} is not free" in result.stderr


def start_foreground(digits_export, tmp_path) -> tuple[subprocess.Popen, list[str]]:
    """`serve start --foreground` on the digits export, returned once it says it runs; its output (TorchServe's
    log and our messages) keeps being collected into the returned list."""
    from serve.package import package
    from serve.server import free_ports
    from tests.fixtures.served import SERVED_PACKAGE_OPTIONS

    package(digits_export, tmp_path / "store", name="digits", options=SERVED_PACKAGE_OPTIONS)
    ports = free_ports(5)
    command = [
        sys.executable,
        "-m",
        "serve",
        "start",
        "--foreground",
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(tmp_path / "run"),
        "--host",
        "127.0.0.1",
        "--port",
        str(ports[0]),
        "--management-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--grpc-ports",
        str(ports[3]),
        str(ports[4]),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "running in the foreground" in line:
                break
        # Keep draining TorchServe's log (a full pipe would block it), and keep what comes for the asserts.
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
        assert "model digits is loaded and answering" in "".join(lines), "".join(lines)
    except BaseException:
        process.kill()
        stop(tmp_path / "run")
        raise
    return process, lines


def test_foreground_server_stops_cleanly_on_sigterm(digits_export, tmp_path):
    """What the container runs: `serve start --foreground`, TorchServe's log on stdout, `docker stop` = SIGTERM."""
    from serve.server import read_state

    process, _ = start_foreground(digits_export, tmp_path)
    try:
        info = read_state(tmp_path / "run")
        assert info is not None
        assert (
            requests.put(
                f"{info.inference_url}/predictions/digits", data=digits_png(), headers=info.headers(), timeout=30
            ).status_code
            == 200
        )
        old_key = info.key("inference")
        info.renew("inference")  # what `python -m serve token` does once the key has expired
        assert info.key("inference") != old_key
        body = digits_png()
        url = f"{info.inference_url}/predictions/digits"
        stale = {"Authorization": f"Bearer {old_key}"}
        assert requests.put(url, data=body, headers=stale, timeout=30).status_code == 400
        assert requests.put(url, data=body, headers=info.headers(), timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert read_state(tmp_path / "run") is None and not is_torchserve(info.pid)
    finally:
        if process.poll() is None:
            process.kill()
        stop(tmp_path / "run")


def test_foreground_mode_notices_a_dead_frontend(digits_export, tmp_path):
    """The Java frontend killed (kill -9, or its exit on OutOfMemoryError): the foreground process exits 1 at
    once with a message saying so (a container restarts), and takes the workers the frontend left with it."""
    from serve.server import read_state, worker_processes

    process, lines = start_foreground(digits_export, tmp_path)
    try:
        info = read_state(tmp_path / "run")
        assert info is not None and worker_processes(tmp_path / "run")
        killed = time.monotonic()
        os.kill(info.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        assert time.monotonic() - killed < 30  # polled every 0.5 s; the rest is stopping the workers
        time.sleep(0.5)  # the drain thread's last lines
        output = "".join(lines)
        assert f"TorchServe's frontend (pid {info.pid}) exited by itself" in output, output[-2000:]
        assert "--frontend-heap" in output
        assert worker_processes(tmp_path / "run") == []
    finally:
        if process.poll() is None:
            process.kill()
        stop(tmp_path / "run")


def digits_png() -> bytes:
    return encode(Image.new("RGB", (32, 32), (255, 255, 255)), "PNG")


def test_key_expiry_is_read_from_javas_instant_format():
    assert expires_soon("2000-01-01T00:00:00.123456789Z")
    assert not expires_soon("2999-01-01T00:00:00Z")
    soon = time.time() + 30  # inside the one-minute margin
    assert expires_soon(time.strftime("%Y-%m-%dT%H:%M:%S.000001Z", time.gmtime(soon)))


def test_no_token_auth_serves_the_plain_curl_line(digits_export, tmp_path):
    """`serve start --no-token-auth`: `curl -T cat.jpg localhost:PORT/predictions/NAME` exactly as users type it."""
    from serve.package import package
    from serve.server import free_ports
    from tests.fixtures.served import SERVED_PACKAGE_OPTIONS

    package(digits_export, tmp_path / "store", name="digits", options=SERVED_PACKAGE_OPTIONS)
    ports = free_ports(5)
    run_dir = tmp_path / "run"
    start_cmd = [
        sys.executable,
        "-m",
        "serve",
        "start",
        "--no-token-auth",
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(run_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(ports[0]),
        "--management-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--grpc-ports",
        str(ports[3]),
        str(ports[4]),
    ]
    try:
        started = subprocess.run(start_cmd, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "NO token authorization" in started.stdout
        assert f"curl -T cat.jpg http://localhost:{ports[0]}/predictions/digits" in started.stdout
        (tmp_path / "cat.jpg").write_bytes(encode(Image.fromarray(skdata.chelsea()), "JPEG"))
        curl = subprocess.run(
            ["curl", "-sS", "-T", "cat.jpg", f"localhost:{ports[0]}/predictions/digits"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        answer = json.loads(curl.stdout)
        assert len(answer) == 5 and set(answer) <= {str(i) for i in range(10)}, curl.stdout
        assert list(answer.values()) == sorted(answer.values(), reverse=True)
        models = requests.get(f"http://127.0.0.1:{ports[1]}/models", timeout=10)
        assert models.status_code == 200 and models.json()["models"][0]["modelName"] == "digits"
        token = subprocess.run(
            [sys.executable, "-m", "serve", "token", "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert token.returncode == 1 and "without token authorization" in token.stderr
        status = subprocess.run(
            [sys.executable, "-m", "serve", "status", "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        stop(run_dir)


def test_status_tells_a_restarting_worker_from_a_starting_one(tmp_path):
    """TorchServe lists every worker that is not ready as "UNLOADING": `serve status` says RESTARTING when that
    worker's process is gone (killed or crashed: a replacement is on its way) and "starting" when it lives."""
    from serve.__main__ import describe_workers
    from serve.server import worker_report

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        report = worker_report(
            [
                {"pid": os.getpid(), "status": "READY"},
                {"pid": gone.pid, "status": "UNLOADING"},
                {"pid": alive.pid, "status": "UNLOADING"},
            ]
        )
    finally:
        alive.kill()
        alive.wait()
    assert report == {
        "workers": 3,
        "ready": 1,
        "pids": sorted([os.getpid(), gone.pid, alive.pid]),
        "restarting": [gone.pid],
        "starting": 1,
    }
    text = describe_workers(report, tmp_path)
    assert text.startswith("1/3 workers ready") and f"RESTARTING: worker pid(s) [{gone.pid}] died" in text
    assert "1 starting" in text and str(tmp_path / "logs" / "model_log.log") in text
    ready = worker_report([{"pid": os.getpid(), "status": "READY"}])
    assert describe_workers(ready, tmp_path) == f"1/1 workers ready (pids [{os.getpid()}])"


def test_a_process_just_started_shows_its_command_line():
    """Right after Popen returns, the kernel may not have recorded the new command line yet (it reads empty
    for a moment): `running_command_line`, behind is_torchserve and is_triton (`serve status`, `serve stop`,
    Triton's start), waits that moment out; a process gone reads as []."""
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    for _ in range(100):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert running_command_line(process.pid) == command
        finally:
            process.kill()
            process.wait()
    assert running_command_line(process.pid) == []
