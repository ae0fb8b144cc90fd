"""How each format is built: one writer per `ExportFormat.writer`, all with the same signature, so
`export/build.py` needs no branch per format.

A writer builds the file at `job.path` (atomically) and returns the format-specific facts for the
manifest entry's `details` (with `runs_on` where the device it runs on is decided at build time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .aoti import capture, write_aoti
from .formats import INPUT_NAME, export_onnx, export_torchscript, onnx_io_names
from .quantize import CalibrationSet, quantize_onnx
from .registry import export_format
from .tensorrt_engine import BatchProfile, build_engine


@dataclass(frozen=True)
class BuildJob:
    fmt: str
    model: torch.nn.Module
    example: torch.Tensor  # a random batch of the input size (batch >= 2: the batch dimension stays dynamic)
    export_dir: Path
    input_size: int
    batch: BatchProfile
    opset: int
    workspace_bytes: int
    device: str
    calibration: CalibrationSet | None
    log: Callable[[str], None]

    @property
    def path(self) -> Path:
        return self.export_dir / export_format(self.fmt).file

    @property
    def source(self) -> Path:
        """The file of the format this one is built from (exported first)."""
        return self.export_dir / export_format(export_format(self.fmt).built_from).file


def write_torchscript(job: BuildJob) -> dict[str, Any]:
    return export_torchscript(job.model, job.example, job.path)


def write_onnx(job: BuildJob) -> dict[str, Any]:
    program = capture(job.model, job.example)  # shared with the aoti formats: one graph for both
    details = export_onnx(job.model, job.example, job.path, opset=job.opset, log=job.log, program=program)
    details["input_name"], details["output_name"] = onnx_io_names(job.path)
    return details


def write_onnx_int8(job: BuildJob) -> dict[str, Any]:
    return quantize_onnx(job.source, job.path, INPUT_NAME, job.calibration, log=job.log)


def write_aoti_package(job: BuildJob) -> dict[str, Any]:
    return write_aoti(job.fmt, job.model, job.example, job.path, job.device)


def write_tensorrt(job: BuildJob) -> dict[str, Any]:
    return build_engine(
        job.source,
        job.path,
        input_name=INPUT_NAME,
        input_size=job.input_size,
        batch=job.batch,
        workspace_bytes=job.workspace_bytes,
        log=job.log,
    )


WRITERS: dict[str, Callable[[BuildJob], dict[str, Any]]] = {
    f.__name__: f for f in (write_torchscript, write_onnx, write_onnx_int8, write_aoti_package, write_tensorrt)
}


def write(job: BuildJob) -> dict[str, Any]:
    return WRITERS[export_format(job.fmt).writer](job)
