"""`python -m export --to onnx-int8`: real ONNX Runtime static quantization of the digits model, its
calibration data, its parity gate, and how runners and archives pick it up.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from export.cli import main as export_main
from export.manifest import ExportError, read_manifest
from export.runners import open_runner, runner_for_artifact, runner_from_checkpoint
from imagedata.digits import digits_split, write_digits_folder
from models import load_checkpoint, normalize_batch
from serve.package import package


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = export_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def int8_export(digits_checkpoint, tmp_path_factory):
    """`--to onnx-int8` alone: ONNX is exported first (the int8 file is made from it), calibrated on the
    checkpoint's own training split."""
    export_dir = tmp_path_factory.mktemp("int8") / "digits"
    code = export_main(
        [
            "--checkpoint",
            str(digits_checkpoint),
            "--to",
            "onnx-int8",
            "--out",
            str(export_dir),
            "--name",
            "digits",
            "--threads",
            "2",
        ]
    )
    assert code == 0
    return export_dir


def test_int8_artifact_is_quantized_calibrated_on_training_data_and_passes_its_gate(int8_export):
    manifest = read_manifest(int8_export)
    assert [a.format for a in manifest.artifacts] == ["onnx", "onnx-int8"]
    fp32, int8 = manifest.artifacts
    assert int8.file == "model.int8.onnx" and int8.precision == "int8" and int8.device == "cpu"
    assert int8.details["built_from"] == "model.onnx"
    # the libraries that made each file, per artifact (the fp32 file's exporter, the int8 file's quantizer)
    assert int8.details["versions"] == {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
    assert fp32.details["versions"]["torch"] == torch.__version__
    calibration = int8.details["calibration"]
    assert calibration["data"].startswith("training split of 'digits'") and calibration["samples"] == 256
    assert calibration["method"] == "percentile" and calibration["percentile"] == 99.999
    parity = int8.parity
    assert parity["passed"], parity["failures"]
    assert parity["thresholds"] == {
        "min_top1_agreement": 0.99,
        "rtol": None,
        "atol": None,
        "min_cosine": 0.98,
        "max_top1_drop": 0.005,
        "min_labelled": 300,
    }
    default_use = parity["default_use"]
    assert default_use["qualified"] and default_use["labelled_samples"] == 360 and default_use["top1_drop"] <= 0.005
    # judged on the validation split, which calibration never saw
    assert parity["data"].startswith("validation split of 'digits'")
    by_batch = parity["metrics"]["by_batch_size"]
    assert by_batch["16"]["artifact_top1"] >= by_batch["16"]["reference_top1"] - 0.02
    # int8 really changes the numbers (a copy of the fp32 file would be exact)
    assert parity["metrics"]["max_abs_diff"] > 1e-3 > fp32.parity["metrics"]["max_abs_diff"]
    assert int8.details["size_bytes"] < 0.5 * fp32.details["size_bytes"]


def test_int8_graph_is_qdq_with_int8_conv_weights_and_runs_in_a_plain_session(int8_export, digits_checkpoint):
    model = onnx.load(str(int8_export / "model.int8.onnx"))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(int8_weights) == len(convs) == 19, "every convolution of resnet20 (1 + 3 stages x 3 blocks x 2) is int8"
    # 7-bit weights: a u8 x s8 pair sum (2 x 255 x 64) fits int16, so CPUs without VNNI do not saturate
    assert max(abs(onnx.numpy_helper.to_array(t).astype(int)).max() for t in int8_weights) == 64

    images, labels = digits_split("val")
    batch = normalize_batch(images[:64], load_checkpoint(digits_checkpoint).preprocess)
    session = ort.InferenceSession(str(int8_export / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": batch.numpy()})
    expected = runner_from_checkpoint(digits_checkpoint).predict(batch)
    agreement = (torch.from_numpy(logits).argmax(1) == expected.argmax(1)).double().mean().item()
    assert logits.shape == (64, 10) and agreement >= 0.95
    assert (torch.from_numpy(logits).argmax(1) == torch.as_tensor(labels[:64])).double().mean() >= 0.9


VNNI_CPU = {"avx2", "avx512_vnni"}  # a CPU with int8 dot products, where int8 is the fast default


def cpu_with(monkeypatch, flags: set[str]) -> None:
    """The serving machine's CPU flags, as open_runner and packaging read them."""
    monkeypatch.setattr("export.runners.cpu_flags", lambda: flags)
    monkeypatch.setattr("hostinfo.cpu_flags", lambda: flags)


def test_open_runner_prefers_int8_on_a_vnni_cpu_and_falls_back_when_it_failed_its_gate(
    int8_export, tmp_path, capsys, monkeypatch
):
    cpu_with(monkeypatch, VNNI_CPU)
    runner = open_runner(int8_export, threads=1)
    assert runner.format == "onnx-int8" and runner.artifact.precision == "int8"

    # An impossible cosine bound fails the int8 artifact: the export exits 1, the manifest says so,
    # and neither open_runner nor packaging picks the failed artifact.
    strict = tmp_path / "strict"
    checkpoint = read_manifest(int8_export).source_checkpoint["path"]
    code, out, _ = run_cli(
        capsys, "--checkpoint", checkpoint, "--to", "onnx-int8", "--out", strict, "--int8-min-cosine", "0.999999"
    )
    assert code == 1
    assert "onnx-int8 FAILED parity" in out and "cosine similarity" in out
    assert not read_manifest(strict).find("onnx-int8").passed
    assert open_runner(strict, threads=1).format == "onnx"
    mar = package(strict, tmp_path / "store", name="digits")
    assert "model.int8.onnx" not in zipfile.ZipFile(mar).namelist()


def test_int8_is_refused_on_cuda_and_not_picked_there(int8_export):
    """Its parity was checked on ONNX Runtime's CPU kernels only (the manifest says device "cpu")."""
    with pytest.raises(ExportError, match="the onnx-int8 artifact runs on cpu only"):
        runner_for_artifact(
            int8_export, read_manifest(int8_export), read_manifest(int8_export).find("onnx-int8"), "cuda", None
        )


def test_int8_is_not_the_default_on_a_cpu_without_vnni_or_amx(int8_export, tmp_path, monkeypatch):
    """AVX2 only (e.g. AMD Zen 2): ONNX Runtime's int8 kernels measured slower than fp32 there."""
    cpu_with(monkeypatch, {"avx2", "fma"})
    assert open_runner(int8_export, threads=1).format == "onnx"
    lines = []
    package(int8_export, tmp_path / "store", name="digits", log=lines.append)
    assert lines[0] == "on cpu: onnx (fp32) by default"
    assert open_runner(int8_export, "onnx-int8", threads=1).format == "onnx-int8", "named, it is still served"


def test_int8_is_packaged_and_the_archive_serves_it_by_default(int8_export, tmp_path, monkeypatch):
    cpu_with(monkeypatch, VNNI_CPU)
    mar = package(int8_export, tmp_path / "store", name="digits")
    names = zipfile.ZipFile(mar).namelist()
    assert {"model.onnx", "model.int8.onnx", "manifest.json"} <= set(names)
    zipfile.ZipFile(mar).extractall(tmp_path / "unpacked")
    assert open_runner(tmp_path / "unpacked", threads=1).format == "onnx-int8"


def test_calibration_data_folder_is_used_and_reusing_the_parity_folder_is_warned_about(
    digits_checkpoint, tmp_path, capsys
):
    folder = write_digits_folder(tmp_path / "digit_pngs", limit_per_class=4)
    code, out, _ = run_cli(
        capsys,
        "--checkpoint",
        digits_checkpoint,
        "--to",
        "onnx-int8",
        "--out",
        tmp_path / "x",
        "--calibration-data",
        folder,
        "--parity-data",
        folder,
        "--parity-batch",
        "8",
    )
    assert code == 0, out
    assert "WARNING: --calibration-data is --parity-data" in out
    assert "top-1 accuracy on the 40 labelled parity images: eager " in out and ", onnx-int8 " in out
    calibration = read_manifest(tmp_path / "x").find("onnx-int8").details["calibration"]
    assert calibration["data"] == f"image folder {folder}: 40 images" and calibration["samples"] == 40


@pytest.fixture
def checkpoint_without_data(digits_checkpoint, tmp_path):
    """The digits checkpoint, claiming it was trained on an image folder that is not on this machine."""
    ckpt = load_checkpoint(digits_checkpoint)
    ckpt.config = dict(ckpt.config, data="folder", data_dir=str(tmp_path / "gone"))
    path = tmp_path / "moved.pt"
    ckpt.save(path)
    return path


def test_without_calibration_data_int8_is_refused_and_all_skips_it(checkpoint_without_data, tmp_path, capsys):
    folder = write_digits_folder(tmp_path / "digit_pngs", limit_per_class=2)
    code, out, err = run_cli(
        capsys,
        "--checkpoint",
        checkpoint_without_data,
        "--to",
        "onnx-int8",
        "--out",
        tmp_path / "a",
        "--parity-data",
        folder,
        "--parity-batch",
        "4",
    )
    assert code == 2
    assert "onnx-int8 needs calibration images" in err and "pass --calibration-data DIR" in err
    assert str(tmp_path / "gone") in err, "the error names the missing training data"
    assert not (tmp_path / "a").exists(), "nothing is exported before the refusal"

    code, out, _ = run_cli(
        capsys,
        "--checkpoint",
        checkpoint_without_data,
        "--to",
        "all",
        "--out",
        tmp_path / "b",
        "--parity-data",
        folder,
        "--parity-batch",
        "4",
    )
    assert code == 0, out
    assert "onnx-int8 skipped: onnx-int8 needs calibration images" in out
    assert [a.format for a in read_manifest(tmp_path / "b").artifacts][:2] == ["torchscript", "onnx"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["artifacts"][1]["parity"]["passed"]


def test_verify_rechecks_the_int8_artifact(int8_export, tmp_path, capsys):
    """What to run on a server whose CPU differs from the exporting one (e.g. no VNNI)."""
    copy = tmp_path / "digits"
    shutil.copytree(int8_export, copy)
    code, out, _ = run_cli(capsys, "--verify", copy)
    assert code == 0, out
    assert "onnx-int8: model.int8.onnx" in out
    verified = read_manifest(copy).find("onnx-int8")
    assert verified.passed and verified.details["calibration"]["samples"] == 256


def damage_int8_weights(path) -> None:
    """Negate the int8 weights of the first convolution: a file that still loads and runs, wrongly."""
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4)
    weight.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(path))


def test_a_damaged_int8_file_fails_the_gate_and_is_neither_picked_nor_packaged(int8_export, tmp_path, capsys):
    from export.manifest import write_manifest
    from fsutil.atomic import sha256_file

    copy = tmp_path / "digits"
    shutil.copytree(int8_export, copy)
    damage_int8_weights(copy / "model.int8.onnx")
    # as if the damaged file had been accepted into the manifest: the gate is what must catch it now
    manifest = read_manifest(copy)
    manifest.find("onnx-int8").sha256 = sha256_file(copy / "model.int8.onnx")
    write_manifest(copy, manifest)

    code, out, _ = run_cli(capsys, "--verify", copy)
    assert code == 1, out
    int8 = read_manifest(copy).find("onnx-int8")
    assert not int8.passed and not int8.default_ok
    assert any("top-1 agreement" in f for f in int8.parity["failures"]), int8.parity["failures"]
    assert open_runner(copy, threads=1).format == "onnx"
    lines = []
    mar = package(copy, tmp_path / "store", name="digits", log=lines.append)
    assert "model.int8.onnx" not in zipfile.ZipFile(mar).namelist()
    assert lines[0] == "on cpu: onnx (fp32) by default"


def test_int8_judged_without_labels_is_not_qualified_for_default_use(int8_export, tmp_path):
    """Random-input parity never qualifies reduced precision: an entry whose gate had no labelled images
    (or came from before the accuracy gate) is served only when asked for."""
    from export.manifest import write_manifest
    from export.parity import INT8_THRESHOLDS, ParitySet, accuracy_gate

    random_set = ParitySet(torch.zeros(1, 3, 32, 32), None, "RANDOM pixels", random=True)
    verdict = accuracy_gate({"samples": 512, "top1_agreement": 1.0}, random_set, INT8_THRESHOLDS)
    assert not verdict["qualified"] and "random inputs" in verdict["reason"]

    copy = tmp_path / "digits"
    shutil.copytree(int8_export, copy)
    manifest = read_manifest(copy)
    manifest.find("onnx-int8").parity["default_use"] = verdict
    write_manifest(copy, manifest)
    assert read_manifest(copy).find("onnx-int8").passed
    assert open_runner(copy, threads=1).format == "onnx"
    lines = []
    mar = package(copy, tmp_path / "store", name="digits", log=lines.append)
    assert "model.int8.onnx" not in zipfile.ZipFile(mar).namelist()
    assert any(line.startswith("not packaged: onnx-int8 (int8): checked without labelled images") for line in lines)
    assert open_runner(copy, "onnx-int8", threads=1).format == "onnx-int8", "named, it is still served"
