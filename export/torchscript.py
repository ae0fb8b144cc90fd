"""TorchScript helpers shared by the exporter and the runner, kept apart so that a serving worker that
loads a TorchScript file never imports the ONNX stack."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def quiet_torchscript_deprecation():
    # TorchScript is deprecated upstream and says so on every call; it is exported and loaded on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        yield
