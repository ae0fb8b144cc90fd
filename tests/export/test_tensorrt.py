"""Everything around the TensorRT engine build: FP16 ONNX, profile shapes, typing mode, the build itself.

Only the engine build (and running it) needs TensorRT and CUDA; those tests skip with the reason
when they are absent. The FP16 ONNX that TensorRT 11+ builds from runs here in ONNX Runtime.
"""

from __future__ import annotations

from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto

from export.manifest import ExportError
from export.parity import FP16_THRESHOLDS, FP32_THRESHOLDS, check_parity, load_parity_set
from export.runners import OnnxRuntimeRunner, TensorRTRunner, runner_from_checkpoint
from export.tensorrt_engine import (
    BatchProfile,
    build_engine,
    convert_onnx_to_fp16,
    tensorrt_missing_reason,
    uses_strong_typing,
)
from models import load_checkpoint

TENSORRT_MISSING = tensorrt_missing_reason()


@pytest.fixture(scope="module")
def digits_parity(digits_checkpoint):
    ckpt = load_checkpoint(digits_checkpoint)
    return runner_from_checkpoint(ckpt), load_parity_set(ckpt, count=128)


@pytest.fixture(scope="module")
def fp16_onnx(digits_export, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    onnx.save(convert_onnx_to_fp16(onnx.load(str(digits_export / "model.onnx"))), str(path))
    return path


def test_fp16_onnx_keeps_fp32_io_and_holds_fp16_weights(fp16_onnx):
    model = onnx.load(str(fp16_onnx))
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [TensorProto.FLOAT]
    assert (graph.input[0].name, graph.output[0].name) == ("input", "logits")
    float_weights = [i.name for i in graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE)]
    assert float_weights == [], f"fp32 weights left: {float_weights}"
    assert sum(i.data_type == TensorProto.FLOAT16 for i in graph.initializer) >= 20  # convs, BN-folded biases, fc
    first, last = graph.node[0], graph.node[-1]
    assert first.op_type == "Cast" and first.input[0] == "input" and first.attribute[0].i == TensorProto.FLOAT16
    assert last.op_type == "Cast" and last.output[0] == "logits" and last.attribute[0].i == TensorProto.FLOAT


def test_fp16_onnx_passes_the_fp16_gate_on_real_digits(fp16_onnx, digits_export, digits_parity):
    """Run in ONNX Runtime (CPU): the FP16 model agrees with eager fp32 within the FP16 gate at batch 1 and 16."""
    reference, parity_set = digits_parity
    runner = OnnxRuntimeRunner(fp16_onnx, threads=1, preprocess=reference.preprocess, class_names=reference.class_names)
    parity = check_parity(reference, runner, parity_set, FP16_THRESHOLDS, batch_size=16)
    assert parity["passed"], parity["failures"]
    assert parity["metrics"]["min_cosine"] >= 0.997 and parity["metrics"]["top1_agreement"] >= 0.99
    # really fp16: further from eager than the fp32 ONNX is, by far more than fp32 rounding
    fp32 = OnnxRuntimeRunner(
        digits_export / "model.onnx", threads=1, preprocess=reference.preprocess, class_names=reference.class_names
    )
    fp32_parity = check_parity(reference, fp32, parity_set, FP32_THRESHOLDS, batch_size=16)
    assert parity["metrics"]["max_abs_diff"] > 10 * fp32_parity["metrics"]["max_abs_diff"]


def test_fp16_onnx_rejects_graphs_with_subgraphs():
    then_branch = onnx.helper.make_graph([], "then", [], [])
    node = onnx.helper.make_node("If", ["cond"], [], then_branch=then_branch, else_branch=then_branch)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [])
    with pytest.raises(ExportError, match="flat graphs only"):
        convert_onnx_to_fp16(onnx.helper.make_model(graph))


def test_batch_profile_shapes_and_validation():
    profile = BatchProfile(1, 8, 32)
    assert profile.shapes(224) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile.to_dict() == {"min": 1, "opt": 8, "max": 32}
    for bad in ((0, 1, 2), (2, 1, 4), (1, 8, 4)):
        with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
            BatchProfile(*bad)


@pytest.mark.parametrize(
    "version, has_fp16_flag, strongly_typed",
    [("10.7.0", True, False), ("10.13.2", True, False), ("11.0.0", False, True), ("11.4.1", False, True)],
)
def test_strong_typing_follows_the_tensorrt_major_version(version, has_fp16_flag, strongly_typed):
    builder_flag = SimpleNamespace(FP16=1) if has_fp16_flag else SimpleNamespace()
    assert uses_strong_typing(SimpleNamespace(__version__=version, BuilderFlag=builder_flag)) is strongly_typed


def test_tensorrt_runner_refuses_cpu(digits_export, digits_parity):
    reference, _ = digits_parity
    with pytest.raises(ExportError, match="CUDA only"):
        TensorRTRunner(
            digits_export / "model.onnx",
            device="cpu",
            preprocess=reference.preprocess,
            class_names=reference.class_names,
        )


@pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"engine build needs TensorRT and CUDA: {TENSORRT_MISSING}")
def test_engine_build_and_fp16_parity(digits_export, digits_parity, tmp_path):
    import tensorrt

    reference, parity_set = digits_parity
    details = build_engine(
        digits_export / "model.onnx",
        tmp_path / "model.fp16.engine",
        input_name="input",
        input_size=32,
        batch=BatchProfile(1, 8, 16),
        workspace_bytes=1 << 30,
    )
    assert details["tensorrt_version"] == tensorrt.__version__ and details["gpu"] == torch.cuda.get_device_name()
    runner = TensorRTRunner(
        tmp_path / "model.fp16.engine", preprocess=reference.preprocess, class_names=reference.class_names
    )
    assert runner.max_batch_size == 16
    parity = check_parity(reference, runner, parity_set, FP16_THRESHOLDS, batch_size=16)  # vs fp32 eager on CPU
    assert parity["passed"], parity["failures"]
    with pytest.raises(ValueError, match="maximum batch size 16"):
        runner.predict(parity_set.images[:17])
