"""Grad-CAM overlays of an export's predictions (`python -m client --local EXPORT_DIR --explain`), from
the model the export was made from.

The artifacts (ONNX, TensorRT, ...) carry no gradients, so the explanation comes from the source
checkpoint the manifest records, accepted only when its sha256 still matches the manifest (a changed
checkpoint would explain some other model). Pixels come through the manifest's preprocessing, the
server's path, so the heat map lies over exactly what the network saw.
"""

from __future__ import annotations

from pathlib import Path

from export.manifest import ExportError, read_manifest, sha256_file
from models import CheckpointError, EncodedImageTransform, model_from_checkpoint
from models.imageio import ImageDecodeError
from models.inspect import grad_cam, save_overlay


class ExplanationError(ValueError):
    """The export's source checkpoint cannot be explained (gone, changed or unreadable), or an image
    does not decode; the message says which and what to do."""


class Explainer:
    """Writes `<out_dir>/<image stem>.gradcam.png` for each image it is given."""

    def __init__(self, export_dir: str | Path, out_dir: str | Path, *, top_k: int = 3) -> None:
        try:
            manifest = read_manifest(export_dir)
        except ExportError as e:
            raise ExplanationError(f"--explain: {e}") from None
        source = manifest.source_checkpoint
        path = Path(source["path"])
        if not path.is_file():
            raise ExplanationError(
                f"--explain needs the checkpoint {export_dir} was exported from, {path}, and it is gone; "
                "Grad-CAM needs gradients, which the exported artifacts do not have"
            )
        if sha256_file(path) != source["sha256"]:
            raise ExplanationError(
                f"--explain: {path} changed since {export_dir} was exported from it (sha256 differs from the "
                "manifest); re-export, or the explanation would be of another model"
            )
        try:
            self.model, ckpt = model_from_checkpoint(path)
        except CheckpointError as e:
            raise ExplanationError(f"--explain: {e}") from None
        self.class_names = list(ckpt.class_names)
        self.transform = EncodedImageTransform(manifest.preprocess)
        self.out_dir = Path(out_dir)
        self.top_k = min(top_k, len(self.class_names))
        self.written: set[Path] = set()

    def explain(self, image_path: str | Path, data: bytes) -> Path:
        """The overlay's path (a second image with the same file name gets `-2`, `-3`, ...)."""
        try:
            pixels = self.transform.pixels(data)
        except ImageDecodeError as e:
            raise ExplanationError(str(e)) from None
        maps = grad_cam(self.model, self.transform.normalize(pixels)[None], self.class_names, top_k=self.top_k)
        stem, n = Path(image_path).stem, 1
        target = self.out_dir / f"{stem}.gradcam.png"
        while target in self.written:
            n += 1
            target = self.out_dir / f"{stem}-{n}.gradcam.png"
        self.written.add(target)
        return save_overlay(pixels, maps, target, title=Path(image_path).name)
