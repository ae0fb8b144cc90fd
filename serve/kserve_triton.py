"""KServe objects for Triton (`serve manifests --server triton --kserve`): KServe is removing its TorchServe
runtime, so each model can instead run as this project's image serving the Open Inference Protocol (v2)
with Triton, through a ServingRuntime of our own and one InferenceService per model.

The InferenceService's `storageUri` points at the model's export directory (manifest.json and artifacts,
taken out of its .mar into `kserve/storage/exports/NAME/`, sha256-checked); KServe mounts it at
/mnt/models, where `serve start --server triton --in-cluster --export-dir /mnt/models` serves it. Each
model's batching and instances come from its archive's model-config.yaml, as the model's `args`.
"""

from __future__ import annotations

RUNTIME = "resnet-deploy-triton"
MODEL_FORMAT = "resnet-deploy-export"
MOUNTED_EXPORT = "/mnt/models"  # where KServe's storage initializer puts storageUri
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 8081, 8082
RUN_DIR = "/tmp/serve"


def serving_runtime(image: str, labels: dict, resources: dict, startup_timeout_s: int) -> dict:
    command = ["python", "-m", "serve", "start", "--server", "triton", "--in-cluster", "--host", "0.0.0.0"]
    command += ["--port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT)]
    command += ["--export-dir", MOUNTED_EXPORT, "--name", "{{.Name}}", "--run-dir", RUN_DIR]
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": RUNTIME, "labels": labels},
        "spec": {
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": image,
                    "command": [*command, "--timeout", str(startup_timeout_s)],
                    "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
                    "resources": resources,
                    "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
                }
            ],
        },
    }


def inference_service(archive, storage_uri: str, labels: dict, replicas: int, max_replicas: int) -> dict:
    """One model (a `serve.kubernetes.ArchiveSpec`) on our Triton runtime, speaking v2."""
    args = ["--workers", str(archive.workers), "--batch-size", str(archive.batch_size)]
    args += ["--max-batch-delay", str(archive.max_batch_delay_ms)]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": archive.name, "labels": labels},
        "spec": {
            "predictor": {
                "minReplicas": replicas,
                "maxReplicas": max_replicas,
                "model": {
                    "modelFormat": {"name": MODEL_FORMAT},
                    "runtime": RUNTIME,
                    "protocolVersion": "v2",
                    "storageUri": f"{storage_uri.rstrip('/')}/exports/{archive.name}",
                    "args": args,
                },
            }
        },
    }
