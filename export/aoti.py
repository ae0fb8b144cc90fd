"""PyTorch 2 export: the model captured once with `torch.export`, compiled ahead of time by AOTInductor.

    program = capture(model, example)                  # one ExportedProgram, dynamic batch dimension
    details = write_aoti("aoti", model, example, path, device="cpu")   # -> model.pt2

The captured program is shared: the ONNX exporter reads the same graph (export/formats.py). A `.pt2`
package holds a compiled shared library (the network's kernels, with BatchNorm folded and the weights
as constants, since freezing is on) and is tied to the torch version that compiled it and to the
instruction set (CPU) or GPU kind (CUDA) it was compiled for: `check_package` reads what the package
records and refuses a mismatch with a clear error before anything is loaded.

Reduced precision: `aoti-bf16` computes in bfloat16 on CPUs with bf16 instructions (AVX512-BF16 or
AMX; never emulated), `aoti-fp16` in float16 on CUDA. Both take and return float32, like every runner.
"""

from __future__ import annotations

import copy
import json
import os
import time
import weakref
import zipfile
from typing import Any

import torch

from fsutil.atomic import atomic_path
from hostinfo import BF16_FLAGS, cpu_flags, cpuinfo
from models.errors import first_line

from .manifest import ExportError, ResourceUnavailable
from .registry import export_format

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # a format's precision
TORCH_VERSION_KEY = "torch_version"  # our entry in the package's metadata (AOTInductor records no version)
# AOTInductor's AOTI_CPU_ISA words -> the /proc/cpuinfo flag a CPU needs to run the compiled kernels
ISA_FLAGS = {"AVX512": "avx512f", "AVX2": "avx2", "AVX512_BF16": "avx512_bf16", "AMX_TILE": "amx_tile"}

_captured: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, ...], torch.export.ExportedProgram]]
_captured = weakref.WeakKeyDictionary()


