"""The serving image on a real Docker engine: built by `make image`'s script (reusing the cached base and
layers), run as users run it, answering `curl -T` with the key from `docker exec ... python -m serve token`.

Skipped where no Docker engine answers; CI starts one (`./install.sh --docker` in .ci/run). Every test shares
one built image and one read-only container serving the digits store mounted at run time; the last test
stops it with `docker stop` under load. One more container serves the same store with Triton (`--server
triton`) over the Open Inference Protocol.
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
from client.errors import AuthorizationFailed
from client.v2 import http_predict, http_request
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
    def __init__(self, name: str, port: int, protocol: str = "torchserve"):
        self.name, self.port, self.protocol = name, port, protocol

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return (
            f"{self.base_url}/v2/models/{MODEL}/infer"
            if self.protocol == "v2"
            else f"{self.base_url}/predictions/{MODEL}"
        )

    def answers(self, key: str) -> bool:
        """Whether the model answers a real image with a 200, in the container's protocol."""
        headers = {"Authorization": f"Bearer {key}"}
        if self.protocol == "v2":
            body, v2_headers = http_request([probe_image()])
            return requests.post(self.url, data=body, headers=v2_headers | headers, timeout=10).status_code == 200
        return requests.put(self.url, data=probe_image(), headers=headers, timeout=10).status_code == 200

    def token(self) -> str:
        return docker("exec", self.name, "python", "-m", "serve", "token").stdout.strip()

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()


@contextmanager
def running(image: str, *options: str, arguments: tuple[str, ...] = (), protocol: str = "torchserve"):
    """`docker run -d --read-only --tmpfs /tmp:exec -p PORT:8080 ... IMAGE ARGUMENTS`, until its model answers a
    real image with a 200 (the key from `docker exec`); removed afterwards."""
    (port,) = free_ports(1)
    container = Container(f"resnet-deploy-test-{uuid.uuid4().hex[:8]}", port, protocol)
    started = time.monotonic()
    docker("run", "-d", "--name", container.name, "--read-only", "--tmpfs", "/tmp:exec", "-p", f"127.0.0.1:{port}:8080",
           *options, image, *arguments)  # fmt: skip
    try:
        deadline = started + 300
        while True:
            if container.inspect("{{.State.Running}}") != "true":
                logs = docker("logs", container.name)
                raise AssertionError(f"the container exited:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")
            key = docker("exec", container.name, "python", "-m", "serve", "token", check=False).stdout.strip()
            if key:
                try:
                    if container.answers(key):
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
    wait_healthy(served)


def wait_healthy(container: Container, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (health := container.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, container.inspect("{{json .State.Health}}")
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


def test_triton_serves_the_same_store_over_v2_with_the_key_and_stops_cleanly(image, store, digits_export, jpeg):
    """`docker run ... IMAGE --server triton`: the store mounted as for TorchServe, each archive served with its
    own options over v2 on 8080, read-only as uid 10001; healthy by the same check; `docker stop` exits 0."""
    with running(image, "-v", f"{store}:/model-store:ro", arguments=("--server", "triton"), protocol="v2") as triton:
        session, photo = requests.Session(), jpeg.read_bytes()
        ((local_top1, _), *_) = Classifier.from_export(digits_export).classify([photo])[0]
        ((top1, _), *_) = http_predict(
            session, triton.base_url, MODEL, photo, {"Authorization": f"Bearer {triton.token()}"}
        )
        assert top1 == local_top1
        with pytest.raises(AuthorizationFailed):
            http_predict(session, triton.base_url, MODEL, photo, {})
        assert docker("exec", triton.name, "id", "-u").stdout.strip() == "10001"
        assert triton.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
        wait_healthy(triton)
        sigterm = time.monotonic()
        docker("stop", triton.name, timeout=STOP_GRACE_S + 30)
        stop_s = time.monotonic() - sigterm
        logs = docker("logs", triton.name).stdout[-3000:]
        assert triton.inspect("{{.State.ExitCode}}") == "0" and stop_s < STOP_GRACE_S, (stop_s, logs)


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
