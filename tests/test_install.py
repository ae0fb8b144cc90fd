"""The install's dependency groups: the base install (the serving runtime, all the Docker image gets)
is enough for our TorchServe handler to load a real export and classify a real image."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from serve.package import package
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules of the optional groups (train, export, loadtest, dev): a worker must need none.
OUTSIDE_THE_SERVING_GROUP = [
    "onnx", "onnxscript", "sklearn", "skimage", "matplotlib", "tensorboard", "tqdm", "locust", "timm",
    "pytest", "kubernetes_validate",
]  # fmt: skip

HANDLER_IN_A_SUBPROCESS = """
import json, sys, zipfile
from pathlib import Path

BLOCKED = json.loads(sys.argv[1])
for name in BLOCKED:
    sys.modules[name] = None  # as if not installed: importlib.util.find_spec gives None, import raises

import ts, yaml
from ts.context import Context, RequestProcessor
from serve.handler import ImageClassifierHandler

model_dir = Path(sys.argv[3])
zipfile.ZipFile(sys.argv[2]).extractall(model_dir)
manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
context = Context("digits", str(model_dir), manifest, config["batchSize"], None, ts.__version__, model_yaml_config=config)
handler = ImageClassifierHandler()
handler.initialize(context)
context.request_processor = [RequestProcessor({})]
context.request_ids = {0: "request-0"}
(answer,) = handler.handle([{"body": Path(sys.argv[4]).read_bytes()}], context)
print(json.dumps({"format": handler.classifier.runner.format, "answer": answer}))
"""


def test_optional_groups_do_not_leak_into_the_base_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for module in ("onnx>", "scikit", "locust", "matplotlib", "tensorboard", "timm"):
        assert module not in base, f"{module} is in the base (serving) dependencies"
    assert {"train", "export", "loadtest", "all", "dev"} <= set(project["optional-dependencies"])


def test_the_serving_group_suffices_for_the_handler(digits_export, tmp_path, valid_images):
    mar = package(digits_export, tmp_path / "store", name="digits", options=SERVED_PACKAGE_OPTIONS)
    image = tmp_path / "cat.jpg"
    image.write_bytes(valid_images["jpeg"])
    result = subprocess.run(
        [sys.executable, "-c", HANDLER_IN_A_SUBPROCESS, json.dumps(OUTSIDE_THE_SERVING_GROUP), str(mar),
         str(tmp_path / "model"), str(image)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["format"] == "onnx"
    assert len(found["answer"]) == SERVED_PACKAGE_OPTIONS.top_k
    assert all(0 <= p <= 1 for p in found["answer"].values())
