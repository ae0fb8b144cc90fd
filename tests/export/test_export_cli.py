"""`python -m export` end to end on the real digits checkpoint: artifacts, parity, manifest, exit codes.

The session fixture `digits_export_run` is the real command in a subprocess; the other command lines
here run `export.cli.main` in-process (same code, no second interpreter start on a 2-core CI box).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export.cli import main as export_main
from export.manifest import ExportError, ManifestError, read_manifest, sha256_file
from export.runners import open_runner, runner_from_checkpoint
from export.tensorrt_engine import tensorrt_missing_reason
from imagedata.digits import digits_split, write_digits_folder
from models import load_checkpoint


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = export_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def digit_batch(digits_checkpoint) -> torch.Tensor:
    """48 real validation digits, normalised with the checkpoint's preprocessing."""
    from models import normalize_batch

    images, _ = digits_split("val")
    return normalize_batch(images[:48], load_checkpoint(digits_checkpoint).preprocess)


def test_export_writes_both_formats_and_passes_parity_on_real_digits(digits_export_run):
    out = digits_export_run.process.stdout
    manifest = read_manifest(digits_export_run.export_dir)
    assert [a.format for a in manifest.artifacts] == ["torchscript", "onnx"]
    for artifact in manifest.artifacts:
        parity = artifact.parity
        assert parity["passed"] and parity["failures"] == [], parity
        assert parity["data"].startswith("validation split of 'digits'"), parity["data"]
        by_batch = parity["metrics"]["by_batch_size"]
        assert set(by_batch) == {"1", "16"}, "batch 1 and a larger batch are both checked"
        assert by_batch["16"]["samples"] == 360 and by_batch["1"]["samples"] >= 16  # the whole validation split
        assert parity["metrics"]["top1_agreement"] == 1.0 and parity["metrics"]["allclose"] is True
        assert parity["thresholds"]["min_top1_agreement"] == 1.0 and parity["thresholds"]["rtol"] == 1e-3
        # the parity images are real digits: the model classifies them as well as its validation says
        assert by_batch["16"]["reference_top1"] >= 0.9
        assert by_batch["16"]["artifact_top1"] == by_batch["16"]["reference_top1"]
    # one progress line per step, then the summary table
    assert [line.split("]")[0] for line in out.splitlines() if line.startswith("[")] == [
        "[1/5",
        "[2/5",
        "[3/5",
        "[4/5",
        "[5/5",
    ]
    assert "RANDOM" not in out and "dynamo exporter, opset 18" in out
    table = out[out.index("format ") :].splitlines()
    assert table[2].startswith("torchscript") and table[2].endswith("passed")
    assert table[3].startswith("onnx") and table[3].endswith("passed")


def test_manifest_is_complete_and_its_sha256s_match(digits_export_run, digits_checkpoint):
    export_dir = digits_export_run.export_dir
    manifest = json.loads((export_dir / "manifest.json").read_text())
    ckpt = load_checkpoint(digits_checkpoint)
    assert manifest["schema_version"] == 1 and manifest["name"] == "digits"
    assert manifest["arch"] == ckpt.arch == "resnet20"
    assert manifest["arch_kwargs"] == ckpt.arch_kwargs
    assert manifest["num_classes"] == 10 and manifest["class_names"] == ckpt.class_names
    assert manifest["preprocess"] == ckpt.preprocess.to_dict()
    assert manifest["input"] == {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [-1, 3, 32, 32]}
    assert manifest["output"]["name"] == "logits" and manifest["output"]["shape"] == [-1, 10]
    source = manifest["source_checkpoint"]
    assert source["path"] == str(digits_checkpoint.resolve())
    assert source["sha256"] == sha256_file(digits_checkpoint)
    assert source["metrics"] == ckpt.metrics
    assert {"python", "torch", "torchvision", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["versions"]["torch"] == torch.__version__
    for artifact in manifest["artifacts"]:
        assert artifact["sha256"] == sha256_file(export_dir / artifact["file"]), artifact["file"]
        assert artifact["precision"] == "fp32" and artifact["batch_sizes"]["min"] == 1
    onnx_entry = manifest["artifacts"][1]
    assert onnx_entry["exporter"] in ("dynamo", "torchscript") and onnx_entry["opset"] == 18
    assert (onnx_entry["input_name"], onnx_entry["output_name"]) == ("input", "logits")


def test_onnx_runs_in_a_fresh_onnxruntime_session_at_batch_1_3_16(digits_export, digits_checkpoint, digit_batch):
    model_path = digits_export / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)
    assert {o.version for o in onnx.load(str(model_path)).opset_import if o.domain in ("", "ai.onnx")} == {18}
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert graph_input.name == "input" and graph_output.name == "logits"
    assert isinstance(graph_input.shape[0], str), "the batch dimension is dynamic"
    reference = runner_from_checkpoint(digits_checkpoint)
    for batch in (1, 3, 16):
        images = digit_batch[:batch]
        (logits,) = session.run(["logits"], {"input": images.numpy()})
        assert logits.shape == (batch, 10)
        expected = reference.predict(images)
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-3, atol=1e-4)
        assert (torch.from_numpy(logits).argmax(1) == expected.argmax(1)).all()


