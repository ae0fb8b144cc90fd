"""From a checkpoint to a checked export directory: artifacts, parity results, manifest.

`export_checkpoint` writes every requested format, checks each against eager PyTorch on the parity
set and records everything in `manifest.json`; `verify_export` re-runs the parity checks of an
existing export directory (after copying it, or to catch a modified artifact).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fsutil.atomic import fsync_directory, sha256_file
from fsutil.owned import MARKER_NAME, is_owned, mark_owned, remove_owned_tree, sweep_stale_temporaries
from models import Checkpoint, load_checkpoint
from models.errors import first_line

from . import writers
from .aoti import missing_reason as aoti_missing_reason
from .aoti import unusable_reason
from .formats import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME
from .manifest import (
    FORMATS,
    MANIFEST_NAME,
    Artifact,
    ExportError,
    Manifest,
    ManifestError,
    ResourceUnavailable,
    library_versions,
    read_manifest,
    write_manifest,
)
from .parity import (
    DEFAULT_PARITY_SAMPLES,
    FP16_THRESHOLDS,
    FP32_THRESHOLDS,
    INT8_THRESHOLDS,
    ParitySet,
    Thresholds,
    check_parity,
    load_parity_set,
)
from .quantize import (
    DEFAULT_CALIBRATION_SAMPLES,
    CalibrationSet,
    CalibrationUnavailable,
    load_calibration_set,
)
from .registry import export_format
from .runners import EagerRunner, Runner, onnxruntime_providers, runner_class, runner_from_checkpoint
from .tensorrt_engine import BatchProfile, TensorRTUnavailable, tensorrt_missing_reason
from .writers import BuildJob

EXPORT_KIND = "export"  # the marker kind of an export directory (fsutil.owned.mark_owned)

Log = Callable[[str], None]


class ExportDirError(ExportError):
    """The export directory may not be written as asked (another checkpoint's export, not ours, a symlink)."""


class ChangedArtifactError(ExportError):
    """An artifact's file no longer matches the manifest's sha256 (and was not explicitly accepted)."""


@dataclass
class ExportOptions:
    formats: list[str]
    batch: BatchProfile = field(default_factory=BatchProfile)
    parity_batch: int = 16
    parity_samples: int = DEFAULT_PARITY_SAMPLES
    parity_data: Path | None = None
    fp32_thresholds: Thresholds = FP32_THRESHOLDS
    fp16_thresholds: Thresholds = FP16_THRESHOLDS
    int8_thresholds: Thresholds = INT8_THRESHOLDS
    calibration_data: Path | None = None  # onnx-int8: ImageFolder of calibration images (default: training split)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    opset: int = ONNX_OPSET
    workspace_bytes: int = 4 << 30
    device: str = "cpu"  # where TorchScript and ONNX are parity-checked (TensorRT always on CUDA)
    threads: int | None = None

    def thresholds(self, fmt: str) -> Thresholds:
        return {
            "fp32": self.fp32_thresholds,
            "fp16": self.fp16_thresholds,
            "int8": self.int8_thresholds,
        }[export_format(fmt).tolerance]


@dataclass
class ExportResult:
    manifest: Manifest
    export_dir: Path
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not attempted
    errors: dict[str, str] = field(default_factory=dict)  # format -> why its export failed
    random_parity: bool = False  # no labelled images could be had: parity ran on random pixels

    @property
    def failed(self) -> list[Artifact]:
        return [a for a in self.manifest.artifacts if not a.passed]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors


def accuracy_gate(parity_set: ParitySet) -> dict[str, Any]:
    """The manifest's record of whether the accuracy gate ran on real labelled images."""
    if parity_set.random or parity_set.labels is None:
        return {
            "run": False,
            "reason": f"no labelled images ({parity_set.description}): parity compared logits only, and no "
            "reduced-precision artifact is made the default",
        }
    return {"run": True, "data": parity_set.description}


def resolve_formats(requested: list[str], device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """(formats to build, {format: skip reason}). `all` skips TensorRT, aoti-bf16 and aoti-fp16 where
    they cannot run; naming one explicitly where it cannot run is an error (ResourceUnavailable). (`all` skipping onnx-int8
    without calibration data is decided once the checkpoint is read: `calibration_for`.)"""
    wants_all = "all" in requested
    formats = list(FORMATS) if wants_all else list(dict.fromkeys(requested))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}, all")
    skipped = {}
    if "trt" in formats:
        reason = tensorrt_missing_reason()
        if reason is not None:
            if not wants_all:
                raise TensorRTUnavailable(reason)
            formats.remove("trt")
            skipped["trt"] = reason
    for fmt in [f for f in formats if aoti_missing_reason(f, device)]:
        if not wants_all:
            raise ResourceUnavailable(aoti_missing_reason(fmt, device))
        formats.remove(fmt)
        skipped[fmt] = aoti_missing_reason(fmt, device)
    for fmt in list(formats):
        source = export_format(fmt).built_from
        if source is not None and source not in formats:
            formats.insert(formats.index(fmt), source)
    return formats, skipped


def parity_device(fmt: str, options: ExportOptions, log: Log) -> str:
    spec = export_format(fmt)
    if spec.device != "any":
        return spec.device  # e.g. int8 for ONNX Runtime's CPU kernels, bf16 for CPUs that compute it, TensorRT
    if fmt == "onnx" and options.device == "cuda":
        try:
            onnxruntime_providers("cuda")
        except ExportError as e:
            log(f"checking ONNX on CPU instead: {e}")
            return "cpu"
    return options.device


class ReferenceRunners:
    """Eager PyTorch per device, built once, with its parity logits kept between artifacts
    (parity compares like with like: the same device, the same batch size)."""

    def __init__(self, ckpt: Checkpoint, threads: int | None) -> None:
        self.ckpt, self.threads = ckpt, threads
        self.runners: dict[str, EagerRunner] = {}
        self.logits: dict[str, dict[tuple[int, int], torch.Tensor]] = {}

    def __getitem__(self, device: str) -> EagerRunner:
        if device == "cuda":
            # The reference must be true fp32: PyTorch's default TF32 convolutions on Ampere+ differ from
            # fp32 by ~1e-3, which would fail fp32 artifacts (e.g. ONNX Runtime CUDA) that are right.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if device not in self.runners:
            self.runners[device] = runner_from_checkpoint(self.ckpt, device=device, threads=self.threads)
            self.logits[device] = {}
        return self.runners[device]


def write_artifact(
    fmt: str,
    model: torch.nn.Module,
    export_dir: Path,
    options: ExportOptions,
    input_size: int,
    calibration: CalibrationSet | None,
    log: Log,
) -> Artifact:
    spec = export_format(fmt)
    job = BuildJob(
        fmt=fmt,
        model=model,
        example=torch.randn(max(2, options.batch.opt), 3, input_size, input_size),
        export_dir=export_dir,
        input_size=input_size,
        batch=options.batch,
        opset=options.opset,
        workspace_bytes=options.workspace_bytes,
        device=options.device,
        calibration=calibration,
        log=log,
    )
    details = writers.write(job)
    path = job.path
    return Artifact(
        format=fmt,
        file=path.name,
        sha256=sha256_file(path),
        precision=spec.precision,
        device=details.pop("runs_on", None) or spec.device,
        # Most formats take any batch size (max None); an engine only its profile's range.
        batch_sizes=options.batch.to_dict()
        if spec.batch_profile
        else {"min": 1, "opt": options.batch.opt, "max": None},
        parity={},  # filled in by run_parity
        details={"size_bytes": path.stat().st_size, **details},
    )


def open_artifact(export_dir: Path, artifact: Artifact, reference: Runner, device: str, threads: int | None) -> Runner:
    return runner_class(artifact.format)(
        export_dir / artifact.file,
        device=device,
        threads=threads,
        preprocess=reference.preprocess,
        class_names=reference.class_names,
    )


def run_parity(
    artifact: Artifact,
    export_dir: Path,
    references: ReferenceRunners,
    parity_set: ParitySet,
    options: ExportOptions,
    log: Log,
) -> dict[str, Any]:
    fmt = artifact.format
    device = parity_device(fmt, options, log)
    reference = references[device]
    runner = open_artifact(export_dir, artifact, reference, device, options.threads)
    batch_size = min(options.parity_batch, runner.max_batch_size or options.parity_batch)
    parity = check_parity(reference, runner, parity_set, options.thresholds(fmt), batch_size, references.logits[device])
    metrics = parity["metrics"]
    verdict = "passed" if parity["passed"] else "FAILED: " + "; ".join(parity["failures"])
    log(
        f"    parity on {device}: top-1 agreement {metrics['top1_agreement']:.2%}, max |diff| "
        f"{metrics['max_abs_diff']:.2e}, min cosine {metrics['min_cosine']:.6f} -> {verdict}"
    )
    largest = metrics["by_batch_size"][str(batch_size)]
    if "artifact_top1" in largest:  # the parity images have labels: what the difference costs in accuracy
        log(
            f"    top-1 accuracy on the {largest['samples']} labelled parity images: eager "
            f"{largest['reference_top1']:.2%}, {fmt} {largest['artifact_top1']:.2%}"
        )
    return parity


def checkpoint_summary(path: Path, ckpt: Checkpoint) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "metrics": ckpt.metrics,
        "epoch": ckpt.epoch,
        "ema": ckpt.has_ema,
    }


