"""`--local`: the server's predictions without a server.

Same decoding and preprocessing as the handler (`models.EncodedImageTransform` of the manifest's
`preprocess`: `decode_image` with JPEG draft mode, then the validation transform), same runner
(`export.runners.open_runner`) and the same answer: softmax probabilities of the top-k classes,
highest first, rounded to 6 decimals as the handler sends them. Imported only in `--local` mode, so
the remote client never needs torch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.runners import open_runner
from models import EncodedImageTransform, top_k_labels
from models.imageio import ImageDecodeError

from .errors import ClientError, LocalModelError
from .remote import Predictions


class LocalPredictor:
    """Classifies encoded images with an export directory's runner, like the server would."""

    def __init__(
        self,
        export_dir: str | Path,
        *,
        fmt: str | None = None,
        device: str = "cpu",
        top_k: int = 5,
        threads: int | None = None,
    ):
        try:
            self.runner = open_runner(export_dir, fmt=fmt, device=device, threads=threads)
        except (OSError, ValueError, RuntimeError) as e:  # export's errors are RuntimeErrors
            raise LocalModelError(f"cannot load the export {export_dir}: {e}") from None
        self.to_input = EncodedImageTransform(self.runner.preprocess)
        self.top_k = min(top_k, len(self.runner.class_names))

    def predict(self, image: bytes) -> Predictions:
        try:
            batch = self.to_input(image).unsqueeze(0)
        except ImageDecodeError as e:
            # The server answers the same message with a 4xx.
            raise ClientError(str(e)) from None
        with torch.inference_mode():
            probabilities = self.runner.predict(batch).float().softmax(dim=1)[0]
        return [(name, round(p, 6)) for name, p in top_k_labels(probabilities, self.runner.class_names, self.top_k)]