def test_torchscript_loads_with_plain_torch_jit_load_without_our_code(
    digits_export, digits_checkpoint, digit_batch, tmp_path
):
    """A fresh isolated interpreter (-I: no PYTHONPATH, no cwd on sys.path) that never imports our packages."""
    inputs = tmp_path / "batch.pt"
    torch.save(digit_batch[:5], inputs)
    script = (
        "import sys, torch\n"
        f"module = torch.jit.load({str(digits_export / 'model.ts')!r})\n"
        f"logits = module(torch.load({str(inputs)!r}))\n"
        "assert not any(m.split('.')[0] in ('models', 'export', 'train') for m in sys.modules), 'our code was imported'\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    expected = runner_from_checkpoint(digits_checkpoint).predict(digit_batch[:5])
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=1e-3, atol=1e-4)


def test_open_runner_prefers_onnx_on_cpu_and_every_runner_agrees(digits_export, digits_checkpoint, digit_batch):
    runner = open_runner(digits_export, threads=1)
    assert runner.format == "onnx" and runner.device == "cpu"
    assert runner.class_names == [str(i) for i in range(10)] and runner.preprocess.input_size == 32
    expected = runner_from_checkpoint(digits_checkpoint).predict(digit_batch)
    for fmt in ("onnx", "torchscript"):
        logits = open_runner(digits_export, fmt, threads=1).predict(digit_batch)
        assert logits.dtype == torch.float32 and logits.shape == (48, 10)
        torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ExportError, match="no trt artifact"):
        open_runner(digits_export, "trt")


