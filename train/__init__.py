"""Training: `python -m train --arch resnet50 --data imagenet` (see `python -m train --help`).

`run(config)` trains from a resolved config; `train_step` is one optimizer step, reusable by benchmarks.
"""

from .engine import StepParts, evaluate, train_step
from .run import RunResult, build_config, run

__all__ = ["RunResult", "StepParts", "build_config", "evaluate", "run", "train_step"]