def previous_export(export_dir: Path, source_sha256: str, overwrite: bool) -> Manifest | None:
    """The export already at `export_dir` (None when there is none). Replacing an export of another
    checkpoint needs `overwrite`; a folder that is not one of our exports is never replaced."""
    if export_dir.is_symlink():
        raise ExportDirError(f"{export_dir} is a symlink; export into a real folder (--out)")
    sweep_stale_temporaries(export_dir)
    if not export_dir.exists() or not any(export_dir.iterdir()):
        return None
    if not is_owned(export_dir, EXPORT_KIND):
        raise ExportDirError(
            f"{export_dir} exists and was not made by `python -m export` (no {MARKER_NAME} file); it is left "
            "as it is. Choose another --out, or move that folder away"
        )
    try:
        old = read_manifest(export_dir)
    except ExportError:
        return None  # an export that never got its manifest (an older crash): nothing in it to keep
    if old.source_checkpoint.get("sha256") != source_sha256 and not overwrite:
        raise ExportDirError(
            f"{export_dir} holds the export of another checkpoint ({old.source_checkpoint.get('path')}); pass "
            "--overwrite to replace it, or choose another --out/--name"
        )
    return old


def carry_over(
    old: Manifest | None, export_dir: Path, staging: Path, source_sha256: str, replacing: list[str], log: Log
) -> list[Artifact]:
    """Artifacts of an earlier export of the same checkpoint that are not rebuilt now (e.g. a TensorRT
    engine added on a GPU machine to an export made on a CPU one), linked into the new export."""
    if old is None or old.source_checkpoint.get("sha256") != source_sha256:
        return []
    kept = [a for a in old.artifacts if a.format not in replacing and (export_dir / a.file).is_file()]
    for artifact in kept:
        try:
            os.link(export_dir / artifact.file, staging / artifact.file)  # files are never changed in place
        except OSError:
            shutil.copy2(export_dir / artifact.file, staging / artifact.file)
    if kept:
        log(f"keeping the existing {', '.join(a.format for a in kept)} artifact(s) of the same checkpoint")
    return kept


