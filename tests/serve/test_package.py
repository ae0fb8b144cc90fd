"""`python -m serve package`: what goes into the .mar, and the clear refusals."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import yaml

from serve.__main__ import main


def package_cli(capsys, *args) -> tuple[int, str, str]:
    status = main(["package", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def export_copy(digits_export, tmp_path):
    """A private copy of the digits export that a test may damage."""
    return shutil.copytree(digits_export, tmp_path / "export")


def edit_manifest(export_dir, edit) -> None:
    path = export_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def fail_parity(fmt):
    def edit(manifest):
        for artifact in manifest["artifacts"]:
            if artifact["format"] == fmt:
                artifact["parity"]["passed"] = False

    return edit


def test_archive_holds_handler_manifest_artifacts_and_model_config(capsys, digits_export, tmp_path):
    status, out, err = package_cli(
        capsys,
        "--export-dir",
        digits_export,
        "--model-store",
        tmp_path,
        "--name",
        "digits",
        "--workers",
        3,
        "--batch-size",
        4,
        "--max-batch-delay",
        7,
        "--top-k",
        3,
        "--max-images",
        5,
        "--max-request-pixels",
        1000000,
        "--image-seconds",
        2,
        "--megapixel-seconds",
        0.01,
    )
    assert status == 0, err
    mar = tmp_path / "digits.mar"
    assert f"wrote {mar}" in out and "python -m serve start" in out
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        config = yaml.safe_load(archive.read("model-config.yaml"))
        mar_manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert archive.read("manifest.json") == (digits_export / "manifest.json").read_bytes()
    files = {a["file"] for a in json.loads((digits_export / "manifest.json").read_text())["artifacts"]}
    assert {"handler.py", "manifest.json", "model-config.yaml", *files} <= names
    assert config == {
        "minWorkers": 3,
        "maxWorkers": 3,
        "batchSize": 4,
        "maxBatchDelay": 7,
        "responseTimeout": 60,
        "jobQueueSize": 3 * 4 * 3,  # workers x batch x the calls that fit in the timeout after one's own
        "handler": {
            "top_k": 3,
            "max_images": 5,
            "max_request_pixels": 1000000,
            "cost": {"image_s": 2.0, "megapixel_s": 0.01},
            "cost_source": "given",
        },
    }
    assert "per-call budget: 15.0 s" in out
    assert mar_manifest["model"]["modelName"] == "digits" and mar_manifest["model"]["handler"] == "handler.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.mar"]  # no staging leftovers


def test_backend_pins_one_artifact(capsys, digits_export, tmp_path):
    status, _, err = package_cli(capsys, "--export-dir", digits_export, "--model-store", tmp_path, "--backend", "onnx")
    assert status == 0, err
    (mar,) = tmp_path.glob("*.mar")
    with zipfile.ZipFile(mar) as archive:
        assert not any(n.endswith(".ts") for n in archive.namelist())
        assert yaml.safe_load(archive.read("model-config.yaml"))["handler"]["backend"] == "onnx"


def test_missing_export_dir_is_a_clear_error(capsys, tmp_path):
    status, _, err = package_cli(capsys, "--export-dir", tmp_path / "nope", "--model-store", tmp_path / "store")
    assert status == 1 and "no export manifest here" in err and "python -m export" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_broken_manifest_is_a_clear_error(capsys, export_copy, tmp_path):
    (export_copy / "manifest.json").write_text("{not json")
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path / "store")
    assert status == 1 and "not valid JSON" in err


def test_failed_artifact_is_refused_unless_forced(capsys, export_copy, tmp_path):
    edit_manifest(export_copy, fail_parity("onnx"))
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path, "--backend", "onnx")
    assert status == 1 and "FAILED its parity check" in err and "--allow-failed" in err
    status, _, err = package_cli(
        capsys, "--export-dir", export_copy, "--model-store", tmp_path, "--backend", "onnx", "--allow-failed"
    )
    assert status == 0, err
    # without --backend, only the artifacts that passed go in
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path / "auto")
    assert status == 0, err
    with zipfile.ZipFile(next((tmp_path / "auto").glob("*.mar"))) as archive:
        assert not any(n.endswith(".onnx") for n in archive.namelist())


def test_no_passing_artifact_and_missing_files_are_refused(capsys, export_copy, tmp_path):
    edit_manifest(export_copy, lambda m: [a["parity"].update(passed=False) for a in m["artifacts"]])
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path)
    assert status == 1 and "no artifact passed its parity check" in err

    edit_manifest(export_copy, lambda m: [a["parity"].update(passed=True) for a in m["artifacts"]])
    artifact = json.loads((export_copy / "manifest.json").read_text())["artifacts"][0]["file"]
    (export_copy / artifact).unlink()
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path)
    assert status == 1 and "file is missing" in err


def test_bad_options_are_refused(capsys, digits_export, tmp_path):
    status, _, err = package_cli(capsys, "--export-dir", digits_export, "--model-store", tmp_path, "--allow-failed")
    assert status == 1 and "--allow-failed needs --backend" in err
    status, _, err = package_cli(capsys, "--export-dir", digits_export, "--model-store", tmp_path, "--workers", 0)
    assert status == 1 and "--workers must be at least 1" in err
    status, _, err = package_cli(capsys, "--export-dir", digits_export, "--model-store", tmp_path, "--name", "../evil")
    assert status == 1 and "model name '../evil'" in err


def test_duplicate_class_names_are_refused(capsys, export_copy, tmp_path):
    """The answer is {class name: probability}: two classes of one name would silently merge."""

    def duplicate(manifest):
        manifest["class_names"][3] = manifest["class_names"][1]

    edit_manifest(export_copy, duplicate)
    status, _, err = package_cli(capsys, "--export-dir", export_copy, "--model-store", tmp_path / "store")
    assert status == 1
    assert "class names must be unique" in err and "'1'" in err and "export again" in err
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.mar"))


def test_a_symlinked_artifact_is_refused_even_with_its_checksum(capsys, export_copy, tmp_path):
    """A link to a secret (the server's key file) with the secret's sha256 in the manifest never gets
    into an archive as the model."""
    from fsutil.atomic import sha256_file

    secret = tmp_path / "key_file.json"
    secret.write_text('{"management": {"key": "s3cret"}}')
    manifest = json.loads((export_copy / "manifest.json").read_text())
    artifact = manifest["artifacts"][0]
    (export_copy / artifact["file"]).unlink()
    (export_copy / artifact["file"]).symlink_to(secret)
    edit_manifest(export_copy, lambda m: m["artifacts"][0].update(sha256=sha256_file(secret)))
    status, _, err = package_cli(
        capsys, "--export-dir", export_copy, "--model-store", tmp_path / "store", "--backend", artifact["format"]
    )
    assert status == 1 and "symbolic link" in err and artifact["file"] in err
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.mar"))


def test_the_per_call_budget_lowers_what_does_not_fit_the_timeout(capsys, digits_export, tmp_path):
    """At 5 s a photo a 60 s timeout allows 15 s calls: 3 photos, so batches and requests of 3; with
    the cost measured here (no flags) the archive carries that measurement."""
    args = ["--export-dir", digits_export, "--model-store", tmp_path, "--batch-size", 8]
    status, out, err = package_cli(capsys, *args, "--image-seconds", 5, "--megapixel-seconds", 0)
    assert status == 0, err
    assert "batch size lowered from 8 to 3, images per request lowered from 32 to 3" in out
    status, _, err = package_cli(capsys, *args, "--image-seconds", 20, "--megapixel-seconds", 0)
    assert status == 1 and "raise the response timeout to at least 80 s" in err
    status, _, err = package_cli(capsys, *args, "--image-seconds", 1)
    assert status == 1 and "go together" in err
    status, out, err = package_cli(capsys, *args)
    assert status == 0 and "ms per photo" in out, err
    with zipfile.ZipFile(next(tmp_path.glob("*.mar"))) as archive:
        handler = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
    assert handler["cost"]["image_s"] > 0 and handler["cost"]["megapixel_s"] > 0
    assert handler["cost_source"] == "measured"  # each worker checks it again on load
