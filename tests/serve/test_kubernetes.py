"""`python -m serve manifests` and `serve start --in-cluster`, checked without a cluster.

Offline: every generated core object validates against the Kubernetes schema of a named version
(kubernetes-validate), the InferenceServices carry the fields KServe requires, every file loads and the
kustomization lists exactly the folder's objects; the archive's model-config.yaml is read as untrusted.

A local stand-in for the cluster: two replicas run the Deployment's own command line (only ports and
paths changed) behind a round-robin TCP proxy playing the Service (kube-proxy balances connections the
same way and skips endpoints that are gone). The client and a locust run use the one proxy address and
no key; stopping one replica mid-run fails only the requests it had in flight. The manifests' probes
run against a replica: readiness passes while the model answers and fails when it does not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import psutil
import pytest
import requests
import yaml

from classify.classifier import Classifier
from export.manifest import read_manifest
from fsutil.atomic import sha256_file
from fsutil.owned import MARKER_NAME
from imagedata.digits import write_digits_folder
from serve.__main__ import build_parser
from serve.__main__ import main as serve_main
from serve.kubernetes import (
    CORE_FILES,
    FRONTEND_NON_HEAP_MI,
    WORKER_BASE_MEMORY_MI,
    ManifestError,
    ManifestOptions,
    generate,
    max_request_bytes,
    read_archive,
)
from serve.package import package
from serve.server import free_ports, read_state, stop
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS

KUBERNETES_VERSION = "1.33.0"  # a recent release whose schema kubernetes-validate ships
REPO = Path(__file__).parents[2]
IMAGE = "registry.example.com/resnet-deploy:1.0"


@pytest.fixture(scope="module")
def store(digits_export, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("k8s_store")
    package(digits_export, store, name="digits", options=SERVED_PACKAGE_OPTIONS)
    return store


@pytest.fixture(scope="module")
def manifests(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k8s") / "deploy"
    status = serve_main(
        [
            "manifests",
            "--model-store",
            str(store),
            "--models",
            "digits",
            "--image",
            IMAGE,
            "--out",
            str(out),
            "--replicas",
            "2",
            "--kserve",
        ]
    )
    assert status == 0
    return out


def load(path: Path) -> dict:
    (document,) = list(yaml.safe_load_all(path.read_text()))
    return document


def container(manifests: Path) -> dict:
    (c,) = load(manifests / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return c


def test_core_objects_validate_and_the_kustomization_lists_exactly_them(manifests):
    kustomization = load(manifests / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    top_level = {p.name for p in manifests.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(top_level) == sorted(CORE_FILES)
    kinds = {}
    for name in kustomization["resources"]:
        document = load(manifests / name)
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises on any unknown field
        kinds[document["kind"]] = document
    assert set(kinds) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    }
    for path in manifests.rglob("*.yaml"):  # the kserve/ ones too
        assert list(yaml.safe_load_all(path.read_text())), path


def test_deployment_sizing_security_and_probes(manifests):
    spec = load(manifests / "deployment.yaml")["spec"]
    c = container(manifests)
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert c["image"] == IMAGE and "--in-cluster" in c["command"]
    # SERVED_PACKAGE_OPTIONS: 1 worker; threads not pinned -> 1 per worker
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "1"
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    scratch = {m["mountPath"] for m in c["volumeMounts"]}
    run_dir = c["command"][c["command"].index("--run-dir") + 1]
    assert any(run_dir.startswith(m) for m in scratch), "the run dir must be on a writable volume"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > SERVED_PACKAGE_OPTIONS.response_timeout_s
    assert c["readinessProbe"]["exec"]["command"][:3] == ["python", "-m", "serve.probe"]
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/ping"
    service = load(manifests / "service.yaml")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]  # inference only


def test_network_policy_ingress_and_hpa(manifests):
    rules = load(manifests / "networkpolicy.yaml")["spec"]["ingress"]
    admitted = {
        (r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], r["ports"][0]["port"])
        for r in rules
    }
    assert admitted == {("ingress-nginx", 8080), ("monitoring", 8082)}
    ingress = load(manifests / "ingress.yaml")
    notes = ingress["metadata"]["annotations"]
    body_mb = int(re.fullmatch(r"(\d+)m", notes["nginx.ingress.kubernetes.io/proxy-body-size"]).group(1))
    assert body_mb * 2**20 == max_request_bytes()  # the server's limit, in nginx's units
    assert notes["nginx.ingress.kubernetes.io/auth-type"] == "basic" and ingress["spec"]["tls"]
    hpa = load(manifests / "hpa.yaml")["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] == 2


def test_kserve_layout_and_inference_services(manifests, store):
    storage = manifests / "kserve" / "storage"
    assert (storage / "model-store" / "digits.mar").read_bytes() == (store / "digits.mar").read_bytes()
    properties = dict(
        line.split("=", 1)
        for line in (storage / "config" / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert properties["disable_token_authorization"] == "true"
    assert properties["model_store"] == "/mnt/models/model-store"
    snapshot = json.loads(properties["model_snapshot"])["models"]["digits"]["1.0"]
    assert snapshot["marName"] == "digits.mar"
    assert snapshot["batchSize"] == read_archive(store / "digits.mar").batch_size  # each request its own envelope
    # TorchServe applies no envelope of its own and hands bodies over as bytes: the handler reads them.
    assert properties["enable_envvars_config"] == "false" and properties["decode_input_request"] == "false"
    runtime = load(manifests / "kserve" / "inferenceservice-torchserve.yaml")
    assert runtime["apiVersion"] == "serving.kserve.io/v1beta1" and runtime["kind"] == "InferenceService"
    model = runtime["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] in ("v1", "v2")
    assert model["storageUri"] and model["runtime"] == "kserve-torchserve"
    custom = load(manifests / "kserve" / "inferenceservice.yaml")
    (predictor,) = custom["spec"]["predictor"]["containers"]
    assert predictor["image"] == IMAGE and predictor["command"] == container(manifests)["command"]


def fake_archive(path: Path, config: str, manifest: dict | None = None) -> Path:
    manifest = (
        manifest if manifest is not None else {"model": {"modelName": path.stem, "configFile": "model-config.yaml"}}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        archive.writestr("model-config.yaml", config)
        archive.writestr("model.onnx", b"\0" * 1000)
    return path


def test_archive_metadata_is_read_as_untrusted(tmp_path):
    good = read_archive(fake_archive(tmp_path / "pinned.mar", "maxWorkers: 3\nhandler: {threads: 2}\n"))
    assert (good.workers, good.threads, good.model_bytes) == (3, 2, 1000)
    bad = {
        "many.mar": "maxWorkers: many\n",
        "negative.mar": "maxWorkers: -1\n",
        "python.mar": "maxWorkers: !!python/object/apply:os.system ['true']\n",
        "list.mar": "- 1\n",
        "threads.mar": "handler: {threads: true}\n",
    }
    for name, config in bad.items():
        with pytest.raises(ManifestError, match=name):
            read_archive(fake_archive(tmp_path / name, config))
    with pytest.raises(ManifestError, match="names no model-config"):
        read_archive(fake_archive(tmp_path / "noconfig.mar", "", manifest={"model": {}}))
    (tmp_path / "text.mar").write_text("not a zip")
    with pytest.raises(ManifestError, match="not a readable model archive"):
        read_archive(tmp_path / "text.mar")
    # workers x pinned threads sizes the pod
    out = tmp_path / "out"
    generate(ManifestOptions(model_store=tmp_path, models=["pinned"], image=IMAGE, out=out))
    assert container(out)["resources"]["limits"]["cpu"] == "6"


def test_pod_memory_follows_the_frontend_heap(tmp_path):
    """Memory request = limit = the pods' --frontend-heap + the JVM's non-heap allowance + each worker's
    interpreter and twice its model; KServe's TorchServe gets the same heap and the same memory."""
    fake_archive(tmp_path / "m.mar", "maxWorkers: 2\n")
    workers_mi = 2 * (WORKER_BASE_MEMORY_MI + 1)  # the 1,000-byte model.onnx, twice, rounded up to a MiB
    for heap, heap_mi in (("1g", 1024), ("2560m", 2560), ("3221225472", 3072)):
        out = tmp_path / heap
        args = ["manifests", "--model-store", str(tmp_path), "--models", "m", "--image", IMAGE, "--out", str(out)]
        assert serve_main([*args, "--kserve", "--frontend-heap", heap]) == 0
        c = container(out)
        memory = f"{heap_mi + FRONTEND_NON_HEAP_MI + workers_mi}Mi"
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == memory
        assert c["command"][c["command"].index("--frontend-heap") + 1] == heap
        runtime = load(out / "kserve" / "inferenceservice-torchserve.yaml")["spec"]["predictor"]["model"]
        assert runtime["resources"]["limits"]["memory"] == memory
        config = (out / "kserve" / "storage" / "config" / "config.properties").read_text()
        assert f"vmargs=-Xmx{heap} -XX:MaxDirectMemorySize=256m -XX:+ExitOnOutOfMemoryError" in config.splitlines()
    with pytest.raises(ManifestError, match="'1.5g': not a JVM heap size"):
        generate(
            ManifestOptions(model_store=tmp_path, models=["m"], image=IMAGE, out=tmp_path / "x", frontend_heap="1.5g")
        )
    assert not (tmp_path / "x").exists()