def test_a_perturbed_artifact_fails_parity_and_the_command_exits_nonzero(digits_export, tmp_path, capsys):
    """Nudge the classifier weights inside model.onnx, as a broken exporter or a bad copy would."""
    export_dir = tmp_path / "digits"
    shutil.copytree(digits_export, export_dir)
    model = onnx.load(str(export_dir / "model.onnx"))
    fc_weight = next(i for i in model.graph.initializer if tuple(i.dims) == (10, 64))
    weights = numpy_helper.to_array(fc_weight)
    rng = np.random.default_rng(0)
    fc_weight.CopyFrom(
        numpy_helper.from_array(
            weights + 0.01 * weights.std() * rng.standard_normal(weights.shape).astype(np.float32), fc_weight.name
        )
    )
    onnx.save(model, str(export_dir / "model.onnx"))

    with pytest.raises(ManifestError, match="sha256"):
        open_runner(export_dir, "onnx")  # the changed file no longer matches the manifest

    manifest_before = (export_dir / "manifest.json").read_bytes()
    code, out, err = run_cli(capsys, "--verify", export_dir)
    assert code == 1, out  # a changed file is never loaded nor re-accepted by --verify alone
    assert "model.onnx (onnx) changed since export" in err and "--accept-changed onnx" in err
    assert (export_dir / "manifest.json").read_bytes() == manifest_before

    code, out, _ = run_cli(capsys, "--verify", export_dir, "--accept-changed", "onnx")
    assert code == 1, out  # accepted, then checked: the nudged weights fail parity
    assert "accepted as asked (--accept-changed onnx)" in out
    manifest = read_manifest(export_dir)
    ts, onnx_entry = manifest.artifacts
    assert ts.passed is True
    assert onnx_entry.passed is False
    assert any("not allclose" in f for f in onnx_entry.parity["failures"]), onnx_entry.parity
    assert onnx_entry.sha256 == sha256_file(export_dir / "model.onnx")
    [accepted] = onnx_entry.details["accepted_changes"]
    assert (
        accepted["sha256"] == onnx_entry.sha256 and accepted["previous_sha256"] != onnx_entry.sha256 and accepted["at"]
    )
    assert "onnx FAILED parity" in out
    assert any(line.startswith("onnx ") and line.endswith("FAILED") for line in out.splitlines())

    # the server side: a failed artifact is refused unless forced, and the default skips it
    with pytest.raises(ExportError, match="FAILED its parity check"):
        open_runner(export_dir, "onnx")
    assert open_runner(export_dir, "onnx", allow_failed=True).format == "onnx"
    assert open_runner(export_dir).format == "torchscript"


def test_to_all_without_tensorrt_exports_the_rest_from_the_newest_run(digits_checkpoint, tmp_path, monkeypatch, capsys):
    """No --checkpoint/--out/--name: the newest runs/**/best.pt, exports/<arch>/, TensorRT reported skipped."""
    if tensorrt_missing_reason() is None:
        pytest.skip("TensorRT and CUDA are present here: `--to all` builds the engine instead of skipping it")
    older = tmp_path / "runs" / "old" / "best.pt"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"")  # an empty file: exporting it would fail, so the newest must be chosen
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    newest = tmp_path / "runs" / "digits" / "best.pt"
    newest.parent.mkdir(parents=True)
    shutil.copy(digits_checkpoint, newest)
    folder = write_digits_folder(tmp_path / "digit_pngs", limit_per_class=4)
    monkeypatch.chdir(tmp_path)

    code, out, _ = run_cli(capsys, "--to", "all", "--parity-data", folder, "--parity-batch", "8")
    assert code == 0, out
    assert f"using the newest best.pt under runs/: {newest.relative_to(tmp_path)}" in out
    manifest = read_manifest(tmp_path / "exports" / "resnet20")
    assert manifest.name == "resnet20"
    from export.aoti import bf16_missing_reason

    bf16 = [] if bf16_missing_reason() else ["aoti-bf16"]
    assert [a.format for a in manifest.artifacts] == ["torchscript", "onnx", "onnx-int8", "aoti", *bf16]
    # 40 labelled images cannot judge half a point of accuracy: reduced precision passes, but not for default use
    assert (
        not manifest.find("onnx-int8").default_ok
        and "only 40 labelled images" in (manifest.find("onnx-int8").parity["default_use"]["reason"])
    )
    for artifact in manifest.artifacts:
        assert artifact.passed
        assert artifact.parity["data"] == f"image folder {folder}: 40 images"
        assert set(artifact.parity["metrics"]["by_batch_size"]) == {"1", "8"}
    assert manifest.find("onnx-int8").details["calibration"]["data"].startswith("training split of 'digits'")
    assert "trt  " in out and "skipped" in out and "trt skipped: TensorRT export is not possible" in out


def test_to_trt_without_tensorrt_says_what_is_missing_and_exits_nonzero(digits_checkpoint, tmp_path, capsys):
    reason = tensorrt_missing_reason()
    if reason is None:
        pytest.skip("TensorRT and CUDA are present here, so `--to trt` builds an engine")
    code, out, err = run_cli(capsys, "--to", "trt", "--checkpoint", digits_checkpoint, "--out", tmp_path / "x")
    assert code == 3
    assert "TensorRT export is not possible on this machine" in err
    assert ("`tensorrt` Python package is not installed" in err) or ("no CUDA device" in err)
    assert "pip install -e '.[trt]'" in err and "--build-arg EXTRAS=gpu,trt" in err
    assert not (tmp_path / "x").exists(), "nothing is written before failing"


