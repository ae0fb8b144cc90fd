"""`python -m train manifests`: a Kubeflow training-operator PyTorchJob (kubeflow.org/v1) for a recipe.

One Worker replica per node, each pod running `torchrun -m train` with the recipe's flags. The operator
turns the job's elasticPolicy and nprocPerNode into torchrun's settings (PET_NNODES, PET_NPROC_PER_NODE,
PET_RDZV_ENDPOINT, PET_RDZV_BACKEND, PET_MAX_RESTARTS), so the container command names none of them.
Data and runs live on one shared volume (a ReadWriteMany PersistentVolumeClaim) mounted at /workspace;
global rank 0 writes the run. A crashed worker restarts the group inside the pod (torchrun
--max-restarts); a pod that dies is recreated by the operator and continues the run with --resume auto.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from fsutil.owned import NotOwnedError, replace_owned_folder

from .config import TrainConfig

MANIFESTS_KIND = "train-manifests"  # the marker kind of a generated folder (fsutil.owned.mark_owned)
MOUNT = "/workspace"  # the shared volume in every pod: data/ and runs/
JOB_FILE = "pytorchjob.yaml"
DATA_WITHOUT_DIR = ("digits", "synthetic")  # built in: no --data-dir to point at the volume


@dataclass
class JobOptions:
    image: str
    nodes: int
    gpus_per_node: int
    out: Path
    train_args: list[str]  # the recipe's `python -m train` flags, as given
    volume_claim: str = "training"
    cpus_per_node: int | None = None
    memory_per_node: str | None = None
    min_nodes: int | None = None
    max_restarts: int = 3
    save_every_steps: int = 1000
    job_name: str | None = None


class ManifestError(ValueError):
    """The job cannot be generated as asked; the message says which option and what to do."""


def job_name(run_name: str) -> str:
    """A DNS-1123 label short enough for the operator's pod and service names (NAME-worker-12)."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")[:40].strip("-")
    if not name:
        raise ManifestError(f"cannot make a job name from {run_name!r}; pass --job-name")
    return name


def train_command(options: JobOptions, config: TrainConfig) -> list[str]:
    """The pod's command: torchrun (configured by the operator's PET_* variables) running the recipe."""
    args = ["torchrun", "-m", "train", *options.train_args]
    given = {a.split("=", 1)[0] for a in options.train_args if a.startswith("--")}
    if "--data-dir" not in given and config.data not in DATA_WITHOUT_DIR:
        args += ["--data-dir", f"{MOUNT}/data/{config.data}"]
    if "--name" not in given:
        args += ["--name", run_name(config)]
    if "--device" not in given:
        args += ["--device", "cuda" if options.gpus_per_node else "cpu"]
    return [*args, "--out", f"{MOUNT}/runs", "--resume", "auto", "--save-every-steps", str(options.save_every_steps)]


def run_name(config: TrainConfig) -> str:
    return config.name or f"{config.arch}-{config.data}"


def resources(options: JobOptions) -> dict:
    gpus = options.gpus_per_node
    cpus = options.cpus_per_node or max(4, 8 * gpus)  # data loading: ~8 decoding cores per GPU on ImageNet
    memory = options.memory_per_node or f"{max(16, 32 * gpus)}Gi"
    amounts = {"cpu": str(cpus), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pytorch_job(options: JobOptions, config: TrainConfig) -> dict:
    name = options.job_name or job_name(run_name(config))
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "training"}
    container = {
        "name": "pytorch",  # the operator's default container name: it injects torchrun's settings here
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": train_command(options, config),
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
            # a fresh rendezvous store for every restarted group (train/distributed.py SHARED_STORE_WARNING)
            {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
        ],
        "resources": resources(options),
        "volumeMounts": [{"name": "shared", "mountPath": MOUNT}, {"name": "shm", "mountPath": "/dev/shm"}],
    }
    pod = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "shared", "persistentVolumeClaim": {"claimName": options.volume_claim}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},  # DataLoader workers
            ],
        },
    }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nprocPerNode": str(options.gpus_per_node or 1),
            "elasticPolicy": {
                "rdzvBackend": "c10d",
                "minReplicas": options.min_nodes or options.nodes,
                "maxReplicas": options.nodes,
                "maxRestarts": options.max_restarts,
            },
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": options.max_restarts},
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": options.nodes,
                    # 1-127 (bad flags or data) fail the job; 128+ (killed, evicted, out of memory) restart the
                    # pod, which continues from the run's last.pt
                    "restartPolicy": "ExitCode",
                    "template": pod,
                }
            },
        },
    }


