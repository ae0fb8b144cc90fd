"""`python -m train manifests`: the PyTorchJob validates against the training-operator's own CRD schema and
its admission rules (tests/fixtures/kubeflow), and the validators refuse a broken job, so the check can fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from fsutil.owned import MARKER_NAME
from train.cli import main

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "kubeflow"
IMAGE = "registry.example.com/resnet-train:1.0"


def validators() -> list[jsonschema.protocols.Validator]:
    crd = json.loads((SCHEMAS / "pytorchjob-v1.schema.json").read_text())
    admission = json.loads((SCHEMAS / "pytorchjob-v1.admission-rules.schema.json").read_text())
    return [jsonschema.Draft7Validator(crd), jsonschema.Draft7Validator(admission)]


def errors(job: dict) -> list[str]:
    return [e.message for v in validators() for e in v.iter_errors(job)]


def generate(out: Path, *extra: str) -> int:
    return main(["manifests", "--arch", "resnet50", "--data", "imagenet", "--image", IMAGE, "--out", str(out), *extra])


@pytest.fixture
def job(tmp_path) -> dict:
    assert generate(tmp_path / "k8s", "--nodes", "2", "--gpus-per-node", "8", "--epochs", "90") == 0
    return yaml.safe_load((tmp_path / "k8s" / "pytorchjob.yaml").read_text())


def test_the_job_validates_and_runs_the_recipe_on_every_node(job):
    assert errors(job) == []
    spec = job["spec"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert spec["nprocPerNode"] == "8"
    assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2, "maxRestarts": 3}
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "ExitCode"
    (container,) = worker["template"]["spec"]["containers"]
    assert container["image"] == IMAGE and container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    command = container["command"]
    assert command[:3] == ["torchrun", "-m", "train"]
    text = " ".join(command)
    for part in ("--arch resnet50", "--epochs 90", "--data-dir /workspace/data/imagenet", "--out /workspace/runs"):
        assert part in text, text
    assert "--resume auto" in text and "--save-every-steps 1000" in text and "--device cuda" in text
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    assert volumes[mounts["/workspace"]]["persistentVolumeClaim"] == {"claimName": "training"}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_the_validators_refuse_a_broken_job(job):
    no_image = copy.deepcopy(job)
    del no_image["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"]
    assert any("'image' is a required property" in e for e in errors(no_image))
    negative = copy.deepcopy(job)
    negative["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = -1
    assert any("-1 is less than the minimum of 1" in e for e in errors(negative))
    wrong_type = copy.deepcopy(job)  # the CRD schema's own check
    wrong_type["spec"]["elasticPolicy"]["maxRestarts"] = "three"
    assert any("'three' is not of type 'integer'" in e.message for e in validators()[0].iter_errors(wrong_type))


def test_bad_options_and_foreign_folders_are_refused(tmp_path, capsys):
    assert generate(tmp_path / "a", "--nodes", "0", "--gpus-per-node", "8") == 2
    assert "--nodes must be at least 1" in capsys.readouterr().err
    assert generate(tmp_path / "b", "--nodes", "2", "--gpus-per-node", "8", "--resume", "x.pt") == 2
    assert "--resume auto" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert generate(foreign, "--nodes", "2", "--gpus-per-node", "8") == 2
    assert (foreign / "notes.txt").read_text() == "mine" and not (foreign / "pytorchjob.yaml").exists()

    ours = tmp_path / "ours"  # a folder this command wrote is replaced whole
    assert generate(ours, "--nodes", "2", "--gpus-per-node", "8") == 0
    assert generate(ours, "--nodes", "4", "--gpus-per-node", "0", "--min-nodes", "2") == 0
    job = yaml.safe_load((ours / "pytorchjob.yaml").read_text())
    assert sorted(p.name for p in ours.iterdir()) == sorted([MARKER_NAME, "pytorchjob.yaml"])
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 2 and job["spec"]["nprocPerNode"] == "1"
    assert (
        "nvidia.com/gpu"
        not in job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    assert errors(job) == []