def test_no_checkpoint_anywhere_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--to", "onnx")
    assert code == 2
    assert f"no checkpoint given and no best.pt found under {tmp_path / 'runs'}" in err
    assert "--checkpoint PATH" in err and "Traceback" not in err + out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "missing.pt"], "missing.pt: no such file"),
        (["--to", "tflite"], "unknown format(s) ['tflite']"),
        (["--min-batch", "4", "--opt-batch", "2"], "1 <= min <= opt <= max"),
        (["--parity-batch", "64"], "--parity-batch 64 must lie within"),
        (["--parity-data", "no/such/dir"], "--parity-data no/such/dir: no such directory"),
        (
            ["--to", "onnx-int8", "--calibration-data", "no/such/dir"],
            "--calibration-data no/such/dir: no such directory",
        ),
        (["--to", "onnx-int8", "--calibration-samples", "0"], "--calibration-samples must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args, message, digits_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(digits_checkpoint), *args]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "exports").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: --device cuda runs the parity checks there")
def test_device_cuda_without_cuda_exits_3(digits_checkpoint, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--checkpoint", digits_checkpoint, "--device", "cuda", "--out", tmp_path / "x")
    assert code == 3 and "PyTorch sees no CUDA device" in err
    assert not (tmp_path / "x").exists()


def test_exporting_one_format_into_an_existing_export_keeps_the_others(
    digits_export, digits_checkpoint, tmp_path, capsys
):
    """How a TensorRT engine gets added on a GPU machine to an export made on a CPU one."""
    export_dir = tmp_path / "digits"
    shutil.copytree(digits_export, export_dir)
    onnx_before = read_manifest(export_dir).find("onnx")
    code, out, _ = run_cli(
        capsys, "--to", "torchscript", "--checkpoint", digits_checkpoint, "--out", export_dir, "--name", "digits"
    )
    assert code == 0, out
    assert "keeping the existing onnx artifact(s) of the same checkpoint" in out
    manifest = read_manifest(export_dir)
    assert [a.format for a in manifest.artifacts] == ["torchscript", "onnx"]
    assert manifest.find("onnx") == onnx_before


def test_verify_without_the_source_checkpoint_says_how_to_proceed(digits_export, tmp_path, capsys):
    export_dir = tmp_path / "digits"
    shutil.copytree(digits_export, export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["source_checkpoint"]["path"] = str(tmp_path / "moved" / "best.pt")
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "--verify", export_dir)
    assert code == 2 and "its source checkpoint" in err and "is gone; pass the same checkpoint with --checkpoint" in err


def test_without_labelled_images_the_accuracy_gate_is_recorded_as_not_run_and_the_exit_says_so(
    digits_checkpoint, tmp_path, capsys
):
    """The checkpoint's data is gone: parity can only run on random pixels. The export is written, its
    manifest says the accuracy gate did not run, and the exit status is 1 unless --random-parity asked for it."""
    ckpt = load_checkpoint(digits_checkpoint)
    ckpt.config = dict(ckpt.config, data="folder", data_dir=str(tmp_path / "gone"))
    checkpoint = tmp_path / "orphan.pt"
    ckpt.save(checkpoint)
    args = ["--checkpoint", str(checkpoint), "--to", "onnx", "--parity-samples", "8", "--parity-batch", "4"]
    assert export_main([*args, "--out", str(tmp_path / "a")]) == 1
    assert "--random-parity" in capsys.readouterr().err
    gate = read_manifest(tmp_path / "a").extra["accuracy_gate"]
    assert gate["run"] is False and "RANDOM" in gate["reason"]
    assert export_main([*args, "--out", str(tmp_path / "b"), "--random-parity"]) == 0
    assert read_manifest(tmp_path / "b").extra["accuracy_gate"]["run"] is False
