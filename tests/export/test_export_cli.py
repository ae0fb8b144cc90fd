"""`python -m export` end to end on the real digits checkpoint: artifacts, parity, manifest, exit codes."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch

from export.manifest import read_manifest, sha256_file
from export.runners import open_runner


def test_export_writes_both_formats_and_passes_parity_on_real_digits(digits_export_run):
    out = digits_export_run.process.stdout
    manifest = read_manifest(digits_export_run.export_dir)
    assert [a["format"] for a in manifest["artifacts"]] == ["torchscript", "onnx"]
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        assert parity["passed"], parity
        assert parity["data"].startswith("validation split of 'digits'"), parity["data"]
        assert set(parity["metrics"]["by_batch_size"]) == {"1", "16"}
        assert parity["metrics"]["top1_agreement"] == 1.0
        assert parity["metrics"]["by_batch_size"]["16"]["samples"] == 256
        # the parity images are real digits: the model classifies them like its validation metrics say
        assert parity["metrics"]["by_batch_size"]["16"]["reference_top1"] >= 0.9
    assert "RANDOM" not in out
    assert "passed" in out.splitlines()[-1]
