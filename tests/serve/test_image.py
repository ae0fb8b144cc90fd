"""The serving image on a real Docker engine: built by `make image`'s script (reusing the cached base and
layers), run as users run it, answering `curl -T` with the key from `docker exec ... python -m serve token`.

Skipped where no Docker engine answers; CI starts one (`./install.sh --docker` in .ci/run). Every test shares
one built image and one read-only container serving the digits store mounted at run time; the last test
stops it with `docker stop` under load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from classify.classifier import Classifier
from serve.kubernetes import IMAGE_NAME, default_image
from serve.package import package
from serve.server import free_ports, probe_image
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS, chelsea, encode

ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits"
STOP_GRACE_S = 10  # docker stop's default: SIGTERM, then SIGKILL after this long
pytestmark = pytest.mark.timeout(3600)  # the first test builds the image: minutes when its layers are cold


def docker_engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command (./install.sh --docker installs Debian's docker.io)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return (
            f"no Docker engine answers `docker info` ({info.stderr.strip()[-200:]}); ./install.sh --docker starts one"
        )
    return None


if (problem := docker_engine_problem()) is not None:
    pytest.skip(problem, allow_module_level=True)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def build(env: dict[str, str]) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "image.sh")],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"scripts/image.sh {env}: {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def image() -> str:
    """`make image` without a model store: resnet-deploy:latest and :<version>."""
    build({"MODEL_STORE": ""})
    assert docker("image", "inspect", f"{IMAGE_NAME}:latest").returncode == 0
    assert docker("image", "inspect", default_image()).returncode == 0
    return f"{IMAGE_NAME}:latest"


# A batch waits up to 1 s to fill, so requests are in flight whenever `docker stop` comes: the stop test
# fails if SIGTERM cuts them off (TorchServe's own shutdown resets every open connection).
SLOW_BATCHES = dataclasses.replace(SERVED_PACKAGE_OPTIONS, max_batch_delay_ms=1000)


@pytest.fixture(scope="module")
def store(digits_export, tmp_path_factory) -> Path:
    """The digits model store, readable by the image's user (uid 10001), to mount at run time."""
    store = package(digits_export, tmp_path_factory.mktemp("store"), name=MODEL, options=SLOW_BATCHES).parent
    store.chmod(0o755)
    for archive in store.iterdir():
        archive.chmod(0o644)
    return store


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "cat.jpg"
    path.write_bytes(encode(chelsea(), "JPEG", quality=92))
    return path


class Container:
    def __init__(self, name: str, port: int):
        self.name, self.port = name, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/{MODEL}"

    def token(self) -> str:
        return docker("exec", self.name, "python", "-m", "serve", "token").stdout.strip()

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()


@contextmanager
def running(image: str, *options: str):
    """`docker run -d --read-only --tmpfs /tmp:exec -p PORT:8080 ... IMAGE`, until its model answers a real image
    with a 200 (the key from `docker exec`); removed afterwards."""
    (port,) = free_ports(1)
    container = Container(f"resnet-deploy-test-{uuid.uuid4().hex[:8]}", port)
    started = time.monotonic()
    docker("run", "-d", "--name", container.name, "--read-only", "--tmpfs", "/tmp:exec", "-p", f"127.0.0.1:{port}:8080",
           *options, image)  # fmt: skip
    try:
        deadline = started + 300
        while True:
            assert container.inspect("{{.State.Running}}") == "true", docker("logs", container.name).stderr[-3000:]
            key = docker("exec", container.name, "python", "-m", "serve", "token", check=False).stdout.strip()
            if key:
                try:
                    headers = {"Authorization": f"Bearer {key}"}
                    if requests.put(container.url, data=probe_image(), headers=headers, timeout=10).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
            assert time.monotonic() < deadline, docker("logs", container.name).stdout[-3000:]
            time.sleep(0.5)
        print(f"{container.name}: docker run to the model answering: {time.monotonic() - started:.1f} s")
        yield container
    finally:
        docker("rm", "-f", container.name, check=False)


@pytest.fixture(scope="module")
def served(image, store):
    """One read-only container serving the digits store mounted read-only at run time."""
    with running(image, "-v", f"{store}:/model-store:ro") as container:
        yield container