@contextlib.contextmanager
def staged_export(export_dir: Path) -> Iterator[Path]:
    """A marked temporary folder beside `export_dir` to write the whole export into. The caller swaps it
    in with `swap_in`; if the export fails (or the process dies) the previous export is untouched and
    the temporary folder is removed (or swept by the next export)."""
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(export_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.", suffix=".tmp", dir=export_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the export's mode
        mark_owned(staging, EXPORT_KIND)
        yield staging
    finally:
        if staging.exists():
            remove_owned_tree(staging, EXPORT_KIND)


def swap_in(staging: Path, export_dir: Path) -> None:
    """Make `staging` the export at `export_dir` in one step; the previous export (if any) is deleted after."""
    for path in staging.iterdir():  # the data must be on disk before the rename makes it the export
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if not export_dir.exists():
        os.rename(staging, export_dir)
    elif exchange(staging, export_dir):  # now `staging` holds the previous export
        remove_previous(staging)
    else:  # no atomic exchange on this filesystem: two renames; the old export keeps a name nobody sweeps
        replaced = export_dir.with_name(f".{export_dir.name}.replaced-{os.getpid()}")
        os.rename(export_dir, replaced)
        os.rename(staging, export_dir)
        remove_previous(replaced)
    fsync_directory(export_dir.parent)


def remove_previous(folder: Path) -> None:
    """The replaced export: ours (marked), or the empty folder `previous_export` let through."""
    if is_owned(folder, EXPORT_KIND):
        remove_owned_tree(folder, EXPORT_KIND)
    else:
        folder.rmdir()  # fails, and so deletes nothing, unless it is empty


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def calibration_for(
    formats: list[str], skipped: dict[str, str], ckpt: Checkpoint, options: ExportOptions, log: Log
) -> CalibrationSet | None:
    """onnx-int8's calibration images, or None when it is not built. Without calibration data, naming
    onnx-int8 is an error (CalibrationUnavailable) and `all` skips it (removed from `formats`)."""
    if "onnx-int8" not in formats:
        return None
    try:
        calibration = load_calibration_set(ckpt, options.calibration_data, options.calibration_samples)
    except CalibrationUnavailable as e:
        if "all" not in options.formats:
            raise
        formats.remove("onnx-int8")
        skipped["onnx-int8"] = str(e)
        return None
    if (
        options.calibration_data is not None
        and options.parity_data is not None
        and (options.calibration_data.resolve() == options.parity_data.resolve())
    ):
        log(
            "WARNING: --calibration-data is --parity-data: the int8 artifact is judged on its own calibration "
            "images, which flatters it; use a separate folder"
        )
    return calibration


def export_checkpoint(
    checkpoint_path: Path,
    export_dir: Path,
    name: str | None,
    options: ExportOptions,
    log: Log = print,
    overwrite: bool = False,
) -> ExportResult:
    """Build the export in a temporary folder beside `export_dir` and swap it in as a whole: a crash or
    a failure part-way leaves the previous export as it was. Replacing another checkpoint's export
    needs `overwrite`."""
    formats, skipped = resolve_formats(options.formats, options.device)
    ckpt = load_checkpoint(checkpoint_path)
    source = checkpoint_summary(checkpoint_path, ckpt)
    old = previous_export(export_dir, source["sha256"], overwrite)  # before any work: it may refuse
    calibration = calibration_for(formats, skipped, ckpt, options, log)  # first: it can rule out onnx-int8
    steps = 2 + len(formats) + 1
    step = iter(range(1, steps + 1))

    log(f"[{next(step)}/{steps}] loaded checkpoint {checkpoint_path}")
    model = ckpt.build_model(use_ema=True, source=str(checkpoint_path))
    preprocess = ckpt.preprocess
    name = name or ckpt.arch
    weights = "EMA" if ckpt.has_ema else "raw (no EMA in the checkpoint)"
    log(
        f"    {ckpt.arch}, {ckpt.num_classes} classes, {weights} weights, "
        f"input {preprocess.input_size}px, validation metrics {ckpt.metrics}"
    )

    log(f"[{next(step)}/{steps}] parity set")
    parity_set = load_parity_set(ckpt, options.parity_data, options.parity_samples, log=log)
    log(f"    {parity_set.description}")
    if calibration is not None:
        log(f"    int8 calibration set: {calibration.description}")

    references = ReferenceRunners(ckpt, options.threads)
    artifacts, errors = [], {}
    with staged_export(export_dir) as staging:
        for fmt in formats:
            spec = export_format(fmt)
            log(f"[{next(step)}/{steps}] {fmt}: writing {spec.file}")
            if spec.built_from in errors:
                errors[fmt] = f"not built: it is built from the {spec.built_from} artifact, whose export failed"
                log(f"    {errors[fmt]}")
                continue
            started = time.perf_counter()
            try:
                artifact = write_artifact(fmt, model, staging, options, preprocess.input_size, calibration, log)
            except TensorRTUnavailable:
                raise
            except Exception as e:  # one format failing must not cost the others; the exit status reports it
                errors[fmt] = f"{type(e).__name__}: {first_line(e)}"
                log(f"    FAILED: {errors[fmt]}")
                continue
            seconds = artifact.details["export_seconds"] = round(time.perf_counter() - started, 2)
            log(
                f"    written in {seconds:.1f} s"
                + (
                    f" ({artifact.details['exporter']} exporter, opset {artifact.details['opset']}, onnx.checker passed)"
                    if fmt == "onnx"
                    else ""
                )
            )
            artifact.parity = run_parity(artifact, staging, references, parity_set, options, log)
            artifacts.append(artifact)

        log(f"[{next(step)}/{steps}] manifest")
        manifest = Manifest(
            name=name,
            arch=ckpt.arch,
            arch_kwargs=ckpt.arch_kwargs,
            class_names=list(ckpt.class_names),
            preprocess=preprocess,
            input={
                "name": INPUT_NAME,
                "dtype": "float32",
                "layout": "NCHW",
                "shape": [-1, 3, preprocess.input_size, preprocess.input_size],
            },
            output={"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, ckpt.num_classes]},
            source_checkpoint=source,
            versions=library_versions(),
            artifacts=carry_over(old, export_dir, staging, source["sha256"], formats, log) + artifacts,
            extra={
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "accuracy_gate": accuracy_gate(parity_set),
            },
        )
        if not artifacts:
            log(f"    nothing was built: {export_dir} is left as it was")
            return ExportResult(manifest, export_dir, skipped, errors, random_parity=parity_set.random)
        write_manifest(staging, manifest)
        swap_in(staging, export_dir)
        log(f"    {export_dir / MANIFEST_NAME} (the export was written beside it and swapped in whole)")
    return ExportResult(manifest, export_dir, skipped, errors, random_parity=parity_set.random)


def verify_export(
    export_dir: Path,
    checkpoint_path: Path | None,
    options: ExportOptions,
    log: Log = print,
    accept_changed: list[str] | None = None,
) -> ExportResult:
    """Re-check every artifact of an export directory against its source checkpoint; rewrite the manifest.

    An artifact whose sha256 differs from the manifest is never loaded (TorchScript is a program) and
    fails the verification with the manifest left as it was, unless its format is in `accept_changed`:
    then its new hash is recorded, with when and what it replaced, and its parity is checked again.
    """
    manifest = read_manifest(export_dir)
    accept_changed = list(accept_changed or [])
    unknown = [f for f in accept_changed if manifest.find(f) is None]
    if unknown:
        raise ManifestError(
            f"--accept-changed {', '.join(unknown)}: {export_dir} has no such artifact "
            f"(it has: {manifest.availability()})"
        )
    changed = {}
    for artifact in manifest.artifacts:
        path = export_dir / artifact.file
        if not path.is_file():
            raise ExportError(f"{path}: listed in the manifest but missing")
        sha256 = sha256_file(path)
        if sha256 != artifact.sha256:
            changed[artifact.format] = sha256
    refused = [fmt for fmt in changed if fmt not in accept_changed]
    if refused:
        files = ", ".join(f"{manifest.find(f).file} ({f})" for f in refused)
        raise ChangedArtifactError(
            f"{export_dir}: {files} changed since export (sha256 differs from the manifest); not loaded, and the "
            "manifest is unchanged. Re-export, or if you replaced the file on purpose accept it explicitly with "
            f"`python -m export --verify {export_dir} --accept-changed {refused[0]}` (its parity is checked again "
            "and the acceptance recorded)"
        )
    if checkpoint_path is None:
        checkpoint_path = Path(manifest.source_checkpoint["path"])
        if not checkpoint_path.is_file():
            raise ManifestError(
                f"{export_dir}: its source checkpoint {checkpoint_path} is gone; pass the same checkpoint "
                "with --checkpoint PATH (its sha256 is checked against the manifest)"
            )
    log(f"verifying {export_dir} against {checkpoint_path}")
    ckpt = load_checkpoint(checkpoint_path)
    if sha256_file(checkpoint_path) != manifest.source_checkpoint.get("sha256"):
        log(f"WARNING: {checkpoint_path} is not the checkpoint this export was made from (sha256 differs)")
    parity_set = load_parity_set(ckpt, options.parity_data, options.parity_samples, log=log)
    log(f"    parity set: {parity_set.description}")
    references = ReferenceRunners(ckpt, options.threads)
    skipped = {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for artifact in manifest.artifacts:
        fmt, path = artifact.format, export_dir / artifact.file
        if fmt in changed:
            log(f"{fmt}: {path.name} changed since export; accepted as asked (--accept-changed {fmt})")
            artifact.details.setdefault("accepted_changes", []).append(
                {"at": now, "previous_sha256": artifact.sha256, "sha256": changed[fmt]}
            )
            artifact.sha256, artifact.details["size_bytes"] = changed[fmt], path.stat().st_size
        if (fmt == "trt" and (reason := tensorrt_missing_reason())) or (
            export_format(fmt).writer == "write_aoti_package" and (reason := unusable_reason(path, artifact.device))
        ):
            skipped[fmt] = reason
            log(f"{fmt}: not checked here: {reason}")
            continue
        log(f"{fmt}: {path.name}")
        artifact.parity = run_parity(artifact, export_dir, references, parity_set, options, log)
    manifest.extra["verified"] = now
    manifest.extra["accuracy_gate"] = accuracy_gate(parity_set)
    write_manifest(export_dir, manifest)
    return ExportResult(manifest, export_dir, skipped, random_parity=parity_set.random)


def with_overrides(thresholds: Thresholds, **overrides: Any) -> Thresholds:
    return dataclasses.replace(thresholds, **{k: v for k, v in overrides.items() if v is not None})
