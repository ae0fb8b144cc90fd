"""End to end against a real Triton (the binary of NVIDIA's PyTriton wheel, installed by ./install.sh) serving
the digits export as model `digits`, started and stopped through `python -m serve` as a user does, with real
HTTP and gRPC requests of the Open Inference Protocol (client/v2.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
import requests
from PIL import Image

from classify.classifier import Classifier
from client.errors import AuthorizationFailed, HTTPError
from client.openloop import OpenLoop
from client.v2 import grpc_predict, http_predict, http_request, parse_http_response
from serve.server import free_ports
from serve.triton_install import TritonMissing, find_triton
from serve.triton_server import SHM_ROOT, read_state, stub_processes
from tests.fixtures.served import encode, png_claiming_size

MAX_IMAGES = 4  # per request, below the batch size of 8, so a flood of rows reaches our own bound


def run_serve(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve", *args], capture_output=True, text=True, timeout=timeout, env=os.environ | env
    )


def start_args(export_dir: Path, run_dir: Path) -> list[str]:
    """`serve start --server triton` of the digits export as model `digits`, on free ports."""
    port, grpc_port, metrics_port = free_ports(3)
    return [
        "start",
        "--server=triton",
        f"--export-dir={export_dir}",
        "--name=digits",
        f"--run-dir={run_dir}",
        f"--port={port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
    ]


@pytest.fixture(scope="module")
def triton(digits_export: Path, tmp_path_factory):
    """`python -m serve start --server triton` on free ports; stopped at the end whatever happened."""
    try:
        find_triton()
    except TritonMissing as e:
        pytest.skip(f"Triton is not installed here: {e}")
    run_dir = tmp_path_factory.mktemp("triton")
    started = run_serve(
        *start_args(digits_export, run_dir),
        "--workers=1",
        "--batch-size=8",
        "--max-batch-delay=50",
        f"--max-images={MAX_IMAGES}",
        "--timeout=240",
    )
    try:
        assert started.returncode == 0, f"serve start failed:\n{started.stdout}\n{started.stderr}"
        info = read_state(run_dir)
        assert info is not None, started.stdout
        yield info
    finally:
        run_serve("stop", f"--run-dir={run_dir}")


@pytest.fixture(scope="module")
def auth(triton) -> dict[str, str]:
    key = run_serve("token", f"--run-dir={triton.run_dir}").stdout.strip()
    assert key == triton.key()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def images(valid_images, invalid_images) -> dict[str, bytes]:
    digit = Image.new("L", (32, 32), 0)
    digit.paste(255, (12, 4, 20, 28))  # a bar: something like a 1
    return {"cat": valid_images["jpeg"], "digit": encode(digit, "PNG"), "corrupt": invalid_images["truncated_jpeg"]}


def test_http_and_grpc_give_the_local_classifier_s_answer(triton, auth, images, digits_export):
    local = Classifier.from_export(digits_export, top_k=5)
    session, channel = requests.Session(), grpc.insecure_channel(triton.grpc_target)
    for name in ("cat", "digit"):
        [expected] = local.classify([images[name]])
        for answer in (
            http_predict(session, triton.inference_url, "digits", images[name], auth),
            grpc_predict(channel, "digits", images[name], triton.key()),
        ):
            assert [label for label, _ in answer] == [label for label, _ in expected], name
            assert [p for _, p in answer] == pytest.approx([p for _, p in expected], abs=1e-4), name


def test_model_metadata_describes_bytes_in_and_names_and_probabilities_out(triton, auth):
    response = requests.get(f"{triton.inference_url}/v2/models/digits", headers=auth, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("CLASS_NAMES", "BYTES", [-1, 5]),
        ("PROBABILITIES", "FP32", [-1, 5]),
    ]


def test_one_corrupt_image_among_8_concurrent_requests_fails_alone(triton, auth, images):
    session = requests.Session()
    batch = [images["digit"]] * 7 + [images["corrupt"]]

    def send(image: bytes):
        try:
            return http_predict(session, triton.inference_url, "digits", image, auth)
        except HTTPError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, batch))
    assert all(isinstance(r, list) and r[0] == results[0][0] for r in results[:7]), results
    error = results[7]
    assert isinstance(error, HTTPError) and error.status == 400, error
    assert "InvalidImage" in str(error), error


def post(triton, auth, rows: list[bytes]) -> requests.Response:
    body, headers = http_request(rows)
    return requests.post(
        f"{triton.inference_url}/v2/models/digits/infer", data=body, headers=headers | auth, timeout=60
    )


def test_a_pixel_bomb_and_a_flood_of_images_are_refused_and_the_server_still_answers(triton, auth, images):
    bomb = post(triton, auth, [png_claiming_size(100_000, 100_000)])
    assert bomb.status_code == 400 and "InvalidImage" in bomb.json()["error"], bomb.text
    assert "pixels" in bomb.json()["error"]
    flood = post(triton, auth, [images["digit"]] * (MAX_IMAGES + 1))
    assert flood.status_code == 400 and "TooManyImages" in flood.json()["error"], flood.text
    within = post(triton, auth, [images["digit"]] * MAX_IMAGES)
    assert within.status_code == 200
    assert len(parse_http_response(within.status_code, within.content)) == MAX_IMAGES


def test_every_api_but_health_needs_the_key(triton, images):
    assert requests.get(f"{triton.inference_url}/v2/health/ready", timeout=10).status_code == 200
    for method, path in [("GET", "/v2/models/digits"), ("POST", "/v2/repository/index"), ("GET", "/v2")]:
        response = requests.request(method, f"{triton.inference_url}{path}", timeout=10)
        assert response.status_code == 403, (path, response.status_code, response.text)
    with pytest.raises(AuthorizationFailed):
        http_predict(requests.Session(), triton.inference_url, "digits", images["digit"], {})
    with pytest.raises(AuthorizationFailed):
        grpc_predict(grpc.insecure_channel(triton.grpc_target), "digits", images["digit"])
    wrong = {"Authorization": "Bearer not-the-key"}
    with pytest.raises(AuthorizationFailed):
        http_predict(requests.Session(), triton.inference_url, "digits", images["digit"], wrong)


def test_prometheus_metrics_and_status(triton):
    metrics = requests.get(triton.metrics_url, timeout=10)
    assert metrics.status_code == 200 and 'nv_inference_request_success{model="digits"' in metrics.text
    status = run_serve("status", f"--run-dir={triton.run_dir}", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["server"] == "triton" and report["models"]["digits"]["ready"] == 1


def test_the_client_command_line_speaks_v2(triton, images, digits_export, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(images["cat"])
    env = dict(os.environ, TORCHSERVE_TOKEN=triton.key())
    args = ["--url", triton.inference_url, "--protocol", "v2", "--model", "digits", "--json", str(tmp_path / "cat.jpg")]
    result = subprocess.run(
        [sys.executable, "-m", "client", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)["results"]
    [expected] = Classifier.from_export(digits_export, top_k=5).classify([images["cat"]])
    assert answer["predictions"][0]["label"] == expected[0][0]


def test_open_loop_and_locust_load_triton_over_v2(triton, images, tmp_path):
    result = OpenLoop(triton.inference_url, "digits", [images["digit"]], token=triton.key(), protocol="v2").run(8, 1.0)
    assert result.errors == {} and result.answered == result.scheduled > 0
    env = dict(os.environ, TORCHSERVE_TOKEN=triton.key())
    args = ["--host", triton.inference_url, "--model", "digits", "--protocol", "v2", "--users", "2"]
    args += ["--duration", "3s", "--output-root", str(tmp_path)]
    locust = subprocess.run(
        [sys.executable, "-m", "client", "loadtest", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert locust.returncode == 0, locust.stdout + locust.stderr


def readme_curl_lines() -> str:
    """The documented v2 curl example (docs/triton.md): from `IMG=cat.jpg` to the curl command's last line."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "triton.md").read_text()
    start = text.index("IMG=cat.jpg")
    return text[start : text.index("/infer", start) + len("/infer")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_line_works_as_written(triton, images, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(images["cat"])
    script = readme_curl_lines().replace("localhost:8000", f"localhost:{triton.port}").replace("/resnet50/", "/digits/")
    script = script.replace("python -m serve token", f"{sys.executable} -m serve token --run-dir {triton.run_dir}")
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout).get("outputs", [])}
    assert outputs, result.stdout
    assert outputs["CLASS_NAMES"]["shape"] == [1, 5] and len(outputs["PROBABILITIES"]["data"]) == 5


