"""Runners (docs/architecture.md, contract 3): one interface over eager PyTorch, TorchScript, ONNX Runtime,
AOTInductor and TensorRT.

    runner = open_runner("exports/digits")            # fastest artifact fit for default use on CPU
    logits = runner.predict(batch)                    # float32 NCHW on CPU in, float32 logits on CPU out

Parity checks, the TorchServe handler, `client --local` and the benchmarks all go through here, so
there is exactly one inference loop per format.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

import torch

from hostinfo import cpu_flags
from models import Checkpoint, PreprocessSpec, model_from_checkpoint

from .manifest import Artifact, ExportError, Manifest, ResourceUnavailable, read_manifest, verify_artifact_file
from .registry import DEVICES, FORMATS, export_format, preference
from .torchscript import quiet_torchscript_deprecation


class Runner(abc.ABC):
    """float32 NCHW batch (CPU) -> float32 logits (CPU), whatever runs underneath."""

    format: str  # "eager", "torchscript", "onnx", "onnx-int8", "aoti", "aoti-bf16", "aoti-fp16" or "trt"
    computes_in_torch: bool  # whether the network runs on PyTorch's intra-op threads

    def __init__(self, *, device: str, preprocess: PreprocessSpec, class_names: list[str]) -> None:
        self.device = device
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.max_batch_size: int | None = None  # None: any batch size
        self.artifact: Artifact | None = None  # the manifest entry, for runners opened from an export

    @abc.abstractmethod
    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a float32 contiguous CPU batch; any device and dtype."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a float NCHW batch with 3 channels, got shape {tuple(batch.shape)}")
        if self.max_batch_size is not None and batch.shape[0] > self.max_batch_size:
            raise ValueError(
                f"batch of {batch.shape[0]} exceeds this {self.format} artifact's maximum batch size "
                f"{self.max_batch_size}; split the batch"
            )
        batch = batch.detach().to("cpu", torch.float32).contiguous()
        return self._run(batch).to("cpu", torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, classes={len(self.class_names)})"


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {sorted(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ResourceUnavailable("device 'cuda' asked for, but PyTorch sees no CUDA device on this machine")
    return device


def limit_torch_threads(threads: int | None) -> None:
    # PyTorch's intra-op pool is per process: one server worker per process, so setting it here is
    # what keeps several workers from oversubscribing the cores.
    if threads is not None:
        torch.set_num_threads(threads)


class EagerRunner(Runner):
    """The PyTorch model itself: the reference every artifact is compared with."""

    format = "eager"
    computes_in_torch = True

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu", threads: int | None = None, **meta: Any):
        super().__init__(device=check_device(device), **meta)
        limit_torch_threads(threads)
        self.model = model.eval().to(device)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.to(self.device))


class TorchScriptRunner(Runner):
    """A frozen TorchScript file (`torch.jit.load`), optimized for inference on the device at load time."""

    format = "torchscript"
    computes_in_torch = True

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None, **meta: Any):
        super().__init__(device=check_device(device), **meta)
        limit_torch_threads(threads)
        # optimize_for_inference's rewrites are device specific (MKLDNN layouts on CPU, cuDNN fusions on
        # CUDA) and its MKLDNN constants cannot be serialized, so the file holds the frozen, BN-folded
        # module and this device-specific step runs here.
        with quiet_torchscript_deprecation():
            self.module = torch.jit.optimize_for_inference(torch.jit.load(str(path), map_location=device).eval())

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch.to(self.device))


def onnxruntime_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ResourceUnavailable(
            "device 'cuda' for ONNX Runtime needs the CUDA execution provider, which this onnxruntime "
            f"({ort.__version__}, providers {ort.get_available_providers()}) lacks: "
            "`pip install -e .[gpu]` installs onnxruntime-gpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def onnxruntime_session_options(threads: int | None):
    """The session options every ONNX Runtime runner uses: all graph optimizations, errors-only logging,
    `threads` intra-op threads (one inter-op), and idle threads that spin within a run but stop at its
    end. ONNX Runtime's default keeps them spinning after every run, on the cores the caller's next
    decode and resize (and, served, TorchServe's frontend) need; blocking instead makes every operator
    of a run wake the pool again, which slows a lone request on a virtual machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ONNX Runtime session (CPU provider; CUDA provider with onnxruntime-gpu)."""

    format = "onnx"
    computes_in_torch = False

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None, **meta: Any):
        import onnxruntime as ort

        super().__init__(device=device, **meta)
        options = onnxruntime_session_options(threads)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=onnxruntime_providers(device))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([self.output_name], {self.input_name: batch.numpy()})
        return torch.from_numpy(logits)


class OnnxRuntimeInt8Runner(OnnxRuntimeRunner):
    """A QDQ int8 ONNX file (export/quantize.py): the same session, which fuses each QuantizeLinear /
    DequantizeLinear pair into an int8 kernel."""

    format = "onnx-int8"


class AotiRunner(Runner):
    """An AOTInductor package (`.pt2`, export/aoti.py), refused before loading when it was compiled by
    another torch version or for another CPU instruction set or device."""

    format = "aoti"
    computes_in_torch = True

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None, **meta: Any):
        from .aoti import load_package  # imports torch._inductor: only when used

        super().__init__(device=check_device(device), **meta)
        limit_torch_threads(threads)
        self.model = load_package(path, device)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.to(self.device))


class AotiBf16Runner(AotiRunner):
    """The bf16 package: float32 in and out, bfloat16 inside (CPUs with AVX512-BF16 or AMX)."""

    format = "aoti-bf16"


class AotiFp16Runner(AotiRunner):
    """The CUDA fp16 package: float32 in and out, float16 inside."""

    format = "aoti-fp16"


class TensorRTRunner(Runner):
    """A serialized TensorRT engine, run with `execute_async_v3` on PyTorch-allocated CUDA memory."""

    format = "trt"
    computes_in_torch = False

    def __init__(self, path: str | os.PathLike, *, device: str = "cuda", threads: int | None = None, **meta: Any):
        from .tensorrt_engine import import_tensorrt  # TensorRT is optional

        # `threads` has no meaning here: the GPU does the work.

        if device != "cuda":
            raise ExportError(f"TensorRT engines run on CUDA only, not on {device!r}")
        trt = import_tensorrt()
        super().__init__(device=check_device(device), **meta)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ExportError(
                f"{path}: TensorRT {trt.__version__} could not deserialize this engine; engines only load "
                "with the TensorRT version and GPU model that built them. Rebuild it with `python -m export --to trt`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        # Profile 0's (min, opt, max) input shapes: the batch range the engine was built for.
        self.max_batch_size = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]
        self.stream = torch.cuda.Stream()

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            inputs = batch.to("cuda", non_blocking=True)
            self.context.set_input_shape(self.input_name, tuple(inputs.shape))
            logits = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda"
            )
            self.context.set_tensor_address(self.input_name, inputs.data_ptr())
            self.context.set_tensor_address(self.output_name, logits.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        self.stream.synchronize()
        return logits


def runner_class(fmt: str) -> type[Runner]:
    """The Runner class the format's record names (a class of this module)."""
    return globals()[export_format(fmt).runner]


def runner_from_checkpoint(
    path_or_ckpt: str | os.PathLike | Checkpoint, device: str = "cpu", threads: int | None = None
) -> EagerRunner:
    """Eager PyTorch from one of our checkpoints (EMA weights when it has them)."""
    model, ckpt = model_from_checkpoint(path_or_ckpt, use_ema=True)
    return EagerRunner(model, device=device, threads=threads, preprocess=ckpt.preprocess, class_names=ckpt.class_names)


def runner_for_artifact(
    export_dir: str | os.PathLike, manifest: Manifest, artifact: Artifact, device: str, threads: int | None
) -> Runner:
    """The runner for one manifest entry, after checking its device and the file's sha256 (parity status is
    the caller's call)."""
    if artifact.device not in ("any", device):
        raise ExportError(
            f"{export_dir}: the {artifact.format} artifact runs on {artifact.device} only (its parity was "
            f"checked there), not on {device!r}"
        )
    path = verify_artifact_file(export_dir, artifact)
    runner = runner_class(artifact.format)(
        path, device=device, threads=threads, preprocess=manifest.preprocess, class_names=manifest.class_names
    )
    runner.artifact = artifact
    return runner


def open_runner(
    export_dir: str | os.PathLike,
    fmt: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    allow_failed: bool = False,
) -> Runner:
    """A runner for an export directory.

    `fmt=None` picks the fastest artifact for `device` fit for default use (`export.registry.preference`
    with this machine's CPU flags, so int8 and bf16 only where the CPU has the instructions that make them
    fast): fp32 ones that passed parity, reduced-precision ones only when they also passed the accuracy gate
    on enough labelled images. A named `fmt` that failed parity raises unless `allow_failed`.
    `threads` caps the intra-op threads (ONNX Runtime session option; PyTorch's per-process pool).
    """
    check_device(device)
    manifest = read_manifest(export_dir)
    where = Path(export_dir)
    available = manifest.availability()
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        artifact = manifest.find(fmt)
        if artifact is None:
            raise ExportError(f"{where}: no {fmt} artifact in this export (it has: {available})")
        if not artifact.passed and not allow_failed:
            raise ExportError(
                f"{where}: the {fmt} artifact FAILED its parity check ({parity_summary(artifact)}); refusing to "
                "serve it. Re-export, or force it (allow_failed=True) if you accept the difference"
            )
        return runner_for_artifact(where, manifest, artifact, device, threads)

    skipped = []  # faster formats whose runtime is missing here (TensorRT, onnxruntime-gpu, another torch)
    order = preference(device, cpu_flags())
    for candidate in order:
        artifact = manifest.find(candidate)
        if artifact is not None and (artifact.default_ok or allow_failed):
            try:
                return runner_for_artifact(where, manifest, artifact, device, threads)
            except ResourceUnavailable as e:
                skipped.append(f"{candidate}: {e}")
    why = f"; skipped because their runtime is missing: {'; '.join(skipped)}" if skipped else ""
    raise ExportError(
        f"{where}: no artifact usable on {device} that is fit for default use (it has: {available}); "
        f"formats fit to run on this {device}: {', '.join(order)}{why}"
    )


def parity_summary(artifact: Artifact) -> str:
    failures = artifact.parity.get("failures") or []
    return "; ".join(failures) if failures else f"metrics {artifact.parity.get('metrics')}"
