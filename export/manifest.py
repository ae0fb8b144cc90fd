"""The export directory's `manifest.json` (shared/DESIGN.md, contract 2): writing, reading, checking.

One manifest describes every artifact made from one checkpoint: what the model expects (the same
`preprocess` block as the checkpoint), where it came from (checkpoint path, sha256, metrics), which
library versions made it, and per artifact its file, sha256, precision, batch range and parity result.
`serve` and `client --local` trust nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("torchscript", "onnx", "onnx-int8", "trt")

REQUIRED_KEYS = (
    "schema_version", "name", "arch", "arch_kwargs", "num_classes", "class_names", "preprocess",
    "input", "output", "source_checkpoint", "versions", "artifacts",
)  # fmt: skip
REQUIRED_ARTIFACT_KEYS = ("format", "file", "sha256", "precision", "device", "batch_sizes", "parity")


class ExportError(RuntimeError):
    """Something about an export (its inputs, its directory, an artifact) is wrong; the message says what."""


class ResourceUnavailable(ExportError):
    """What was asked for needs something this machine lacks (CUDA, TensorRT, onnxruntime-gpu)."""


class ManifestError(ExportError):
    """A manifest that is missing, unreadable or incomplete."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`.

    Exporters write to the temporary path, so a crash never leaves a half-written artifact that a
    server could pick up under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def library_versions() -> dict[str, str]:
    """Versions of everything that can change an artifact's numbers (TensorRT when importable)."""
    import onnx
    import onnxruntime
    import torch
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import tensorrt  # noqa: PLC0415  (optional: only on CUDA machines)

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return versions


def write_manifest(export_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Validate, then write `manifest.json` atomically (sorted artifacts, stable key order)."""
    export_dir = Path(export_dir)
    check_manifest(manifest, export_dir / MANIFEST_NAME)
    manifest = dict(manifest, artifacts=sorted(manifest["artifacts"], key=lambda a: FORMATS.index(a["format"])))
    target = export_dir / MANIFEST_NAME
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate `<export_dir>/manifest.json` (also accepts the manifest's own path)."""
    path = Path(export_dir)
    if path.is_dir() or not path.name.endswith(".json"):
        path = path / MANIFEST_NAME
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (the directory {path.parent} does not exist either)"
        raise ManifestError(
            f"{path}: no export manifest here{hint}. Create the export with "
            f"`python -m export --checkpoint runs/<name>/best.pt --out {path.parent}`."
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); re-run `python -m export` to rewrite it") from e
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: manifest is missing keys {missing}; re-run `python -m export`")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {manifest['schema_version']!r}, this code reads {SCHEMA_VERSION}; "
            "re-run `python -m export` with this version"
        )
    if len(manifest["class_names"]) != manifest["num_classes"]:
        raise ManifestError(
            f"{path}: {len(manifest['class_names'])} class names for num_classes={manifest['num_classes']}"
        )
    for i, artifact in enumerate(manifest["artifacts"]):
        missing = [k for k in REQUIRED_ARTIFACT_KEYS if k not in artifact]
        if missing:
            raise ManifestError(f"{path}: artifacts[{i}] is missing keys {missing}")
        if artifact["format"] not in FORMATS:
            raise ManifestError(f"{path}: artifacts[{i}] has unknown format {artifact['format']!r}; known: {FORMATS}")
    formats = [a["format"] for a in manifest["artifacts"]]
    if len(set(formats)) != len(formats):
        raise ManifestError(f"{path}: more than one artifact per format: {formats}")


def find_artifact(manifest: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    return next((a for a in manifest["artifacts"] if a["format"] == fmt), None)


def verify_artifact_file(export_dir: str | os.PathLike, artifact: dict[str, Any]) -> Path:
    """The artifact's path, after checking it exists and its sha256 matches the manifest."""
    path = Path(export_dir) / artifact["file"]
    if not path.is_file():
        raise ManifestError(f"{path}: the manifest lists this {artifact['format']} artifact but the file is missing")
    actual = sha256_file(path)
    if actual != artifact["sha256"]:
        raise ManifestError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's {artifact['sha256'][:16]}...; "
            "the file changed after export. Re-export, or run `python -m export --verify "
            f"{Path(export_dir)}` to re-check its parity"
        )
    return path
