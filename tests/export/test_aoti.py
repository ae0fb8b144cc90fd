"""`python -m export --to aoti` (and aoti-bf16 where the CPU computes bf16): torch.export + AOTInductor
packages of the digits model, loaded in a fresh interpreter, parity-gated, refused under another torch.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch

from export.aoti import AotiPackageMismatch, bf16_missing_reason, missing_reason, package_metadata
from export.cli import main as export_main
from export.manifest import read_manifest
from export.runners import open_runner
from serve.package import package

BF16_MISSING = bf16_missing_reason()


@pytest.fixture(scope="module")
def aoti_export(digits_checkpoint, tmp_path_factory):
    """One export run: the fp32 package, the bf16 one where this CPU has AVX512-BF16/AMX, and ONNX from
    the same captured graph."""
    export_dir = tmp_path_factory.mktemp("aoti") / "digits"
    formats = "aoti,onnx" + ("" if BF16_MISSING else ",aoti-bf16")
    code = export_main(
        [
            "--checkpoint",
            str(digits_checkpoint),
            "--to",
            formats,
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


def test_aoti_package_is_recorded_with_its_torch_and_target_and_passes_fp32_parity(aoti_export):
    manifest = read_manifest(aoti_export)
    aoti = manifest.find("aoti")
    assert aoti.file == "model.pt2" and aoti.precision == "fp32" and aoti.device == "cpu"
    assert aoti.passed and aoti.parity["metrics"]["allclose"] and aoti.parity["metrics"]["top1_agreement"] == 1.0
    assert (
        aoti.details["torch_version"]
        == torch.__version__
        == package_metadata(aoti_export / "model.pt2")["torch_version"]
    )
    assert aoti.details["built_for"]["isa"] and aoti.details["compile_seconds"] > 0
    assert aoti.details["size_bytes"] == (aoti_export / "model.pt2").stat().st_size
    assert "freezing on" in aoti.details["method"]
    onnx = manifest.find("onnx")
    assert onnx.details["graph"] == "the torch.export program the aoti formats compile"
    assert onnx.details["external_data"] is False and not list(aoti_export.glob("*.data"))
    assert onnx.details["versions"]["onnx"] and onnx.details["versions"]["torch"] == torch.__version__


def test_package_loads_in_a_fresh_interpreter_with_a_dynamic_batch(aoti_export, digits_checkpoint):
    script = (
        "import sys, torch\n"
        "from export.runners import open_runner, runner_from_checkpoint\n"
        "r = open_runner(sys.argv[1], 'aoti', threads=1)\n"
        "x = torch.randn(5, 3, 32, 32)\n"
        "ref = runner_from_checkpoint(sys.argv[2]).predict(x)\n"
        "for n in (1, 3, 5):\n"
        "    torch.testing.assert_close(r.predict(x[:n]), ref[:n], rtol=1e-3, atol=1e-4)\n"
        "print('ok', type(r).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(aoti_export), str(digits_checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok AotiRunner" in result.stdout


def test_a_package_from_another_torch_version_is_refused_before_loading(aoti_export, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    with pytest.raises(AotiPackageMismatch, match=r"compiled by torch .* but this is torch 2.11.0; not loaded"):
        open_runner(aoti_export, "aoti")
    # unasked, the runner skips the packages (bf16 included) and falls back to a format that runs here
    assert open_runner(aoti_export, threads=1).format == "onnx"


def test_a_file_that_is_not_a_package_is_named(tmp_path):
    from export.aoti import check_package
    from export.manifest import ExportError

    bogus = tmp_path / "model.pt2"
    with zipfile.ZipFile(bogus, "w") as archive:
        archive.writestr("x/data/other.json", "{}")
    with pytest.raises(ExportError, match="not an AOTInductor package"):
        check_package(bogus, "cpu")


@pytest.mark.skipif(BF16_MISSING is not None, reason=f"no native bf16 on this CPU: {BF16_MISSING}")
def test_bf16_package_passes_the_reduced_precision_gate_and_is_picked_by_default(aoti_export, tmp_path):
    bf16 = read_manifest(aoti_export).find("aoti-bf16")
    assert bf16.precision == "bf16" and bf16.details["computes_in"] == "bfloat16"
    assert bf16.passed and bf16.parity["thresholds"]["max_top1_drop"] == 0.005
    assert bf16.default_ok and bf16.parity["default_use"]["labelled_samples"] >= 300
    assert bf16.parity["metrics"]["max_abs_diff"] > 1e-4, "it really computes in bf16"
    assert open_runner(aoti_export, threads=1).format == "aoti-bf16"
    lines = []
    mar = package(aoti_export, tmp_path / "store", name="digits", log=lines.append)
    assert "model.bf16.pt2" in zipfile.ZipFile(mar).namelist()
    assert any(line.startswith("on cpu: aoti-bf16 (bf16) by default: top-1 ") for line in lines), lines


@pytest.mark.skipif(BF16_MISSING is None, reason="this CPU has native bf16: the refusal cannot be seen here")
def test_bf16_is_refused_without_native_bf16(digits_checkpoint, tmp_path, capsys):
    code = export_main(["--checkpoint", str(digits_checkpoint), "--to", "aoti-bf16", "--out", str(tmp_path / "x")])
    assert code == 3 and "neither AVX512-BF16 nor AMX" in capsys.readouterr().err


def test_fp16_package_needs_cuda(digits_checkpoint, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the fp16 package is built, not refused (see test_fp16_package_on_cuda)")
    assert missing_reason("aoti-fp16", "cpu")
    code = export_main(["--checkpoint", str(digits_checkpoint), "--to", "aoti-fp16", "--out", str(tmp_path / "x")])
    assert code == 3 and "aoti-fp16 is compiled for CUDA" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA packages cannot be built here")
def test_fp16_package_on_cuda(digits_checkpoint, tmp_path):
    out = tmp_path / "cuda"
    code = export_main(
        ["--checkpoint", str(digits_checkpoint), "--to", "aoti,aoti-fp16", "--device", "cuda", "--out", str(out)]
    )
    assert code == 0
    manifest = read_manifest(out)
    assert manifest.find("aoti").device == "cuda" and manifest.find("aoti-fp16").passed
    assert open_runner(out, device="cuda").format == "aoti-fp16"


def test_a_real_torchserve_serves_the_aoti_package(aoti_export, tmp_path):
    """`serve package --backend aoti`: the worker loads the .pt2 through the handler's Classifier and answers
    as the local runner does."""
    import dataclasses

    import requests
    from PIL import Image

    from classify.classifier import Classifier
    from imagedata.digits import digits_split
    from serve.package import PackageOptions
    from serve.server import ServerSettings, free_ports, start, stop
    from tests.fixtures.served import SERVED_PACKAGE_OPTIONS, encode

    options = dataclasses.replace(SERVED_PACKAGE_OPTIONS, backend="aoti")
    assert isinstance(options, PackageOptions)
    mar = package(aoti_export, tmp_path / "store", name="digits", options=options)
    assert {"model.pt2", "manifest.json"} <= set(zipfile.ZipFile(mar).namelist())
    images, _ = digits_split("val")
    body = encode(Image.fromarray(images[0].permute(1, 2, 0).numpy()), "PNG")
    expected = Classifier.from_export(aoti_export, fmt="aoti", threads=1).classify([body])[0]

    port, management, metrics, grpc_inference, grpc_management = free_ports(5)
    run_dir = tmp_path / "ts"
    settings = ServerSettings(
        model_store=mar.parent,
        models=["digits"],
        run_dir=run_dir,
        port=port,
        management_port=management,
        metrics_port=metrics,
        grpc_inference_port=grpc_inference,
        grpc_management_port=grpc_management,
        startup_timeout_s=240,
    )
    try:
        info = start(settings, log=lambda message: None)
        response = requests.post(
            f"{info.inference_url}/predictions/digits",
            data=body,
            timeout=60,
            headers={"Authorization": f"Bearer {info.key('inference')}"},
        )
    finally:
        stop(run_dir)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer)[0] == expected[0][0]
    assert answer[expected[0][0]] == pytest.approx(expected[0][1], abs=1e-4)