def curl_top1(container: Container, jpeg: Path) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {container.token()}", "-T", str(jpeg),
         container.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return next(iter(json.loads(out.stdout)))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_the_key_from_docker_exec_matches_the_local_classifier(served, digits_export, jpeg):
    ((local_top1, _), *_) = Classifier.from_export(digits_export).classify([jpeg.read_bytes()])[0]
    assert curl_top1(served, jpeg) == local_top1


def test_without_the_key_inference_is_refused(served, jpeg):
    response = requests.put(served.url, data=jpeg.read_bytes(), timeout=30)
    assert 400 <= response.status_code < 500 and response.json()["type"] == "InvalidKeyException"


def test_runs_read_only_as_a_non_root_user_with_only_8080_published(served):
    assert served.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert docker("exec", served.name, "id", "-u").stdout.strip() not in ("", "0")
    assert docker("exec", served.name, "touch", "/opt/venv/x", check=False).returncode != 0
    # Management and metrics answer on the container's loopback only.
    assert json.loads(served.inspect("{{json .Config.ExposedPorts}}")) == {"8080/tcp": {}}
    listening = docker("exec", served.name, "python", "-c", LISTENERS).stdout.split()
    assert "0.0.0.0:8080" in listening and {"127.0.0.1:8081", "127.0.0.1:8082"} <= set(listening), listening


LISTENERS = "import psutil; print(*sorted({f'{c.laddr.ip}:{c.laddr.port}' for c in psutil.net_connections('tcp') if c.status == 'LISTEN'}))"


def test_health_check_turns_healthy_once_the_model_answers(served):
    deadline = time.monotonic() + 60
    while (health := served.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, served.inspect("{{json .State.Health}}")
        time.sleep(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_store_baked_in_at_build_time_serves_beside_the_first_container(served, store, jpeg):
    """`make image MODEL_STORE=...`, run on other ports while the first container serves."""
    baked = ROOT / ".image" / "test-model-store"
    shutil.rmtree(baked, ignore_errors=True)
    shutil.copytree(store, baked)
    try:
        build({"MODEL_STORE": str(baked), "IMAGE": "resnet-deploy-test"})
    finally:
        shutil.rmtree(baked)
    try:
        with running("resnet-deploy-test:latest") as second:
            assert curl_top1(second, jpeg) == curl_top1(served, jpeg)
    finally:
        tags = ["resnet-deploy-test:latest", f"resnet-deploy-test:{default_image().split(':')[1]}"]
        docker("image", "rm", *tags, check=False)


def test_docker_stop_answers_accepted_requests_and_exits_0_within_the_grace_period(served, jpeg):
    """Clients hammer the container while `docker stop` sends SIGTERM: every request sent before it is answered
    with a 200; those sent after may be refused or reset, and the container exits 0 before docker's SIGKILL."""
    headers, body = {"Authorization": f"Bearer {served.token()}"}, jpeg.read_bytes()
    outcomes: list[tuple[float, str]] = []  # (when sent, status code or what went wrong)
    stopping = threading.Event()

    def client():
        while True:
            sent = time.monotonic()
            try:
                response = requests.put(served.url, data=body, headers=headers, timeout=(5, 60))
                outcomes.append((sent, str(response.status_code)))
            except requests.ConnectionError as e:
                outcomes.append((sent, f"{type(e).__name__}: {e}"))
                if stopping.is_set():
                    return

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(2)
    stopping.set()
    sigterm = time.monotonic()
    docker("stop", served.name, timeout=STOP_GRACE_S + 30)
    stop_s = time.monotonic() - sigterm
    for thread in clients:
        thread.join(timeout=60)
    before = [outcome for sent, outcome in outcomes if sent < sigterm]
    print(f"docker stop took {stop_s:.1f} s; {len(before)} requests sent before SIGTERM, {len(outcomes)} in all")
    assert served.inspect("{{.State.ExitCode}}") == "0", docker("logs", served.name).stdout[-3000:]
    assert stop_s < STOP_GRACE_S
    assert before and set(before) == {"200"}, [o for o in before if o != "200"][:5]
