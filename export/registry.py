"""What an export format is, in one record per format: everything else reads it.

    export_format("onnx-int8").file          # "model.int8.onnx"
    preference("cpu", cpu_flags())           # formats fit for default use on this CPU, fastest first

The record names its runner class (in `export/runners.py`) and its writer (in `export/writers.py`) by
name, so this module stays plain data: the manifest, the serving command line and a server worker read
it without importing torch or the exporters.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostinfo import BF16_FLAGS, INT8_DOT_FLAGS


@dataclass(frozen=True)
class ExportFormat:
    name: str  # as in --to, the manifest and --backend
    file: str  # its file in the export directory
    runner: str  # its Runner class in export/runners.py
    writer: str  # the function in export/writers.py that builds it
    precision: str  # what the network computes in: fp32, bf16, fp16 or int8
    tolerance: str  # which parity thresholds judge it: fp32, fp16 (bf16 too) or int8 (ExportOptions.thresholds)
    devices: tuple[str, ...]  # where it can run ("cpu", "cuda")
    rank: int  # speed where it runs, 0 fastest: the default choice takes the lowest fit for use
    extra: str | None = None  # the pip extra that building it needs (None: the base install)
    built_from: str | None = None  # the format it is made from, exported first
    cpu_features: frozenset[str] = frozenset()  # on CPU, fast only with one of these /proc/cpuinfo flags
    batch_profile: bool = False  # takes only its build profile's batch range (else any batch size)

    @property
    def device(self) -> str:
        """The manifest's device entry: "any", or the one device it runs on."""
        return "any" if len(self.devices) > 1 else self.devices[0]

    def fast_on(self, device: str, flags: set[str] | None) -> bool:
        """Whether it is worth choosing by default on `device` with these CPU flags (None: unknown, so not)."""
        if device != "cpu" or not self.cpu_features:
            return True
        return flags is not None and bool(self.cpu_features & flags)


# Ranks: TensorRT needs CUDA; on CPU bf16 (where the CPU computes it natively) and ONNX Runtime's int8
# kernels (with VNNI or AMX dot products; without them int8 measured slower than fp32) beat fp32, and ONNX
# Runtime beats AOTInductor and TorchScript on these convnets.
_FORMATS = (
    ExportFormat(
        "torchscript", "model.ts", "TorchScriptRunner", "write_torchscript", "fp32", "fp32", ("cpu", "cuda"), 4
    ),
    ExportFormat("onnx", "model.onnx", "OnnxRuntimeRunner", "write_onnx", "fp32", "fp32", ("cpu", "cuda"), 2, "export"),
    ExportFormat(
        "onnx-int8",
        "model.int8.onnx",
        "OnnxRuntimeInt8Runner",
        "write_onnx_int8",
        "int8",
        "int8",
        ("cpu",),
        1,
        "export",
        built_from="onnx",
        cpu_features=INT8_DOT_FLAGS,
    ),
    ExportFormat("aoti", "model.pt2", "AotiRunner", "write_aoti_package", "fp32", "fp32", ("cpu", "cuda"), 3),
    ExportFormat(
        "aoti-bf16",
        "model.bf16.pt2",
        "AotiBf16Runner",
        "write_aoti_package",
        "bf16",
        "fp16",
        ("cpu",),
        0,
        cpu_features=BF16_FLAGS,
    ),
    ExportFormat("aoti-fp16", "model.fp16.pt2", "AotiFp16Runner", "write_aoti_package", "fp16", "fp16", ("cuda",), 1),
    ExportFormat(
        "trt",
        "model.fp16.engine",
        "TensorRTRunner",
        "write_tensorrt",
        "fp16",
        "fp16",
        ("cuda",),
        0,
        "trt",
        built_from="onnx",
        batch_profile=True,
    ),
)
EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in _FORMATS}
FORMATS = tuple(EXPORT_FORMATS)  # the names, in the manifest's order
DEVICES = ("cpu", "cuda")


def export_format(name: str) -> ExportFormat:
    if name not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    return EXPORT_FORMATS[name]


def preference(device: str, flags: set[str] | None) -> tuple[str, ...]:
    """The formats that run on `device`, fastest first, without those this CPU lacks the features for."""
    fit = [f for f in _FORMATS if device in f.devices and f.fast_on(device, flags)]
    return tuple(f.name for f in sorted(fit, key=lambda f: f.rank))
