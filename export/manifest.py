"""The export directory's `manifest.json` (docs/architecture.md, contract 2): writing, reading, checking.

One manifest describes every artifact made from one checkpoint: what the model expects (the same
`preprocess` block as the checkpoint), where it came from (checkpoint path, sha256, metrics), which
library versions made it, and per artifact its file, sha256, precision, batch range and parity result.
`serve` and `client --local` trust nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsutil.atomic import atomic_write_text, sha256_file
from models import PreprocessSpec

from .registry import FORMATS

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

REQUIRED_KEYS = (
    "schema_version",
    "name",
    "arch",
    "arch_kwargs",
    "num_classes",
    "class_names",
    "preprocess",
    "input",
    "output",
    "source_checkpoint",
    "versions",
    "artifacts",
)
REQUIRED_ARTIFACT_KEYS = ("format", "file", "sha256", "precision", "device", "batch_sizes", "parity")


class ExportError(RuntimeError):
    """Something about an export (its inputs, its directory, an artifact) is wrong; the message says what."""


class ResourceUnavailable(ExportError):
    """What was asked for needs something this machine lacks (CUDA, TensorRT, onnxruntime-gpu)."""


class ManifestError(ExportError):
    """A manifest that is missing, unreadable or incomplete."""


@dataclass
class Artifact:
    """One exported file and what is known about it: format, hash, precision, batch range, parity result.

    `details` holds the format-specific facts (exporter, opset, I/O names, calibration, ...), written
    beside the common keys in the JSON object.
    """

    format: str
    file: str  # a bare file name inside the export directory
    sha256: str
    precision: str
    device: str  # "any", "cpu" or "cuda": where it may run
    batch_sizes: dict[str, int | None]
    parity: dict[str, Any]  # export.parity.check_parity's result: passed, failures, metrics, thresholds, data
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    @property
    def default_ok(self) -> bool:
        """Whether runners and archives may pick it without being asked: it passed parity and, in reduced
        precision, its accuracy cost was measured on enough labelled images (export.parity's
        `default_use`). A reduced-precision entry from before that gate, or checked on random inputs, is not."""
        if not self.passed:
            return False
        default_use = self.parity.get("default_use")
        return self.precision == "fp32" if default_use is None else bool(default_use.get("qualified"))

    @property
    def max_batch_size(self) -> int | None:
        return self.batch_sizes.get("max")

    def to_dict(self) -> dict[str, Any]:
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}
        return {**common, **self.details}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Artifact:
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: expected a JSON object, found {type(d).__name__}")
        missing = [k for k in REQUIRED_ARTIFACT_KEYS if k not in d]
        if missing:
            raise ManifestError(f"{where} is missing keys {missing}")
        if d["format"] not in FORMATS:
            raise ManifestError(f"{where} has unknown format {d['format']!r}; known: {FORMATS}")
        check_bare_file_name(d["file"], where)
        if not isinstance(d["parity"], dict) or not isinstance(d["batch_sizes"], dict):
            raise ManifestError(f"{where}: parity and batch_sizes must be JSON objects")
        common = {k: d[k] for k in REQUIRED_ARTIFACT_KEYS}
        return cls(**common, details={k: v for k, v in d.items() if k not in REQUIRED_ARTIFACT_KEYS})


def check_bare_file_name(name: Any, where: str) -> None:
    """Artifact files are bare names inside the export directory: never a path that could point elsewhere."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ManifestError(f"{where}: artifact file {name!r} is not a bare file name inside the export directory")


