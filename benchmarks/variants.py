"""The project's runners with one setting changed, for the ablations that explain a result.

Each takes a runner made by `export.runners` and changes one thing, so the inference path stays the
project's own (`Runner.predict`); only the setting under study differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.runners import RUNNER_IDLE_THREADS, Runner, onnxruntime_session_options, runner_from_checkpoint


def channels_last_runner(checkpoint: Path, device: str, threads: int) -> Runner:
    """The eager runner with its module in channels_last memory format (the input stays NCHW: the first
    convolution's channels_last weight makes oneDNN/cuDNN produce channels_last activations from there on)."""
    runner = runner_from_checkpoint(checkpoint, device=device, threads=threads)
    runner.model.to(memory_format=torch.channels_last)
    return runner


def with_onnx_session(runner: Runner, model_path: Path, *, level: str = "ORT_ENABLE_ALL", idle: str = RUNNER_IDLE_THREADS) -> Runner:
    """An ONNX Runtime runner whose session is rebuilt with another graph optimization level or another
    policy for its idle threads (`export.runners.IDLE_THREADS`; same thread count and providers)."""
    import onnxruntime as ort  # noqa: PLC0415

    threads = runner.session.get_session_options().intra_op_num_threads
    options = onnxruntime_session_options(threads, level, idle=idle)
    runner.session = ort.InferenceSession(str(model_path), sess_options=options, providers=runner.session.get_providers())
    return runner


class Float16(torch.nn.Module):
    """`model` in half precision behind the float32 interface that `Runner.predict` passes and returns."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def fp16_channels_last_runner(checkpoint: Path, device: str, threads: int) -> Runner:
    """The eager runner in fp16 and channels_last: FP16 inference where there is no TensorRT (on CUDA,
    cuDNN's tensor-core convolutions)."""
    runner = channels_last_runner(checkpoint, device, threads)
    runner.model = Float16(runner.model)
    return runner