def test_out_folder_is_replaced_only_when_ours(tmp_path):
    fake_archive(tmp_path / "m.mar", "maxWorkers: 1\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ManifestError, match="holds files `serve manifests` did not write"):
        generate(ManifestOptions(model_store=tmp_path, models=["m"], image=IMAGE, out=foreign))
    assert (foreign / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    generate(ManifestOptions(model_store=tmp_path, models=["m"], image=IMAGE, out=ours, kserve=True))
    generate(ManifestOptions(model_store=tmp_path, models=["m"], image=IMAGE, out=ours))
    assert (ours / MARKER_NAME).is_file() and not (ours / "kserve").exists()
    with pytest.raises(ManifestError, match="nope.mar not found"):
        generate(ManifestOptions(model_store=tmp_path, models=["nope"], image=IMAGE, out=tmp_path / "x"))


# --- the local stand-in for the cluster -------------------------------------------------------------


class RoundRobinProxy:
    """A TCP load balancer like a Service's kube-proxy: each new connection goes to the next endpoint
    that accepts it; bytes are copied both ways until either side closes."""

    def __init__(self, backends: list[int]):
        self.backends = list(backends)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.turn = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.connect, args=(client,), daemon=True).start()

    def connect(self, client: socket.socket) -> None:
        with self.lock:
            order = self.backends[self.turn :] + self.backends[: self.turn]
            self.turn = (self.turn + 1) % len(self.backends)
        for port in order:
            try:
                upstream = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                continue
        else:
            client.close()
            return
        threading.Thread(target=self.pipe, args=(upstream, client), daemon=True).start()
        self.pipe(client, upstream)

    @staticmethod
    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


class Replica:
    """The Deployment's container command, run here: only its ports, model store and run dir differ."""

    def __init__(self, command: list[str], store: Path, run_dir: Path):
        self.port, self.metrics_port, management, grpc_inference, grpc_management = free_ports(5)
        self.run_dir = run_dir
        local = [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--management-port",
            str(management),
            "--grpc-ports",
            str(grpc_inference),
            str(grpc_management),
            "--model-store",
            str(store),
            "--run-dir",
            str(run_dir),
        ]
        assert command[:3] == ["python", "-m", "serve"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.log = open(run_dir.parent / f"{run_dir.name}.out", "wb")
        self.process = subprocess.Popen(
            [sys.executable, *command[1:], *local], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def probe_command(self, readiness: list[str]) -> list[str]:
        command = [sys.executable, *readiness[1:]]
        command[command.index("--port") + 1] = str(self.port)
        return command

    def ready(self, readiness: list[str]) -> bool:
        return subprocess.run(self.probe_command(readiness), cwd=REPO, capture_output=True, timeout=60).returncode == 0

    def requests_served(self) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        return sum(
            float(m)
            for m in re.findall(r'^ts_inference_requests_total\{model_name="digits".*\} (\S+)$', text, re.MULTILINE)
        )

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # what the kubelet sends
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        stop(self.run_dir)
        self.log.close()


@pytest.fixture(scope="module")
def cluster(manifests, store, tmp_path_factory):
    command = container(manifests)["command"]
    readiness = container(manifests)["readinessProbe"]["exec"]["command"]
    root = tmp_path_factory.mktemp("pods")
    replicas = [Replica(command, store, root / name) for name in ("a", "b")]
    try:
        deadline = time.monotonic() + 240
        for replica in replicas:
            while not replica.ready(readiness):
                assert replica.process.poll() is None, (
                    replica.run_dir.parent / f"{replica.run_dir.name}.out"
                ).read_text()
                assert time.monotonic() < deadline, "replica not ready in 240 s"
                time.sleep(1)
        proxy = RoundRobinProxy([r.port for r in replicas])
        yield replicas, proxy, readiness
        proxy.close()
    finally:
        for replica in replicas:
            replica.terminate()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("k8s_digits"), split="val", limit_per_class=2)


def test_in_cluster_replicas_need_no_key_and_expose_metrics_not_management(cluster):
    replicas, _, _ = cluster
    info = read_state(replicas[0].run_dir.resolve())
    assert info is not None and not info.token_auth and not info.key_file.exists()
    config = (replicas[0].run_dir / "config.properties").read_text()
    assert "management_address=http://127.0.0.1:" in config
    assert f"metrics_address=http://127.0.0.1:{replicas[0].metrics_port}" in config  # --host's address
    assert requests.get(f"http://127.0.0.1:{replicas[0].port}/ping", timeout=10).status_code == 200  # no key


def run_loadtest(proxy: RoundRobinProxy, images: Path, out: Path, duration: str, users: int = 4, **popen):
    command = [
        sys.executable,
        "-m",
        "client",
        "loadtest",
        "--host",
        f"http://127.0.0.1:{proxy.port}",
        "--model",
        "digits",
        "--users",
        str(users),
        "--duration",
        duration,
        "--images",
        str(images),
        "--method",
        "PUT",
        "--output-root",
        str(out),
        "--max-failure-ratio",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TORCHSERVE_TOKEN"}  # one configuration, no key
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def summary_of(out: Path) -> dict:
    (run,) = out.iterdir()
    return json.loads((run / "summary.json").read_text())


def test_client_and_locust_spread_over_both_replicas(cluster, digit_folder, tmp_path):
    replicas, proxy, _ = cluster
    before = [r.requests_served() for r in replicas]
    env = {k: v for k, v in os.environ.items() if k != "TORCHSERVE_TOKEN"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            str(digit_folder),
            "--url",
            f"http://127.0.0.1:{proxy.port}",
            "--model",
            "digits",
            "--json",
            "--concurrency",
            "4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    process = run_loadtest(proxy, digit_folder, tmp_path, "4s")
    output = process.communicate(timeout=180)[0].decode()
    assert process.returncode == 0, output
    summary = summary_of(tmp_path)
    assert summary["failures"] == 0 and summary["requests"] > 0
    served = [r.requests_served() - b for r, b in zip(replicas, before)]
    assert all(n > 0 for n in served), f"requests per replica: {served}"


def test_probes_follow_whether_the_model_answers(cluster):
    replicas, _, readiness = cluster
    replica = replicas[0]
    assert replica.ready(readiness)
    java = psutil.Process(read_state(replica.run_dir.resolve()).pid)
    (worker,) = [p for p in java.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    worker.suspend()  # a hung worker: TorchServe's /ping still says Healthy, no prediction comes back
    try:
        assert requests.get(f"http://127.0.0.1:{replica.port}/ping", timeout=10).status_code == 200
        assert not replica.ready(readiness)
    finally:
        worker.resume()
    deadline = time.monotonic() + 60
    while not replica.ready(readiness):
        assert time.monotonic() < deadline
        time.sleep(1)


def test_stopping_one_replica_fails_only_its_in_flight_requests(cluster, digit_folder, tmp_path):
    replicas, proxy, readiness = cluster
    users = 4
    process = run_loadtest(proxy, digit_folder, tmp_path, "10s", users=users)
    time.sleep(4)
    survivor_at_stop = replicas[0].requests_served()
    replicas[1].terminate()  # SIGTERM, as when the pod is deleted
    assert not replicas[1].ready(readiness)
    output = process.communicate(timeout=180)[0].decode()
    summary = summary_of(tmp_path)
    # At most one failed request per connection the stopped replica held (a user's request in flight there).
    assert summary["failures"] <= users, output
    assert replicas[0].requests_served() > survivor_at_stop, "the run went on, on the other replica"
    assert summary["requests"] > 4 * summary["failures"], output


# --- KServe's TorchServe runtime, locally -----------------------------------------------------------


@contextlib.contextmanager
def kserve_torchserve(manifests: Path, tmp_path: Path, envelope: str):
    """TorchServe started as the kserve-torchserve runtime starts it: the generated config/config.properties
    (only its addresses and model store made local) and TS_SERVICE_ENVELOPE, which KServe sets (kserve for
    protocol v1, kservev2 for v2). Yields the inference URL once the model answers."""
    storage = manifests / "kserve" / "storage"
    port, metrics, grpc_inference, grpc_management = free_ports(4)
    local = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "model_store": str(storage / "model-store"),
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
    }
    generated = (storage / "config" / "config.properties").read_text().splitlines()
    config = tmp_path / "config.properties"
    lines = [line for line in generated if line.split("=")[0] not in local] + [f"{k}={v}" for k, v in local.items()]
    config.write_text("\n".join(lines) + "\n")
    env = dict(
        os.environ,
        TS_SERVICE_ENVELOPE=envelope,
        TMPDIR=str(tmp_path),  # TorchServe's pid file and worker sockets
        LOG_LOCATION=str(tmp_path / "logs"),
        METRICS_LOCATION=str(tmp_path / "logs"),
        OMP_NUM_THREADS="1",
    )
    # The runtime's container args (kserve/kserve config/runtimes/kserve-torchserve.yaml), paths made local.
    command = [sys.executable, "-m", "ts.model_server", "--start", f"--model-store={local['model_store']}"]
    command.append(f"--ts-config={config}")
    with open(tmp_path / "torchserve.out", "wb") as out:
        subprocess.run(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=60, check=True)
    java = psutil.Process(int((tmp_path / ".model_server.pid").read_text()))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not model_ready(url):
            assert java.is_running() and time.monotonic() < deadline, (tmp_path / "torchserve.out").read_text()
            time.sleep(1)
        yield url
    finally:
        processes = [java, *java.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def model_ready(url: str) -> bool:
    """Whether the handler answers (an empty envelope is refused with 400, by the handler, not the frontend)."""
    try:
        return requests.post(f"{url}/predictions/digits", json={}, timeout=30).status_code == 400
    except (requests.ConnectionError, requests.Timeout):  # not listening yet, or the worker still loading
        return False


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def test_torchserve_serves_the_kserve_layout_over_protocol_v1(manifests, digits_export, digit_folder, tmp_path):
    """Base64 instances get what the local Classifier answers, in order; a malformed one fails its request
    with 400 naming it."""
    images = [next((digit_folder / label).iterdir()).read_bytes() for label in ("3", "7")]
    instances = {"instances": [{"data": b64(images[0])}, {"data": {"b64": b64(images[1])}}]}
    with kserve_torchserve(manifests, tmp_path, "kserve") as url:
        response = requests.post(f"{url}/v1/models/digits:predict", json=instances, timeout=30)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = Classifier.from_export(digits_export, top_k=SERVED_PACKAGE_OPTIONS.top_k).classify(images)
        assert len(predictions) == 2
        for served, answer in zip(predictions, expected):
            assert list(served)[0] == answer[0][0]  # the same top class
            assert all(abs(served[name] - p) < 1e-4 for name, p in answer if name in served)
        bad = {"instances": [instances["instances"][0], {"data": "not base64!"}]}
        response = requests.post(f"{url}/predictions/digits", json=bad, timeout=30)
        assert response.status_code == 400, response.text
        [error] = response.json()["predictions"]
        assert error["message"].startswith("part 'instances[1]': malformed base64"), error
        # The layout reads every body as KServe JSON: a raw image is refused with a hint.
        response = requests.put(f"{url}/predictions/digits", data=images[0], timeout=30)
        assert response.status_code == 400, response.text


def test_torchserve_serves_the_kserve_layout_over_protocol_v2(manifests, digits_export, digit_folder, tmp_path):
    """TS_SERVICE_ENVELOPE=kservev2: every element of a BYTES input answered in order; concurrent requests
    batched together (batchSize 8) each get their own answer; the error of a bad input on that input; a
    body of 100k nested `[` gets 400 and the worker answers on."""
    labels = [str(digit) for digit in range(8)]
    images = [next((digit_folder / label).iterdir()).read_bytes() for label in labels]
    classifier = Classifier.from_export(digits_export, top_k=SERVED_PACKAGE_OPTIONS.top_k)
    top = [answer[0][0] for answer in classifier.classify(images)]

    def infer(url, inputs: list, request_id: str = "r") -> tuple[int, dict]:
        body = {
            "id": request_id,
            "inputs": [{"name": n, "shape": [len(d)], "datatype": "BYTES", "data": d} for n, d in inputs],
        }
        response = requests.post(f"{url}/v2/models/digits/infer", json=body, timeout=60)
        return response.status_code, response.json()

    with kserve_torchserve(manifests, tmp_path, "kservev2") as url:
        status, answer = infer(url, [("pair", [b64(images[0]), b64(images[1])]), ("one", [b64(images[2])])])
        assert status == 200 and answer["id"] == "r" and answer["model_name"] == "digits", answer
        assert [(o["name"], o["shape"]) for o in answer["outputs"]] == [("pair", [2]), ("one", [1])]
        assert [list(p)[0] for o in answer["outputs"] for p in o["data"]] == top[:3]

        with ThreadPoolExecutor(len(images)) as pool:
            answers = list(pool.map(lambda i: infer(url, [("x", [b64(images[i])])], f"r{i}"), range(len(images))))
        assert [(status, a["id"], list(a["outputs"][0]["data"][0])[0]) for status, a in answers] == [
            (200, f"r{i}", top[i]) for i in range(len(images))
        ]

        status, answer = infer(url, [("a", [b64(images[0])]), ("b", ["not base64!"])])
        assert status == 400 and [o["name"] for o in answer["outputs"]] == ["a", "b"]
        assert answer["outputs"][1]["data"][0]["message"].startswith("part 'b': malformed base64")
        assert answer["outputs"][0]["data"][0]["type"] == "NotClassified"

        deep = b"[" * 100_000 + b"]" * 100_000
        response = requests.post(f"{url}/v2/models/digits/infer", data=deep, timeout=60)
        assert response.status_code == 400 and "nests deeper than" in response.json()["message"], response.text
        assert (
            infer(url, [("x", [b64(images[3])])])[1]["outputs"][0]["data"][0] == answers[3][1]["outputs"][0]["data"][0]
        )


def test_kserve_triton_runtime_and_v2_inference_service(store, tmp_path):
    out = tmp_path / "deploy"
    args = ["manifests", f"--model-store={store}", "--models", "digits", f"--image={IMAGE}", f"--out={out}"]
    assert serve_main([*args, "--kserve", "--server", "triton"]) == 0
    runtime = load(out / "kserve" / "servingruntime-triton.yaml")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    (runtime_container,) = runtime["spec"]["containers"]
    service = load(out / "kserve" / "inferenceservice-triton-digits.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    assert model["storageUri"].endswith("/exports/digits")
    # The container runs `serve start` as written, with the model's own args appended (as KServe does).
    command = runtime_container["command"]
    assert command[:3] == ["python", "-m", "serve"]
    started = build_parser().parse_args([*command[3:], *model["args"]])
    assert started.server == "triton" and started.in_cluster and started.export_dirs == [Path("/mnt/models")]
    assert (started.workers, started.batch_size) == (SERVED_PACKAGE_OPTIONS.workers, SERVED_PACKAGE_OPTIONS.batch_size)
    assert started.max_batch_delay == SERVED_PACKAGE_OPTIONS.max_batch_delay_ms
    export = out / "kserve" / "storage" / "exports" / "digits"  # what storageUri holds
    artifacts = read_manifest(export).artifacts
    assert artifacts and all(sha256_file(export / a.file) == a.sha256 for a in artifacts)