@dataclass
class Manifest:
    """An export directory's `manifest.json` (docs/architecture.md, contract 2)."""

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    class_names: list[str]
    preprocess: PreprocessSpec
    input: dict[str, Any]
    output: dict[str, Any]
    source_checkpoint: dict[str, Any]  # path, sha256, metrics, epoch, ema
    versions: dict[str, str]
    artifacts: list[Artifact] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # created, verified, and keys of newer versions

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def find(self, fmt: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.format == fmt), None)

    def availability(self) -> str:
        """'torchscript (passed parity), onnx (FAILED parity)' or 'none'."""
        listed = [f"{a.format} ({'passed' if a.passed else 'FAILED'} parity)" for a in self.artifacts]
        return ", ".join(listed) or "none"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema_version": self.schema_version,
            "name": self.name,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "input": self.input,
            "output": self.output,
            "source_checkpoint": self.source_checkpoint,
            "versions": self.versions,
        }
        d.update(self.extra)
        d["artifacts"] = [a.to_dict() for a in sorted(self.artifacts, key=lambda a: FORMATS.index(a.format))]
        return d

    @classmethod
    def from_dict(cls, d: Any, path: str | os.PathLike) -> Manifest:
        """Validate a manifest read from `path` (the path only names the file in errors)."""
        if not isinstance(d, dict):
            raise ManifestError(f"{path}: expected a JSON object, found {type(d).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise ManifestError(f"{path}: manifest is missing keys {missing}; re-run `python -m export`")
        if d["schema_version"] != SCHEMA_VERSION:
            raise ManifestError(
                f"{path}: schema_version {d['schema_version']!r}, this code reads {SCHEMA_VERSION}; "
                "re-run `python -m export` with this version"
            )
        names = d["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ManifestError(f"{path}: class_names must be a list of strings")
        if len(names) != d["num_classes"]:
            raise ManifestError(f"{path}: {len(names)} class names for num_classes={d['num_classes']}")
        try:
            preprocess = PreprocessSpec.from_dict(d["preprocess"])
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{path}: invalid preprocess block ({e})") from None
        if not isinstance(d["artifacts"], list):
            raise ManifestError(f"{path}: artifacts must be a list")
        artifacts = [Artifact.from_dict(a, f"{path}: artifacts[{i}]") for i, a in enumerate(d["artifacts"])]
        formats = [a.format for a in artifacts]
        if len(set(formats)) != len(formats):
            raise ManifestError(f"{path}: more than one artifact per format: {formats}")
        fields = ("name", "arch", "arch_kwargs", "input", "output", "source_checkpoint", "versions", "schema_version")
        return cls(
            **{k: d[k] for k in fields},
            class_names=list(names),
            preprocess=preprocess,
            artifacts=artifacts,
            extra={k: v for k, v in d.items() if k not in REQUIRED_KEYS},
        )


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
        import tensorrt  # optional: only on CUDA machines

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return versions


def write_manifest(export_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically (artifacts in FORMATS order, stable key order)."""
    target = Path(export_dir) / MANIFEST_NAME
    atomic_write_text(target, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return target


def read_manifest(export_dir: str | os.PathLike) -> Manifest:
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
    check_inside(path.parent, path, "the manifest")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); re-run `python -m export` to rewrite it") from e
    return Manifest.from_dict(data, path)


def check_inside(export_dir: str | os.PathLike, path: Path, what: str) -> None:
    """Refuse `path` when it is a symlink or resolves outside `export_dir`: a file the export did not
    write (a link to the server's key file, say, with that file's sha256 in the manifest) is never
    packaged or loaded, whatever its checksum."""
    if path.is_symlink():
        raise ManifestError(
            f"{path}: {what} is a symbolic link (to {os.readlink(path)}); an export directory holds the files "
            "themselves. Re-export, or copy the file in place of the link"
        )
    if not path.resolve().is_relative_to(Path(export_dir).resolve()):
        raise ManifestError(f"{path}: {what} resolves to {path.resolve()}, outside the export directory {export_dir}")


def verify_artifact_file(export_dir: str | os.PathLike, artifact: Artifact) -> Path:
    """The artifact's path, after checking it exists and its sha256 matches the manifest."""
    path = Path(export_dir) / artifact.file
    if not path.is_file():
        raise ManifestError(f"{path}: the manifest lists this {artifact.format} artifact but the file is missing")
    check_inside(export_dir, path, f"this {artifact.format} artifact")
    actual = sha256_file(path)
    if actual != artifact.sha256:
        raise ManifestError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's {artifact.sha256[:16]}...; "
            "the file changed after export, so it is not loaded. Re-export it with `python -m export` (if you "
            f"replaced it on purpose: `python -m export --verify {Path(export_dir)} --accept-changed {artifact.format}` "
            "checks it and records the acceptance)"
        )
    return path
