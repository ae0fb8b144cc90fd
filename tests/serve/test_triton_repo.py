"""`python -m serve triton-repo`: the Triton model repository of real exports, without running Triton."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from export.manifest import read_manifest
from fsutil.atomic import sha256_file
from serve.budget import ImageCost
from serve.cli import main
from serve.package import PackageError, PackageOptions, package
from serve.store_models import unpack_store
from serve.triton_repo import MODEL_FILE, RepoOptions, write_repository


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


def test_a_model_store_s_archives_become_models_with_their_own_options(digits_export, tmp_path):
    """`serve start --server triton --model-store`: each archive read back as its export and its options."""
    packaged = PackageOptions(
        workers=3, batch_size=6, max_batch_delay_ms=9, top_k=2, max_images=5, cost=ImageCost(0.02, 0.003)
    )
    store = package(digits_export, tmp_path / "store", name="digits", options=packaged, log=lambda _: None).parent
    (stored,) = unpack_store(store, [], tmp_path / "unpacked", RepoOptions(max_request_bytes=1234))
    assert stored.name == "digits" and stored.options.cost == packaged.cost
    assert (stored.options.workers, stored.options.batch_size, stored.options.max_images) == (3, 6, 5)
    assert stored.options.max_request_bytes == 1234
    assert write_repository([stored.export_dir], tmp_path / "repo", [stored.name], [stored.options], print) == [
        "digits"
    ]
    config = (tmp_path / "repo" / "digits" / "config.pbtxt").read_text()
    assert config_value(config, "max_batch_size") == "6" and config_value(config, "count") == "3"
    assert config_value(config, "max_queue_delay_microseconds") == "9000" and "dims: [ 2 ]" in config
    assert parameter(config, "image_s") == "0.02" and parameter(config, "max_request_bytes") == "1234"


def test_an_archive_that_is_not_one_is_refused_with_its_path(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "digits.mar").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(PackageError, match=r"digits\.mar: not a model archive that serve package wrote"):
        unpack_store(store, [], tmp_path / "unpacked", RepoOptions())
