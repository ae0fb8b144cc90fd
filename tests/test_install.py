"""The install's dependency groups: the base install (the serving runtime, all the Docker image gets)
is enough for our TorchServe handler to load a real export and classify a real image, and for the
`serve` and remote `client` command lines.

The proof runs in a subprocess where every module that only the optional groups (train, export,
loadtest, dev) bring in is unimportable, as in an environment that has only the base install."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from scripts.constraints import PROJECT, installed_closure, project_requirements
from serve.package import package
from tests.fixtures.served import SERVED_PACKAGE_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
# Every environment pip made has these; the slim Python image does too.
ALWAYS_PRESENT = {"pip", "setuptools", "wheel"}
OUR_PACKAGES = {
    "fsutil",
    "hostinfo",
    "imagedata",
    "models",
    "train",
    "export",
    "classify",
    "serve",
    "client",
    "benchmarks",
    "tests",
    "scripts",
}


def modules_outside_the_serving_group() -> list[str]:
    serving = installed_closure(project_requirements(set())) | ALWAYS_PRESENT
    optional = installed_closure(project_requirements({"dev"})) - serving
    assert optional, "the dev install is not present here: run ./install.sh"
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        names = {canonicalize_name(d) for d in dists}
        if names <= optional and re.fullmatch(r"[A-Za-z_]\w*", module) and module not in OUR_PACKAGES:
            blocked.add(module)
    return sorted(blocked)


HANDLER_IN_A_SUBPROCESS = """
import json, sys, zipfile
from pathlib import Path

already = sorted(m for m in sys.modules if m.partition(".")[0] in json.loads(sys.argv[1]))
assert not already, f"imported before blocking: {already}"
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # as if not installed: importlib.util.find_spec gives None, import raises

import ts, yaml
from ts.context import Context, RequestProcessor
from serve.__main__ import build_parser  # the image's CMD and HEALTHCHECK
from serve.handler import ImageClassifierHandler
import client.cli  # the remote client

answers = {}
for mar in sys.argv[3:]:
    model_dir = Path(sys.argv[2]) / Path(mar).stem
    zipfile.ZipFile(mar).extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = Context(Path(mar).stem, str(model_dir), manifest, config["batchSize"], None, ts.__version__,
                      model_yaml_config=config)
    handler = ImageClassifierHandler()
    handler.initialize(context)
    context.request_processor = [RequestProcessor({})]
    context.request_ids = {0: "request-0"}
    (answer,) = handler.handle([{"body": Path(sys.argv[2], "image.jpg").read_bytes()}], context)
    answers[handler.classifier.runner.format] = answer
training_code = sorted(m for m in sys.modules if m == "train" or m.startswith("train."))
print(json.dumps({"answers": answers, "training_code": training_code}))
"""


def test_optional_groups_do_not_leak_into_the_base_install():
    base = {canonicalize_name(r.name) for r in project_requirements(set())}
    for name in ("onnx", "onnxscript", "scikit-learn", "scikit-image", "locust", "matplotlib", "tensorboard", "timm"):
        assert name not in base, f"{name} is in the base (serving) dependencies"
    assert {"train", "export", "loadtest", "all", "dev"} <= set(PROJECT["optional-dependencies"])
    everything = {canonicalize_name(r.name) for r in project_requirements({"all"})}
    for extra in ("train", "export", "loadtest"):
        assert {canonicalize_name(r.name) for r in project_requirements({extra})} <= everything


def test_the_blocked_modules_are_the_optional_groups():
    blocked = modules_outside_the_serving_group()
    for module in ("onnx", "sklearn", "skimage", "matplotlib", "tensorboard", "locust", "timm", "pytest"):
        assert module in blocked
    for module in ("torch", "torchvision", "onnxruntime", "PIL", "numpy", "ts", "yaml", "requests"):
        assert module not in blocked


def test_the_serving_group_suffices_for_the_handler(digits_export, tmp_path, valid_images):
    mars = [
        package(
            digits_export,
            tmp_path / "store",
            name=f"digits-{backend}",
            options=dataclasses.replace(SERVED_PACKAGE_OPTIONS, backend=backend),
        )
        for backend in ("onnx", "torchscript")
    ]
    (tmp_path / "image.jpg").write_bytes(valid_images["jpeg"])
    blocked = modules_outside_the_serving_group()
    result = subprocess.run(
        [sys.executable, "-c", HANDLER_IN_A_SUBPROCESS, json.dumps(blocked), str(tmp_path), *map(str, mars)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(found["answers"]) == {"onnx", "torchscript"}
    for answer in found["answers"].values():
        assert len(answer) == SERVED_PACKAGE_OPTIONS.top_k
        assert all(0 <= p <= 1 for p in answer.values())
    assert found["training_code"] == [], "a TorchServe worker must not import training code"
