"""A TorchServe worker loads only what serving needs: the session's real worker, serving the digits
export with ONNX Runtime, has neither `onnx` (the exporter's library) nor the libraries of training
(`imagedata` imports scikit-learn) or plotting loaded."""

from __future__ import annotations

import psutil
import requests

from serve.server import ServerInfo

# Compiled extensions that exist only once their package is imported; a worker's memory map shows them.
NOT_IN_A_WORKER = {
    "onnx": "/onnx/onnx_cpp2py_export",
    "scikit-learn (imagedata)": "/sklearn/",
    "scikit-image": "/skimage/",
    "matplotlib": "/matplotlib/",
}


def worker_processes(server: ServerInfo) -> list[psutil.Process]:
    frontend = psutil.Process(server.pid)
    return [p for p in frontend.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]


def test_a_serving_worker_has_no_onnx_and_no_training_code_loaded(torchserve: ServerInfo, valid_images):
    response = requests.post(
        f"{torchserve.inference_url}/predictions/digits",
        data=valid_images["png"],
        headers=torchserve.headers(),
        timeout=60,
    )
    assert response.status_code == 200, response.text  # the worker has loaded its runner and answered
    workers = worker_processes(torchserve)
    assert workers, "no TorchServe worker process found under the frontend"
    for worker in workers:
        mapped = [m.path for m in worker.memory_maps(grouped=True)]
        assert any("onnxruntime" in path for path in mapped), "the worker should be running ONNX Runtime"
        loaded = {name for name, marker in NOT_IN_A_WORKER.items() if any(marker in path for path in mapped)}
        assert not loaded, f"worker {worker.pid} loaded {sorted(loaded)}"
