"""Writing the portable artifacts: a frozen TorchScript module and an ONNX graph with a dynamic batch."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import onnx
import torch

from fsutil.atomic import atomic_path
from models.errors import first_line

from .manifest import ExportError
from .torchscript import quiet_torchscript_deprecation

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ONNX_OPSET = 18  # what TensorRT 10's ONNX parser and ONNX Runtime >= 1.14 both support fully


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """Trace the eval model, freeze it (weights become constants, BatchNorm folds into the convs), save.

    The file loads with plain `torch.jit.load`, no code of ours needed. `torch.jit.optimize_for_inference`
    runs when the file is loaded (runners.TorchScriptRunner): its rewrites are device specific and its
    MKLDNN constants cannot be serialized.
    """
    with quiet_torchscript_deprecation(), torch.no_grad():
        # check_trace would trace a second time to compare; the parity check compares far more thoroughly.
        frozen = torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))
        with atomic_path(path) as tmp:
            torch.jit.save(frozen, str(tmp))
    return {
        "method": "torch.jit.trace + torch.jit.freeze",
        "optimize_for_inference": "at load time",
        "versions": {"torch": torch.__version__},
    }


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    opset: int = ONNX_OPSET,
    log: Any = print,
    program: torch.export.ExportedProgram | None = None,
) -> dict[str, Any]:
    """`torch.onnx.export` with the dynamo exporter, else the TorchScript-based one; checked with onnx.checker.

    `program`: the model already captured by `torch.export` (export/aoti.py's `capture`), which the
    dynamo exporter then converts instead of capturing again, so ONNX and AOTInductor share one graph.
    The weights are inside the .onnx file (no external data file). `example` must have a batch of 2 or
    more: a batch of 1 lets the exporter specialise the batch dimension to a constant.
    """
    if example.shape[0] < 2:
        raise ValueError("export ONNX with an example batch of 2 or more, or the batch dimension gets fixed")
    model = model.eval()
    with atomic_path(path) as tmp:
        fallback_reason = None
        try:
            run_exporter(model if program is None else program, example, tmp, opset, dynamo=True)
            exporter = "dynamo"
        except Exception as e:  # the dynamo exporter fails in many ways on unusual models; the old one may not
            fallback_reason = first_line(e)
            log(f"dynamo ONNX exporter failed ({fallback_reason}); falling back to the TorchScript-based exporter")
            run_exporter(model, example, tmp, opset, dynamo=False)
            exporter = "torchscript"
        check_onnx(tmp)
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript_version()}
    return {
        "exporter": exporter,
        "opset": opset,
        "external_data": False,
        "versions": versions,
        "graph": "the torch.export program the aoti formats compile"
        if program is not None and not fallback_reason
        else "captured by the exporter",
        **({"dynamo_failure": fallback_reason} if fallback_reason else {}),
    }


def onnxscript_version() -> str | None:
    """The dynamo exporter's graph builder, whose version changes the graph it writes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxscript")
    except PackageNotFoundError:  # not installed: the TorchScript-based exporter was the only one
        return None


def run_exporter(
    model: torch.nn.Module | torch.export.ExportedProgram, example: torch.Tensor, path: Path, opset: int, dynamo: bool
) -> None:
    if isinstance(model, torch.export.ExportedProgram):  # its batch dimension is already dynamic
        batch_options = dict(external_data=False)
    elif dynamo:
        batch_options = dict(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    else:
        batch_options = dict(dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    chatter = io.StringIO()  # the exporters print several lines per step; shown only when they fail
    try:
        with contextlib.redirect_stdout(chatter), quiet_torchscript_deprecation(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=dynamo,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                **batch_options,
            )
    except Exception as e:
        e.add_note(f"exporter output:\n{chatter.getvalue()}")
        raise


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker (with shape inference), plus: one input and one output, and the batch dim is dynamic."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker rejected the exported model: {first_line(e)}") from e
    graph = onnx.load(str(path), load_external_data=False).graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"{path}: expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ExportError(f"{path}: the batch dimension was fixed to {batch_dim.dim_value} instead of dynamic")


def onnx_io_names(path: str | os.PathLike) -> tuple[str, str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return graph.input[0].name, graph.output[0].name
