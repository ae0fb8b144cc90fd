"""`python -m serve triton-repo`: the Triton model repository of real exports, without running Triton."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from export.manifest import read_manifest
from fsutil.atomic import sha256_file
from serve.cli import main
from serve.triton_repo import MODEL_FILE


def config_value(config: str, key: str) -> str:
    return re.search(rf"{key}: (\S+)", config).group(1)


def parameter(config: str, key: str) -> str:
    return re.search(rf'key: "{key}" value: {{ string_value: "([^"]*)" }}', config).group(1)


def test_repository_holds_config_model_and_checked_artifacts(digits_export, tmp_path, capsys):
    out = tmp_path / "repo"
    args = ["triton-repo", f"--export-dir={digits_export}", "--name=digits", f"--out={out}"]
    assert main([*args, "--batch-size=8", "--workers=3", "--max-batch-delay=7", "--max-images=4", "--top-k=3"]) == 0
    assert "digits" in capsys.readouterr().out
    config = (out / "digits" / "config.pbtxt").read_text()
    assert config_value(config, "backend") == '"python"'
    assert config_value(config, "max_batch_size") == "8"
    assert config_value(config, "max_queue_delay_microseconds") == "7000"
    assert config_value(config, "count") == "3"
    assert parameter(config, "max_images") == "4" and parameter(config, "top_k") == "3"
    assert "dims: [ 3 ]" in config  # the top-k outputs
    # the per-call work budget, as in TorchServe's model-config: a quarter of the response timeout, and the
    # per-image cost measured here on the artifact a CPU instance serves
    assert float(parameter(config, "call_s")) == 60 / 4
    assert float(parameter(config, "image_s")) > 0 and float(parameter(config, "megapixel_s")) >= 0
    assert parameter(config, "cost_source") == "measured"
    assert (out / "digits" / "1" / "model.py").read_text() == MODEL_FILE.read_text()
    served = out / "digits" / "1" / "export"
    for artifact in read_manifest(served).artifacts:
        assert sha256_file(served / artifact.file) == artifact.sha256


def test_a_changed_artifact_is_refused(digits_export, tmp_path, capsys):
    export = shutil.copytree(digits_export, tmp_path / "export")
    artifact = read_manifest(export).artifacts[0]
    with open(export / artifact.file, "ab") as f:
        f.write(b"tampered")
    assert main(["triton-repo", f"--export-dir={export}", f"--out={tmp_path / 'repo'}"]) == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_only_a_repository_this_command_wrote_is_replaced(digits_export, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["triton-repo", f"--export-dir={digits_export}", f"--out={foreign}"]) == 1
    assert "not written by serve triton-repo" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    for top_k in (5, 2):
        assert (
            main(["triton-repo", f"--export-dir={digits_export}", "--name=d", f"--out={ours}", f"--top-k={top_k}"]) == 0
        )
    assert parameter((ours / "d" / "config.pbtxt").read_text(), "top_k") == "2"
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]
