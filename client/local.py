"""`--local`: the server's predictions without a server.

`classify.classifier.Classifier` is the server handler's own prediction path (the manifest's
preprocessing, the same runner, softmax and top-k rounded as served), so `--local` answers exactly
what the server would. Imported only in `--local` mode, so the remote client never needs torch.
"""

from __future__ import annotations

from pathlib import Path

from classify.classifier import Classifier
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
            self.classifier = Classifier.from_export(export_dir, fmt=fmt, device=device, threads=threads, top_k=top_k)
        except (OSError, ValueError, RuntimeError) as e:  # export's errors are RuntimeErrors
            raise LocalModelError(f"cannot load the export {export_dir}: {e}") from None

    def predict(self, image: bytes) -> Predictions:
        try:
            (prediction,) = self.classifier.classify([image])
        except ImageDecodeError as e:
            # The server answers the same message with a 4xx.
            raise ClientError(str(e)) from None
        return prediction
