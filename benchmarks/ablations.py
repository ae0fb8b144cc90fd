"""Opt-in ablations (`python -m benchmarks infer --ablations`): ONNX Runtime sessions with one setting
changed from the runners' policy (`export.runners.onnxruntime_session_options`), built here on the
export's ONNX file, so the product carries no knob that only a benchmark turns.
"""

from __future__ import annotations

from pathlib import Path

import torch

# What a session's idle intra-op threads do after a run, as session config entries.
IDLE_THREADS = {
    "spin": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"},
    "block": {"session.intra_op.allow_spinning": "0"},
    "spin within a run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
}
RUNNERS_IDLE_THREADS = "spin within a run"  # what onnxruntime_session_options sets
LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


class OnnxSession:
    """An ONNX Runtime CPU session on `model_path` with `threads` intra-op threads, graph optimization
    `level` and idle-thread policy `idle`; `predict` maps a float32 NCHW batch to logits like a runner."""

    def __init__(self, model_path: Path, threads: int, level: str = "ORT_ENABLE_ALL", idle: str = RUNNERS_IDLE_THREADS):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        for key, value in IDLE_THREADS[idle].items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: batch.contiguous().numpy()})[0])
