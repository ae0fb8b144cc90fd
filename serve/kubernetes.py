"""`python -m serve manifests`: a kustomize folder that runs the serving image as N replicas behind one Service.

The auth story, chosen for many replicas: TorchServe 0.12 makes its token keys per process, so no one
key works across a Service (and KServe's TorchServe wrapper cannot pass one). Inside the pod the
server runs `serve start --in-cluster`: token authorization off, inference and metrics on the pod
address, management on the pod's loopback only. What protects the unauthenticated inference port is
the NetworkPolicy (only the ingress controller's namespace reaches it, only the monitoring namespace
reaches metrics) and authentication happens at the Ingress (nginx basic auth, or an external auth
service). A client of the Service never needs a per-pod key.

Everything sized here comes from the archives themselves (each `.mar` is a zip holding TorchServe's
`model-config.yaml`), read as untrusted input: bounded reads, `yaml.safe_load`, every value type-checked.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fsutil.owned import MARKER_NAME, NotOwnedError, replace_owned_folder

from . import kserve_triton
from .archive import ArchiveError, extract_export, read_model_config
from .server import CONFIG_TEMPLATE, FRONTEND_DIRECT_MEMORY, ServerSettings

MANIFESTS_KIND = "manifests"  # the marker kind of a generated folder (fsutil.owned.mark_owned)
APP = "resnet-deploy"
CONTAINER_PORTS = {"http": 8080, "metrics": 8082}  # management (8081) stays on the pod's loopback
IMAGE_NAME = "resnet-deploy"  # what `make image` tags, as NAME:latest and NAME:<version> (scripts/image.sh)
IMAGE_MODEL_STORE = "/model-store"  # where the Dockerfile copies MODEL_STORE
VOLUME_MODEL_STORE = "/models"
SCRATCH = "/tmp"  # the only writable path: TorchServe's run dir, unpacked archives, logs, JVM temp files
RUN_DIR = f"{SCRATCH}/serve"
PRESTOP_S = 5  # endpoints controllers and kube-proxy drop the pod before TorchServe gets SIGTERM
STOP_WAIT_S = 30  # serve.server.stop's wait for TorchServe and its workers after SIGTERM
STARTUP_TIMEOUT_S = 180  # serve start's wait for the models (its --timeout default)
# The JVM frontend beyond its heap (--frontend-heap): metaspace, code cache, the stacks of Netty's and
# the workers' threads, and the direct buffers that hold request bodies on their way in (at most
# FRONTEND_DIRECT_MEMORY, 256 MiB).
FRONTEND_NON_HEAP_MI = 512
JVM_SIZE = re.compile(r"(\d+)([kmgt]?)", re.IGNORECASE)  # what -Xmx accepts: bytes, or a k/m/g/t suffix
# A worker: the Python interpreter with torch and ONNX Runtime resident (its private pages and its share
# of the libraries, which a pod's cgroup charges once for all workers), plus twice its artifact (the
# file's bytes and the runtime's copy of the weights). Checked against a served resnet50's workers in
# benchmarks/results (the Zen 5 README's "Memory" finding).
WORKER_BASE_MEMORY_MI = 640
MODEL_FILE_SUFFIXES = (".ts", ".onnx", ".engine", ".pt2")

KSERVE_INFERENCE_PORT = 8085  # KServe's TorchServe wrapper listens on 8080 and forwards here
KSERVE_MODEL_STORE = "/mnt/models/model-store"


class ManifestError(RuntimeError):
    """The manifests cannot be generated as asked; the message says which file or flag and what to do."""


@dataclass(frozen=True)
class ArchiveSpec:
    """What the manifests need from one `.mar`: its model-config.yaml's workers and batching."""

    name: str
    path: Path
    workers: int
    threads: int | None  # the handler's `threads`, when the archive pins it
    batch_size: int
    max_batch_delay_ms: int
    response_timeout_s: int
    model_bytes: int  # the largest artifact, uncompressed


