"""Our TorchServe handler with the two changes the serve benchmark's request split points to, packaged
next to the shipped one so the served before/after is measured in the same run:

- ONNX Runtime's intra-op threads do not spin-wait between runs (`session.intra_op.allow_spinning` 0):
  while they spin, they hold the cores that decoding and resizing the next batch needs;
- decoding and preprocessing run with one PyTorch thread: per-image work too small to split, whose
  OpenMP threads otherwise spin against ONNX Runtime's.

TorchServe imports this file as a top-level module in each worker (as it does `serve/handler.py`).
It is an experiment, not a recommendation: on the quiet 2-core machine (benchmarks/results/amd-epyc-2c)
it raised ResNet-18's served throughput by 15% but lowered ResNet-50's by 10%, because ONNX Runtime
without spin-waiting pays a thread wake-up per operator.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.variants import with_onnx_session
from serve.handler import ImageClassifierHandler


class TunedImageClassifierHandler(ImageClassifierHandler):
    def initialize(self, context):
        super().initialize(context)
        if self.runner.format == "onnx":
            model_dir = Path(context.system_properties["model_dir"])
            with_onnx_session(self.runner, model_dir / self.runner.artifact["file"], spinning=False)

    def preprocess(self, data):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return super().preprocess(data)
        finally:
            torch.set_num_threads(threads)
