"""Export directory -> TorchServe model archive (`model_store/<name>.mar`).

The archive holds our handler (`serve/handler.py`), the export's `manifest.json` unchanged, the
artifact file(s) it lists, and a `model-config.yaml` with TorchServe's per-model settings (workers,
dynamic batching, response timeout) plus a `handler:` block that the handler reads (backend, top-k,
pixel limit). Inside a worker, the unpacked archive is itself an export directory, so the handler
opens it with `export.runners.open_runner` exactly like `client --local` opens `exports/<name>`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Only light imports here: `python -m serve status/stop/token` should not wait for torch to load.
from export.manifest import Artifact, ExportError, Manifest, read_manifest, verify_artifact_file
from fsutil.owned import mark_owned, sweep_stale_temporaries
from hostinfo import usable_cores
from serve.budget import ImageCost, Plan, plan

HANDLER_FILE = Path(__file__).with_name("handler.py")
MODEL_CONFIG_NAME = "model-config.yaml"
STAGING_KIND = "model-store-staging"  # marker kind of the folder an archive is built in
# The handler's bounds on one request (413 above them, judged from the headers before decoding): enough
# images for a client's batch, and the decoded pixels of two full-size lossless images
# (models.imageio.DEFAULT_MAX_FULL_PIXELS each) or dozens of phone photos, which JPEG's draft mode
# decodes at a fraction of their size. A batch holds up to batchSize such requests.
DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_REQUEST_PIXELS = 2 * 4096 * 4096
# Encoded image bytes per request: TorchServe's frontend enforces its max_request_size
# (serve/config.properties); Triton's backend (serve/bounds.py) refuses more before any decode.
DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024


class PackageError(RuntimeError):
    """The export directory cannot be packaged as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PackageOptions:
    backend: str | None = None  # None: every artifact that passed parity; the handler picks per device
    allow_failed: bool = False  # package (and serve) an artifact that failed its parity check
    # Two workers with half the cores each, batching 4: of the layouts `python -m benchmarks serve`
    # compares, the one that keeps the cores busiest at 8-16 requests in flight (decoding in one worker
    # overlaps inference in the other).
    workers: int = 2
    batch_size: int = 4
    max_batch_delay_ms: int = 20
    response_timeout_s: int = 60
    top_k: int = 5
    max_pixels: int | None = None  # per image; None: models.imageio.DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES  # per request
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # decoded pixels per request
    version: str = "1.0"
    cost: ImageCost | None = None  # per-image cost on the serving machine; None: measured here (serve/budget.py)


def read_export(export_dir: Path, name: str | None, options: PackageOptions) -> tuple[Manifest, str, list[Artifact]]:
    """(manifest, served model name, artifacts to serve) of an export, checked: what any server serves."""
    try:
        manifest = read_manifest(export_dir)
    except ExportError as e:
        raise PackageError(str(e)) from None
    name = check_model_name(name or manifest.name)
    check_class_names(export_dir, manifest.class_names)
    return manifest, name, choose_artifacts(export_dir, manifest, options)


def package(
    export_dir: str | os.PathLike,
    model_store: str | os.PathLike,
    name: str | None = None,
    options: PackageOptions = PackageOptions(),
    log: Callable[[str], None] = print,
) -> Path:
    """Write `<model_store>/<name>.mar` (atomically) and return its path. `name` defaults to the manifest's.
    `log` gets which backend will serve by default and what its precision costs in accuracy."""
    export_dir = Path(export_dir)
    manifest, name, artifacts = read_export(export_dir, name, options)
    for line in describe_choice(manifest, artifacts, options):
        log(line)
    try:
        files = [verify_artifact_file(export_dir, artifact) for artifact in artifacts]
    except ExportError as e:
        raise PackageError(str(e)) from None
    cost = options.cost or measure_cost(export_dir, artifacts, options)
    try:
        settings = plan(
            options.response_timeout_s,
            cost,
            workers=options.workers,
            batch_size=options.batch_size,
            max_images=options.max_images,
        )
    except ValueError as e:
        raise PackageError(f"{export_dir}: {e}") from None
    log(describe_budget(cost, settings, options))

    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(model_store)  # staging folders of a packager killed part-way (kill -9)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", suffix=".tmp", dir=model_store) as staging:
        mark_owned(staging, STAGING_KIND)  # the sweep deletes only marked folders
        config_file = Path(staging) / MODEL_CONFIG_NAME
        config_file.write_text(yaml.safe_dump(model_config(options, cost, settings), sort_keys=False))
        archive(name, options.version, [export_dir / "manifest.json", *files], config_file, Path(staging))
        target = model_store / f"{name}.mar"
        os.replace(Path(staging) / f"{name}.mar", target)
    return target


def choose_artifacts(export_dir: Path, manifest: Manifest, options: PackageOptions) -> list[Artifact]:
    from export.runners import parity_summary

    listed = manifest.availability()
    if options.backend is not None:
        artifact = manifest.find(options.backend)
        if artifact is None:
            raise PackageError(f"{export_dir}: no {options.backend} artifact in this export (it has: {listed})")
        if not artifact.passed and not options.allow_failed:
            raise PackageError(
                f"{export_dir}: the {options.backend} artifact FAILED its parity check ({parity_summary(artifact)}); "
                "refusing to package it. Re-export, or pass --allow-failed if you accept the difference"
            )
        return [artifact]
    # Reduced precision (int8, bf16, fp16) only when it passed the accuracy gate on enough labelled
    # images (Artifact.default_ok): nobody gets a cheaper, less accurate model without choosing it.
    chosen = [a for a in manifest.artifacts if a.default_ok]
    if not chosen:
        what = "fit for default use" if any(a.passed for a in manifest.artifacts) else "passed its parity check"
        raise PackageError(
            f"{export_dir}: no artifact {what} (it has: {listed}); re-export, or "
            "choose one with --backend FORMAT (--allow-failed for one that failed parity)"
        )
    return chosen