@dataclass
class ManifestOptions:
    model_store: Path
    models: list[str]
    image: str
    out: Path
    replicas: int = 2
    max_replicas: int | None = None  # HPA ceiling; default 3 x replicas
    threads_per_worker: int = 1  # for archives that do not pin `threads`
    name: str = APP
    host: str = "resnet.example.com"
    tls_secret: str = f"{APP}-tls"
    auth_secret: str = f"{APP}-basic-auth"
    ingress_namespace: str = "ingress-nginx"
    monitoring_namespace: str = "monitoring"
    store_claim: str | None = None  # a PersistentVolumeClaim holding the .mar files, instead of the image's
    kserve: bool = False
    server: str = "torchserve"  # with kserve: "triton" adds our Triton runtime and a v2 InferenceService per model
    storage_uri: str = f"pvc://{APP}-models/"
    frontend_heap: str = ServerSettings.frontend_heap  # the JVM's -Xmx, as serve start --frontend-heap takes it
    archives: list[ArchiveSpec] = field(default_factory=list)  # filled by generate()


def positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ManifestError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def read_archive(path: Path) -> ArchiveSpec:
    """Workers, threads, batching and model size of `path`, a TorchServe model archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            config_name, config = read_model_config(archive)
            sizes = [i.file_size for i in archive.infolist() if i.filename.endswith(MODEL_FILE_SUFFIXES)]
    except (zipfile.BadZipFile, OSError) as e:
        raise ManifestError(f"{path}: not a readable model archive ({e})") from None
    except ArchiveError as e:
        raise ManifestError(f"{path}: {e}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: malformed metadata inside the archive ({e})") from None
    where = f"{path}:{config_name}"
    workers = positive_int(config.get("maxWorkers", config.get("minWorkers", 1)), where, "maxWorkers")
    handler = config.get("handler", {})
    if not isinstance(handler, dict):
        raise ManifestError(f"{where}: handler must be a mapping, got {handler!r}")
    threads = handler.get("threads")
    return ArchiveSpec(
        name=path.stem,
        path=path,
        workers=workers,
        threads=None if threads is None else positive_int(threads, where, "handler.threads"),
        batch_size=positive_int(config.get("batchSize", 1), where, "batchSize"),
        max_batch_delay_ms=positive_int(config.get("maxBatchDelay", 100), where, "maxBatchDelay"),
        response_timeout_s=positive_int(config.get("responseTimeout", 120), where, "responseTimeout"),
        model_bytes=max(sizes, default=0),
    )


def max_request_bytes() -> int:
    """The server's max_request_size (serve/config.properties): the Ingress's body limit must match it."""
    match = re.search(r"^max_request_size=(\d+)\s*$", CONFIG_TEMPLATE.read_text(), re.MULTILINE)
    if match is None:
        raise ManifestError(f"{CONFIG_TEMPLATE}: no max_request_size line")
    return int(match.group(1))


def labels(options: ManifestOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name, "app.kubernetes.io/component": "inference"}


def cpu_cores(options: ManifestOptions) -> int:
    """workers x threads summed over the models: the cores the handlers will use (they size their
    threads from the container's CPU quota, so the limit and the threads agree)."""
    return sum(a.workers * (a.threads or options.threads_per_worker) for a in options.archives)


def jvm_size_mi(size: str) -> int:
    """A JVM -Xmx size ("1g", "1536m", "2147483648") in MiB, rounded up."""
    match = JVM_SIZE.fullmatch(size.strip())
    if match is None:
        raise ManifestError(f"--frontend-heap {size!r}: not a JVM heap size; write e.g. 1g, 1536m or 2147483648")
    size_bytes = int(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if size_bytes == 0:
        raise ManifestError(f"--frontend-heap {size!r}: the frontend needs a heap; write e.g. 1g")
    return math.ceil(size_bytes / 2**20)


def memory_mi(options: ManifestOptions) -> int:
    """The pod's memory: the frontend's heap and its non-heap allowance, and every worker."""
    workers = sum(a.workers * (WORKER_BASE_MEMORY_MI + math.ceil(2 * a.model_bytes / 2**20)) for a in options.archives)
    return jvm_size_mi(options.frontend_heap) + FRONTEND_NON_HEAP_MI + workers


def scratch_mi(options: ManifestOptions) -> int:
    """TorchServe unpacks every archive into its run dir; logs roll at bounded sizes; room beside both."""
    archives = sum(math.ceil(a.path.stat().st_size / 2**20) for a in options.archives)
    return 2 * archives + 1024


def model_store_path(options: ManifestOptions) -> str:
    return VOLUME_MODEL_STORE if options.store_claim else IMAGE_MODEL_STORE


def server_args(options: ManifestOptions) -> list[str]:
    """`serve start` in its in-cluster mode: what the container runs (and what the tests run locally)."""
    return [
        "python",
        "-m",
        "serve",
        "start",
        "--in-cluster",
        "--host",
        "0.0.0.0",
        "--port",
        str(CONTAINER_PORTS["http"]),
        "--metrics-port",
        str(CONTAINER_PORTS["metrics"]),
        "--model-store",
        model_store_path(options),
        "--models",
        *(a.name for a in options.archives),
        "--run-dir",
        RUN_DIR,
        "--frontend-heap",
        options.frontend_heap,
        "--timeout",
        str(STARTUP_TIMEOUT_S),
    ]


def readiness_command(options: ManifestOptions) -> list[str]:
    return [
        "python",
        "-m",
        "serve.probe",
        "--port",
        str(CONTAINER_PORTS["http"]),
        "--timeout",
        "5",
        "--model",
        *(a.name for a in options.archives),
    ]


def ping() -> dict:
    return {"httpGet": {"path": "/ping", "port": "http"}}


def default_image() -> str:
    """The tag `make image` builds: resnet-deploy:<this package's version>."""
    return f"{IMAGE_NAME}:{importlib.metadata.version('resnet-deploy')}"


def termination_grace_s(options: ManifestOptions) -> int:
    """Longer than the slowest batch may take (TorchServe restarts a worker past its responseTimeout)."""
    return PRESTOP_S + max(a.response_timeout_s for a in options.archives) + STOP_WAIT_S


def deployment(options: ManifestOptions) -> dict:
    cores, memory = cpu_cores(options), f"{memory_mi(options)}Mi"
    volumes = [{"name": "scratch", "emptyDir": {"sizeLimit": f"{scratch_mi(options)}Mi"}}]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}]
    if options.store_claim:
        volumes.append(
            {"name": "model-store", "persistentVolumeClaim": {"claimName": options.store_claim, "readOnly": True}}
        )
        mounts.append({"name": "model-store", "mountPath": VOLUME_MODEL_STORE, "readOnly": True})
    container = {
        "name": "torchserve",
        "image": options.image,
        "command": server_args(options),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in CONTAINER_PORTS.items()],
        # HOME on the scratch volume: the image's home directory is read-only here.
        "env": [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": SCRATCH}],
        "resources": {
            "requests": {"cpu": str(cores), "memory": memory},
            "limits": {"cpu": str(cores), "memory": memory},
        },
        # The frontend answering: /ping needs no key in the in-cluster mode.
        "startupProbe": {**ping(), "periodSeconds": 5, "failureThreshold": STARTUP_TIMEOUT_S // 5},
        "livenessProbe": {**ping(), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        # Every model answers a real image (/ping stays "Healthy" while a worker hangs).
        "readinessProbe": {
            "exec": {"command": readiness_command(options)},
            "periodSeconds": 10,
            "timeoutSeconds": 5 * len(options.archives) + 3,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    metrics_port = str(CONTAINER_PORTS["metrics"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": labels(options)},
            # A new model version rolls out one extra pod at a time, each taking traffic only once ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(options),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": metrics_port,
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": termination_grace_s(options),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": labels(options)},
                        }
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(options: ManifestOptions) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(options),
            "ports": [{"name": "http", "port": CONTAINER_PORTS["http"], "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(options: ManifestOptions) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas or 3 * options.replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
            # Scale down slowly: a replica's workers take seconds to load a model.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(options: ManifestOptions) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(options)}},
    }


def network_policy(options: ManifestOptions) -> dict:
    def from_namespace(namespace: str, port: str) -> dict:
        return {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}],
            "ports": [{"protocol": "TCP", "port": CONTAINER_PORTS[port]}],
        }

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {
            "podSelector": {"matchLabels": labels(options)},
            "policyTypes": ["Ingress"],
            "ingress": [
                from_namespace(options.ingress_namespace, "http"),
                from_namespace(options.monitoring_namespace, "metrics"),
            ],
        },
    }


def ingress(options: ManifestOptions) -> dict:
    limit_mi = math.ceil(max_request_bytes() / 2**20)
    timeout_s = str(max(a.response_timeout_s for a in options.archives) + 10)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": options.name,
            "labels": labels(options),
            "annotations": {
                # The server's max_request_size: larger bodies stop at the edge with the same 413.
                "nginx.ingress.kubernetes.io/proxy-body-size": f"{limit_mi}m",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout_s,
                # Authentication lives here (the pods run without TorchServe's per-process keys).
                "nginx.ingress.kubernetes.io/auth-type": "basic",
                "nginx.ingress.kubernetes.io/auth-secret": options.auth_secret,
                "nginx.ingress.kubernetes.io/auth-realm": f"{options.name} inference",
            },
        },
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": [options.host], "secretName": options.tls_secret}],
            "rules": [
                {
                    "host": options.host,
                    "http": {
                        "paths": [
                            {
                                "path": "/predictions",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": options.name, "port": {"name": "http"}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


def kserve_config(options: ManifestOptions) -> str:
    """config/config.properties of KServe's TorchServe storage layout (/mnt/models in the predictor)."""
    snapshot = {
        "name": "startup.cfg",
        "modelCount": len(options.archives),
        "models": {
            a.name: {
                "1.0": {
                    "defaultVersion": True,
                    "marName": f"{a.name}.mar",
                    "minWorkers": a.workers,
                    "maxWorkers": a.workers,
                    "batchSize": a.batch_size,
                    "maxBatchDelay": a.max_batch_delay_ms,
                    "responseTimeout": a.response_timeout_s,
                }
            }
            for a in options.archives
        },
    }
    lines = [
        "# TorchServe behind KServe's wrapper (it listens on 8080 in the same container and forwards here).",
        f"inference_address=http://127.0.0.1:{KSERVE_INFERENCE_PORT}",
        f"management_address=http://127.0.0.1:{KSERVE_INFERENCE_PORT}",
        f"metrics_address=http://0.0.0.0:{CONTAINER_PORTS['metrics']}",
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        "# The wrapper cannot send TorchServe's per-process keys (pytorch/serve#3260, #3301).",
        "disable_token_authorization=true",
        f"vmargs=-Xmx{options.frontend_heap} -XX:MaxDirectMemorySize={FRONTEND_DIRECT_MEMORY} -XX:+ExitOnOutOfMemoryError",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        "# KServe's runtime sets TS_SERVICE_ENVELOPE (kserve for protocol v1, kservev2 for v2): our handler reads it",
        "# and parses each request's JSON itself (serve/envelope.py), so TorchServe applies no envelope of its own",
        "# and hands every body over as bytes.",
        "enable_envvars_config=false",
        "decode_input_request=false",
        f"max_request_size={max_request_bytes()}",
        f"model_store={KSERVE_MODEL_STORE}",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
    ]
    return "\n".join(lines) + "\n"


def kserve_resources(options: ManifestOptions) -> dict:
    cores, memory = str(cpu_cores(options)), f"{memory_mi(options)}Mi"
    return {"requests": {"cpu": cores, "memory": memory}, "limits": {"cpu": cores, "memory": memory}}


def inference_service(options: ManifestOptions) -> dict:
    """The deprecated `kserve-torchserve` runtime, reading the storage layout from storageUri."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": f"{options.name}-torchserve", "labels": labels(options)},
        "spec": {
            "predictor": {
                "minReplicas": options.replicas,
                "maxReplicas": options.max_replicas or 3 * options.replicas,
                "model": {
                    "modelFormat": {"name": "pytorch"},
                    "runtime": "kserve-torchserve",
                    "protocolVersion": "v1",
                    "storageUri": options.storage_uri,
                    "resources": kserve_resources(options),
                },
            }
        },
    }


def custom_inference_service(options: ManifestOptions) -> dict:
    """The way off the deprecated runtime: this project's image as KServe's predictor container."""
    container = deployment(options)["spec"]["template"]["spec"]["containers"][0]
    predictor_container = {
        key: container[key]
        for key in ("image", "command", "env", "resources", "readinessProbe", "securityContext", "volumeMounts")
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": options.name, "labels": labels(options)},
        "spec": {
            "predictor": {
                "minReplicas": options.replicas,
                "maxReplicas": options.max_replicas or 3 * options.replicas,
                "containers": [
                    {
                        "name": "kserve-container",
                        **predictor_container,
                        "ports": [{"containerPort": CONTAINER_PORTS["http"], "protocol": "TCP"}],
                    }
                ],
                "volumes": deployment(options)["spec"]["template"]["spec"]["volumes"],
            }
        },
    }


def triton_documents(options: ManifestOptions) -> dict[str, dict]:
    """Our Triton ServingRuntime and one v2 InferenceService per model (serve/kserve_triton.py)."""
    documents = {
        "kserve/servingruntime-triton.yaml": kserve_triton.serving_runtime(
            options.image, labels(options), kserve_resources(options), STARTUP_TIMEOUT_S
        )
    }
    for archive in options.archives:
        documents[f"kserve/inferenceservice-triton-{archive.name}.yaml"] = kserve_triton.inference_service(
            archive,
            options.storage_uri,
            labels(options),
            options.replicas,
            options.max_replicas or 3 * options.replicas,
        )
    return documents


def extract_triton_export(archive: Path, out: Path) -> None:
    try:
        extract_export(archive, out)
    except (ValueError, KeyError, zipfile.BadZipFile, OSError) as e:
        raise ManifestError(f"{archive}: cannot take the export out of it ({e}); re-package it") from None


CORE_FILES = {
    "deployment.yaml": deployment,
    "service.yaml": service,
    "hpa.yaml": autoscaler,
    "pdb.yaml": disruption_budget,
    "networkpolicy.yaml": network_policy,
    "ingress.yaml": ingress,
}


def kustomization(options: ManifestOptions) -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(CORE_FILES)}


def write_documents(staging: Path, options: ManifestOptions) -> None:
    """Every object of the folder (and KServe's storage layout) into `staging`."""
    documents = {name: build(options) for name, build in CORE_FILES.items()}
    documents["kustomization.yaml"] = kustomization(options)
    if options.kserve:
        documents["kserve/inferenceservice-torchserve.yaml"] = inference_service(options)
        documents["kserve/inferenceservice.yaml"] = custom_inference_service(options)
    if options.kserve and options.server == "triton":
        documents |= triton_documents(options)
    for name, document in documents.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(yaml.safe_dump(document, sort_keys=False))
    if options.kserve:
        storage = staging / "kserve" / "storage"
        (storage / "config").mkdir(parents=True)
        (storage / "config" / "config.properties").write_text(kserve_config(options))
        (storage / "model-store").mkdir()
        for archive in options.archives:
            shutil.copyfile(archive.path, storage / "model-store" / archive.path.name)
            if options.server == "triton":
                extract_triton_export(archive.path, storage / "exports" / archive.name)


def generate(options: ManifestOptions) -> list[Path]:
    """Write the folder `options.out` (replacing one this function wrote before) and return its files."""
    if options.replicas < 1:
        raise ManifestError(f"--replicas must be at least 1, got {options.replicas}")
    if options.max_replicas is not None and options.max_replicas < options.replicas:
        raise ManifestError(f"--max-replicas {options.max_replicas} is below --replicas {options.replicas}")
    if options.threads_per_worker < 1:
        raise ManifestError(f"--threads-per-worker must be at least 1, got {options.threads_per_worker}")
    jvm_size_mi(options.frontend_heap)  # a malformed size fails here, before anything is written
    if not options.models:
        raise ManifestError("name at least one model (--models NAME...): <model-store>/NAME.mar")
    missing = [m for m in options.models if not (options.model_store / f"{m}.mar").is_file()]
    if missing:
        raise ManifestError(
            f"{', '.join(str(options.model_store / f'{m}.mar') for m in missing)} not found; package it with "
            f"python -m serve package --export-dir exports/NAME --model-store {options.model_store}"
        )
    options.archives = [read_archive(options.model_store / f"{m}.mar") for m in options.models]

    try:
        out = replace_owned_folder(
            options.out, MANIFESTS_KIND, lambda staging: write_documents(staging, options), "serve manifests"
        )
    except NotOwnedError as e:
        raise ManifestError(str(e)) from None
    return sorted(p for p in out.rglob("*") if p.is_file() and p.name != MARKER_NAME)