def test_the_health_check_asks_triton_over_v2_without_importing_torch(triton):
    """The image's HEALTHCHECK (`serve.probe --run-dir`) on a Triton run directory, as light as for TorchServe."""
    probe = "import runpy, sys; sys.argv = ['probe', '--run-dir', sys.argv[1]]; code = 0\n"
    probe += (
        "try:\n    runpy.run_module('serve.probe', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
    )
    probe += "print(code, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe, triton.run_dir], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0", "False"], result.stdout + result.stderr


def test_a_short_soak_over_v2_passes_with_the_stubs_as_workers(triton, tmp_path):
    """`client soak --protocol v2`: valid and hostile v2 requests, the stubs' pids and memory watched. 20 s
    only catches a leak (the 10% memory target is for minutes; tests/serve/test_hostile.py says why)."""
    report = tmp_path / "soak.json"
    args = ["--run-dir", triton.run_dir, "--protocol", "v2", "--duration", "20s", "--warmup", "8s", "--threads", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "client", "soak", *args, "--max-rss-growth", "0.3", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(report.read_text())
    assert summary["passed"] and summary["worker_restarts"] == 0
    assert summary["worker_pids_start"] == sorted(p.pid for p in stub_processes(triton.shm_prefix))
    hostile = {"flood", "png_bomb", "png_16bit", "junk", "empty", "truncated", "json"}
    assert hostile <= set(summary["requests"]) and summary["requests"]["valid0"] > 0
    wrong = subprocess.run(
        [sys.executable, "-m", "client", "soak", "--run-dir", triton.run_dir, "--duration", "1s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "--protocol v2" in wrong.stderr


def test_stop_leaves_no_process_and_no_shared_memory(triton):
    stubs = stub_processes(triton.shm_prefix)
    assert stubs and list(SHM_ROOT.glob(f"{triton.shm_prefix}*")), "the running server has stubs and regions"
    stopped = run_serve("stop", f"--run-dir={triton.run_dir}")
    assert stopped.returncode == 0 and "Triton" in stopped.stdout and "stopped" in stopped.stdout
    assert not psutil.pid_exists(triton.pid) or psutil.Process(triton.pid).status() == psutil.STATUS_ZOMBIE
    assert not stub_processes(triton.shm_prefix)
    assert not list(SHM_ROOT.glob(f"{triton.shm_prefix}*"))
    assert run_serve("status", f"--run-dir={triton.run_dir}").returncode == 3


def test_a_triton_that_exits_while_loading_is_started_once_more_then_reported(digits_export, tmp_path):
    """Triton exits when a model fails to load at start: here its backend stub cannot import numpy (a broken
    copy of the install). The start is tried once more, then fails saying so, with Triton's exit status,
    and leaves no process or state behind."""
    try:
        install = find_triton()
    except TritonMissing as e:
        pytest.skip(f"Triton is not installed here: {e}")
    home = tmp_path / "triton-home"
    (home / "stub-site" / "numpy").mkdir(parents=True)
    (home / "stub-site" / "numpy" / "__init__.py").write_text("raise ImportError('numpy broken on purpose')\n")
    (home / "wheel").symlink_to(install.wheel)
    run_dir = tmp_path / "run"
    started = run_serve(
        *start_args(digits_export, run_dir),
        "--timeout=240",
        RESNET_DEPLOY_TRITON_HOME=str(home),
    )
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert output.count("Triton exited while starting (exit code") == 2 and "starting Triton once more" in output
    assert read_state(run_dir) is None and not (run_dir / "triton_key").exists()
    assert not [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(run_dir)]  # no server left
