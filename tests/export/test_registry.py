"""One record per export format: the default choice follows the CPU features of the machine that serves,
and every name a record gives (runner class, writer, source format) exists."""

from __future__ import annotations

import pytest

from export import runners, writers
from export.registry import EXPORT_FORMATS, FORMATS, export_format, preference

FP32_CPU = ("onnx", "aoti", "torchscript")


@pytest.mark.parametrize(
    "flags,expected",
    [
        (None, FP32_CPU),  # /proc/cpuinfo says nothing: nothing that needs a feature is assumed fast
        ({"avx2", "avx512f"}, FP32_CPU),  # e.g. AMD Zen 2: int8 measured slower than fp32 there
        ({"avx2", "avx_vnni"}, ("onnx-int8", *FP32_CPU)),
        ({"avx512_vnni"}, ("onnx-int8", *FP32_CPU)),
        ({"avx512_bf16", "avx512_vnni"}, ("aoti-bf16", "onnx-int8", *FP32_CPU)),
        ({"amx_bf16", "amx_int8"}, ("aoti-bf16", "onnx-int8", *FP32_CPU)),
    ],
)
def test_cpu_default_order_needs_the_features_that_make_a_format_fast(flags, expected):
    assert preference("cpu", flags) == expected


def test_cuda_order_does_not_depend_on_the_cpu():
    assert preference("cuda", None) == preference("cuda", {"amx_int8"}) == ("trt", "aoti-fp16", *FP32_CPU)


def test_every_record_names_what_exists():
    files = [f.file for f in EXPORT_FORMATS.values()]
    assert len(set(files)) == len(files) == len(FORMATS)
    for spec in EXPORT_FORMATS.values():
        assert issubclass(runners.runner_class(spec.name), runners.Runner)
        assert spec.writer in writers.WRITERS
        assert spec.built_from is None or spec.built_from in FORMATS
        assert set(spec.devices) <= {"cpu", "cuda"} and spec.precision in ("fp32", "bf16", "fp16", "int8")


def test_an_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="onnx-int8"):
        export_format("openvino")