class AotiPackageMismatch(ResourceUnavailable):
    """A `.pt2` built for another torch version, CPU instruction set or device than this process has."""


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export` of the eval model with a dynamic batch dimension, once per model and input shape.

    `example` needs a batch of 2 or more: with 1, export specialises the batch dimension to a constant.
    """
    if example.shape[0] < 2:
        raise ValueError("capture with an example batch of 2 or more, or the batch dimension gets fixed")
    cached = _captured.get(model)
    if cached is not None and cached[0] == tuple(example.shape):
        return cached[1]
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    _captured[model] = (tuple(example.shape), program)
    return program


class ComputeIn(torch.nn.Module):
    """float32 in, float32 out, `dtype` inside: a reduced-precision artifact keeps the runners' contract."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def bf16_missing_reason() -> str | None:
    """None when this CPU computes bf16 natively (AVX512-BF16 or AMX), else why `aoti-bf16` cannot be built."""
    flags = cpu_flags()
    if flags is None:
        return "bf16 on CPU needs AVX512-BF16 or AMX, and /proc/cpuinfo does not say whether this CPU has them"
    if not flags & BF16_FLAGS:
        return (
            f"this CPU ({cpuinfo().get('model name', 'unknown')}) has neither AVX512-BF16 nor AMX (no "
            f"{' / '.join(sorted(BF16_FLAGS))} in /proc/cpuinfo); bf16 would be emulated, slower than fp32. "
            "Use onnx-int8 or the fp32 formats here, or export on a CPU that has them (Intel Sapphire Rapids or "
            "newer, Cooper Lake; AMD Zen 4 or newer)"
        )
    return None


def missing_reason(fmt: str, device: str) -> str | None:
    """Why `fmt` cannot be built on this machine for `device` (None: it can)."""
    if fmt == "aoti-bf16":
        return "aoti-bf16 is a CPU format; export it with --device cpu" if device != "cpu" else bf16_missing_reason()
    if fmt == "aoti-fp16" and (device != "cuda" or not torch.cuda.is_available()):
        return "aoti-fp16 is compiled for CUDA: it needs a CUDA device and --device cuda"
    return None


def build_device(fmt: str, device: str) -> str:
    """A format that runs on one device only is compiled for it; the others for the export's --device."""
    spec = export_format(fmt)
    return device if spec.device == "any" else spec.device


def target_description(device: str) -> dict[str, Any]:
    """What the package is compiled for, in words and facts, for the manifest."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    flags = cpu_flags() or set()
    return {"cpu": cpuinfo().get("model name", "unknown"), "cpu_bf16": sorted(flags & BF16_FLAGS)}


def write_aoti(
    fmt: str, model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, device: str
) -> dict[str, Any]:
    """Capture (or reuse the capture of) `model`, compile it with AOTInductor into the `.pt2` at `path`."""
    reason = missing_reason(fmt, device)
    if reason is not None:
        raise ResourceUnavailable(reason)
    dtype = COMPUTE_DTYPES[export_format(fmt).precision]
    device = build_device(fmt, device)
    if dtype == torch.float32 and device == "cpu":
        program = capture(model, example)
    else:
        program = capture(ComputeIn(model, dtype).to(device), example.to(device))
    from torch import _inductor as inductor  # seconds to import; only exports and .pt2 runners need it

    started = time.perf_counter()
    with atomic_path(path) as tmp:
        # aoti_compile_and_package insists on a .pt2 name; atomic_path's temporary ends in .tmp
        compiled = tmp.with_name(tmp.name + ".pt2")
        try:
            # without autograd: only then does Inductor prepack the oneDNN weights and fuse conv + ReLU
            with torch.no_grad():
                inductor.aoti_compile_and_package(
                    program,
                    package_path=str(compiled),
                    # freezing: weights become constants of the compiled graph, so BatchNorm folds into the
                    # convolutions and the weights get the layout the kernels want (ahead of time, not per call)
                    inductor_configs={
                        "freezing": True,
                        "aot_inductor.metadata": {TORCH_VERSION_KEY: torch.__version__},
                    },
                )
            os.replace(compiled, tmp)
        finally:
            compiled.unlink(missing_ok=True)
    metadata = package_metadata(path)
    return {
        "method": "torch.export (dynamic batch) + AOTInductor aoti_compile_and_package, freezing on",
        "runs_on": device,
        "computes_in": str(dtype).removeprefix("torch."),
        "compile_seconds": round(time.perf_counter() - started, 2),
        "torch_version": torch.__version__,
        "built_for": {**target_description(device), "isa": metadata.get("AOTI_CPU_ISA") or None},
        "versions": {"torch": torch.__version__},
    }


def package_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata a `.pt2` records (device, CPU ISA, our torch version), read from the zip without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json")]
            if len(names) != 1:
                raise ExportError(f"{path}: not an AOTInductor package (expected one wrapper_metadata.json in it)")
            return json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not a readable AOTInductor package ({first_line(e)})") from e


def check_package(path: str | os.PathLike, device: str) -> dict[str, str]:
    """Refuse, before loading, a `.pt2` that this process cannot run: compiled code from another torch
    version, or kernels for instructions this CPU lacks, can crash the process instead of failing."""
    metadata = package_metadata(path)
    built_by = metadata.get(TORCH_VERSION_KEY)
    rebuild = "Re-export it here with `python -m export --to aoti` (a .pt2 runs only under the torch that compiled it)"
    if built_by != torch.__version__:
        raise AotiPackageMismatch(
            f"{path}: compiled by torch {built_by or 'of an unknown version'}, but this is torch {torch.__version__}; "
            f"not loaded. {rebuild}, or use the export's ONNX or TorchScript artifact"
        )
    built_for = metadata.get("AOTI_DEVICE_KEY", "cpu")
    if built_for != device:
        raise AotiPackageMismatch(f"{path}: compiled for {built_for}, asked to run on {device}; not loaded. {rebuild}")
    if device == "cpu":
        flags = cpu_flags()
        needed = [ISA_FLAGS[word] for word in metadata.get("AOTI_CPU_ISA", "").split() if word in ISA_FLAGS]
        missing = [flag for flag in needed if flags is not None and flag not in flags]
        if missing:
            raise AotiPackageMismatch(
                f"{path}: its kernels use {metadata['AOTI_CPU_ISA']} instructions and this CPU lacks {', '.join(missing)}; "
                f"not loaded. {rebuild}"
            )
    return metadata


def unusable_reason(path: str | os.PathLike, device: str) -> str | None:
    """Why the `.pt2` at `path` cannot run here on `device` (None: it can)."""
    try:
        check_package(path, device)
    except AotiPackageMismatch as e:
        return str(e)
    return None


def load_package(path: str | os.PathLike, device: str) -> Any:
    """The compiled model of a checked `.pt2` (callable: float tensor on `device` -> logits)."""
    check_package(path, device)
    from torch import _inductor as inductor

    return inductor.aoti_load_package(str(path))
