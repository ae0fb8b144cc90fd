"""TensorRT FP16 engines from the exported ONNX file, with the TensorRT Python API.

TensorRT 10.x: parse the fp32 ONNX and let the builder pick FP16 kernels (`BuilderFlag.FP16`).
TensorRT 11+ removed those weak-typing flags: networks are strongly typed, so the precision must be
in the ONNX itself. There we build from an FP16 copy of the ONNX (`convert_onnx_to_fp16`: fp16
weights and activations, fp32 input and output) with the STRONGLY_TYPED network flag.

TensorRT only exists on CUDA machines (`pip install -e .[trt]`); everything here that does not
touch the builder (FP16 conversion, profile shapes, the availability check) runs anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fsutil.atomic import atomic_path

from .manifest import ExportError, ResourceUnavailable

INSTALL_HINT = (
    "To get it: on a machine with an NVIDIA GPU and driver, `pip install -e '.[trt]'` (NVIDIA's `tensorrt` "
    "wheels), or build the CUDA image: `docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3 "
    "--build-arg EXTRAS=gpu,trt -t resnet-deploy:cuda .`. `--to all` exports the other formats without it"
)

FP16_MAX = float(np.finfo(np.float16).max)


class TensorRTUnavailable(ResourceUnavailable):
    """TensorRT or a CUDA device is missing on this machine; the message says which and how to get it."""


def tensorrt_missing_reason() -> str | None:
    """None when an engine can be built here, else what is missing (no CUDA, no tensorrt module)."""
    import torch

    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        missing.append(f"the `tensorrt` Python package is not installed ({e})")
    if not torch.cuda.is_available():
        missing.append("there is no CUDA device (torch.cuda.is_available() is False)")
    if not missing:
        return None
    return "TensorRT export is not possible on this machine: " + " and ".join(missing) + ". " + INSTALL_HINT


def import_tensorrt() -> Any:
    reason = tensorrt_missing_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt

    return tensorrt


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (`min`..`max`) and the one its kernels are tuned for (`opt`)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}"
            )

    def shapes(self, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW input shapes for the TensorRT optimization profile."""
        return tuple((batch, 3, input_size, input_size) for batch in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def uses_strong_typing(trt: Any) -> bool:
    """TensorRT 11+ (no BuilderFlag.FP16): precision comes from the ONNX types, not builder flags."""
    return int(trt.__version__.split(".")[0]) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def convert_onnx_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of an fp32 ONNX graph whose input and output stay fp32.

    Float initializers and Constant tensors become float16 (clipped to the fp16 range), internal
    Casts to float become Casts to float16, and a Cast is inserted after each graph input and before
    each graph output, so callers keep feeding and reading float32 while everything inside is fp16.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if converted.functions or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    ):
        raise ExportError("FP16 conversion handles flat graphs only (no local functions or control-flow subgraphs)")

    _retype_float_tensors(graph)
    nodes = _cast_graph_inputs(graph) + list(graph.node) + _cast_graph_outputs(graph)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(converted)
    return converted


def _retype_float_tensors(graph: onnx.GraphProto) -> None:
    """Float initializers, Constant values, Casts to float and value infos become float16, in place."""
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(to_fp16_tensor(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(to_fp16_tensor(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for info in graph.value_info:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.FLOAT16


def _cast_graph_inputs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A Cast to float16 after each float graph input, which the nodes then read instead."""
    casts = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        internal = f"{graph_input.name}_fp16"
        for node in graph.node:
            node.input[:] = [internal if name == graph_input.name else name for name in node.input]
        casts.append(
            helper.make_node(
                "Cast", [graph_input.name], [internal], to=TensorProto.FLOAT16, name=f"cast_{graph_input.name}_to_fp16"
            )
        )
    return casts


def _cast_graph_outputs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A Cast back to float before each float graph output, which the nodes then write instead."""
    casts = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        internal = f"{graph_output.name}_fp16"
        for node in graph.node:
            node.output[:] = [internal if name == graph_output.name else name for name in node.output]
            node.input[:] = [internal if name == graph_output.name else name for name in node.input]
        casts.append(
            helper.make_node(
                "Cast", [internal], [graph_output.name], to=TensorProto.FLOAT, name=f"cast_{graph_output.name}_to_fp32"
            )
        )
    return casts


def to_fp16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    # Out-of-range weights would become inf; clipping keeps them finite (ResNet weights are far inside).
    return numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), tensor.name)


def cuda_device_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    input_name: str,
    input_size: int,
    batch: BatchProfile,
    workspace_bytes: int,
    log: Any = print,
) -> dict[str, Any]:
    """Build a serialized FP16 engine from an ONNX file; returns what the manifest records about it."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    strongly_typed = uses_strong_typing(trt)
    source = Path(onnx_path)
    if strongly_typed:
        source = source.with_name(source.stem + ".fp16.onnx")
        with atomic_path(source) as tmp:
            onnx.save(convert_onnx_to_fp16(onnx.load(str(onnx_path))), str(tmp))
        log(f"TensorRT {trt.__version__} is strongly typed: building from the FP16 ONNX {source.name}")

    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{source}: TensorRT's ONNX parser rejected the model:\n  {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *batch.shapes(input_size))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {source}; see its log above")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return {
        "tensorrt_version": trt.__version__,
        "versions": {"tensorrt": trt.__version__, "onnx": onnx.__version__},
        "gpu": cuda_device_name(),
        "strongly_typed": strongly_typed,
        "built_from": source.name,
        "workspace_bytes": workspace_bytes,
    }