def accuracy_cost(artifact: Artifact) -> str:
    """'top-1 99.4% against fp32's 99.7% on 360 labelled images' (or why it was not measured)."""
    default_use = artifact.parity.get("default_use") or {}
    return default_use.get("reason") or "accuracy cost not measured (exported before the accuracy gate)"


def describe_choice(manifest: Manifest, chosen: list[Artifact], options: PackageOptions) -> list[str]:
    """What the archive will serve by default per device, with the accuracy cost of reduced precision,
    and the reduced-precision artifacts left out and why."""
    from export.registry import DEVICES, preference
    from hostinfo import cpu_flags

    lines = []
    for device in DEVICES:
        order = preference(device, cpu_flags())  # this machine's CPU features stand in for the server's
        served = next((a for fmt in order for a in chosen if a.format == fmt and a.device in ("any", device)), None)
        if served is None:
            continue
        cost = "" if served.precision == "fp32" else f": {accuracy_cost(served)}"
        how = "as asked (--backend)" if options.backend is not None else "by default"
        lines.append(f"on {device}: {served.format} ({served.precision}) {how}{cost}")
    for artifact in manifest.artifacts if options.backend is None else []:
        if artifact not in chosen and artifact.passed and artifact.precision != "fp32":
            lines.append(
                f"not packaged: {artifact.format} ({artifact.precision}): {accuracy_cost(artifact)}; "
                f"--backend {artifact.format} ships it anyway"
            )
    return lines


def measure_cost(export_dir: Path, artifacts: list[Artifact], options: PackageOptions) -> ImageCost:
    """What one image costs a worker on this machine's CPU, with the artifact a CPU worker serves."""
    from classify.classifier import Classifier  # imports torch
    from export.registry import preference
    from hostinfo import cpu_flags
    from serve.calibrate import measure  # imports torch

    served = next(
        (
            a
            for fmt in preference("cpu", cpu_flags())
            for a in artifacts
            if a.format == fmt and a.device in ("any", "cpu")
        ),
        None,
    )
    if served is None:
        raise PackageError(
            f"{export_dir}: no packaged artifact runs on the CPU, so the per-image cost cannot be measured here; "
            "give the serving machine's figures with --image-seconds and --megapixel-seconds"
        )
    classifier = Classifier.from_export(
        export_dir,
        fmt=served.format,
        threads=max(1, usable_cores() // options.workers),
        allow_failed=options.allow_failed,
        batch_size=options.batch_size,
    )
    return measure(classifier, options.batch_size)


def describe_budget(cost: ImageCost, settings: Plan, options: PackageOptions) -> str:
    lowered = [
        f"{what} lowered from {asked} to {got}"
        for what, asked, got in [
            ("batch size", options.batch_size, settings.batch_size),
            ("images per request", options.max_images, settings.max_images),
        ]
        if got != asked
    ]
    return (
        f"per-call budget: {settings.call_s:.1f} s (response timeout {options.response_timeout_s} s / headroom), "
        f"{cost}"
        f"{'; ' + ', '.join(lowered) if lowered else ''}; queue of {settings.job_queue_size} requests"
    )


def model_config(options: PackageOptions, cost: ImageCost, settings: Plan) -> dict[str, Any]:
    """TorchServe's model-config YAML (camelCase keys are TorchServe's own) plus our handler's block."""
    handler = {
        "top_k": options.top_k,
        "max_images": settings.max_images,
        "max_request_pixels": options.max_request_pixels,
        "cost": cost.to_dict(),
        "cost_source": "given" if options.cost else "measured",  # measured: each worker checks it again
    }
    if options.max_pixels is not None:
        handler["max_pixels"] = options.max_pixels
    if options.backend is not None:
        handler |= {"backend": options.backend, "allow_failed": options.allow_failed}
    return {
        "minWorkers": options.workers,
        "maxWorkers": options.workers,
        "batchSize": settings.batch_size,
        "maxBatchDelay": options.max_batch_delay_ms,
        "responseTimeout": options.response_timeout_s,
        "jobQueueSize": settings.job_queue_size,  # past it, the frontend answers 503 at once
        "handler": handler,
    }


def archive(name: str, version: str, extra_files: list[Path], config_file: Path, out_dir: Path) -> None:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    generate_model_archive(
        ModelArchiverConfig(
            model_name=name,
            handler=str(HANDLER_FILE),
            version=version,
            extra_files=",".join(str(f) for f in extra_files),
            config_file=str(config_file),
            export_path=str(out_dir),
            force=True,
        )
    )


def check_class_names(export_dir: Path, names: list[str]) -> None:
    """Answers are JSON objects keyed by class name: two classes of one name would merge into one key."""
    seen, duplicates = set(), []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        shown = ", ".join(repr(n) for n in duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        raise PackageError(
            f"{export_dir / 'manifest.json'}: class names must be unique (the server answers {{name: probability}}, "
            f"so equal names would merge), but {len(duplicates)} repeat: {shown}. Rename the classes in the "
            "dataset (or the checkpoint's class_names) and export again"
        )


def check_model_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PackageError(f"model name {name!r}: use letters, digits, '-', '_' and '.' (it becomes a URL path)")
    return name