def check_options(options: JobOptions) -> None:
    if not options.image.strip():
        raise ManifestError("--image: name the training image (one with this project installed; see docs/multinode.md)")
    if options.nodes < 1:
        raise ManifestError(f"--nodes must be at least 1, got {options.nodes}")
    if options.gpus_per_node < 0:
        raise ManifestError(f"--gpus-per-node must be 0 (CPU) or more, got {options.gpus_per_node}")
    if options.min_nodes is not None and not 1 <= options.min_nodes <= options.nodes:
        raise ManifestError(f"--min-nodes must be between 1 and --nodes {options.nodes}, got {options.min_nodes}")
    if options.max_restarts < 0 or options.save_every_steps < 1:
        raise ManifestError("--max-restarts must be >= 0 and --save-every-steps >= 1")
    if "--resume" in {a.split("=", 1)[0] for a in options.train_args}:
        raise ManifestError("--resume: the job always passes --resume auto (a restarted pod continues its run)")


def generate(options: JobOptions, config: TrainConfig) -> list[Path]:
    """Write the folder `options.out` (replacing one this function wrote before) and return its files."""
    check_options(options)
    documents = {JOB_FILE: pytorch_job(options, config)}

    def write(staging: Path) -> None:
        for name, document in documents.items():
            (staging / name).write_text(yaml.safe_dump(document, sort_keys=False))

    try:
        out = replace_owned_folder(options.out, MANIFESTS_KIND, write, "train manifests")
    except NotOwnedError as e:
        raise ManifestError(str(e)) from None
    return [out / name for name in documents]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train manifests",
        description="Write a Kubeflow training-operator PyTorchJob (kubeflow.org/v1) that trains a recipe on "
        "N nodes x G GPUs: one Worker pod per node running torchrun, data and runs on a shared volume, "
        "--resume auto and checkpoints every --save-every-steps so restarts lose little. Every other flag "
        "(--arch, --data, --recipe, --epochs ...) is passed to `python -m train` in the pods.",
        epilog="example:\n  python -m train manifests --arch resnet50 --data imagenet --nodes 2 --gpus-per-node 8 \\\n"
        "      --image registry.example.com/resnet-train:1.0 --out k8s/train-resnet50\n"
        "  kubectl apply -f k8s/train-resnet50/pytorchjob.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", required=True, help="the training image (this project installed on a CUDA PyTorch base)")
    p.add_argument("--nodes", type=int, required=True, help="Worker pods, one per node")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (and training processes) per pod; 0: CPU")
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced only if this command wrote it)")
    p.add_argument(
        "--volume-claim", default="training", help="ReadWriteMany PVC holding data/ and runs/ (default: %(default)s)"
    )
    p.add_argument("--cpus-per-node", type=int, help="CPU request and limit per pod (default: 8 per GPU, at least 4)")
    p.add_argument("--memory-per-node", help="memory request and limit per pod (default: 32Gi per GPU, at least 16Gi)")
    p.add_argument("--min-nodes", type=int, help="elastic: keep training with this many nodes (default: --nodes)")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="worker group restarts in a pod, and pod retries (default: %(default)s)",
    )
    p.add_argument(
        "--save-every-steps", type=int, default=1000, help="checkpoint interval within an epoch (default: %(default)s)"
    )
    p.add_argument("--job-name", help="the PyTorchJob's name (default: from the run name)")
    return p
