"""The models the benchmarks run: random-init checkpoints, exported with the project's own `python -m export`.

Speed does not depend on the weights' values, so nothing is downloaded or trained: a checkpoint of a
freshly initialised network (seeded) goes through `models.Checkpoint.save`, then through the same
`python -m export` a user runs. Its parity check runs on the checkpoint's "validation data", here
`imagedata.synthetic`'s set of seeded random pixels (real photos would prove nothing more about
random weights); the reports say so.

Everything lands under the work directory (default `runs/benchmarks/`, git-ignored) and is reused by
later runs while the checkpoint is unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from export.manifest import ExportError, read_manifest
from models import Checkpoint, create_model, get_model_spec, imagenet_class_names
from models.checkpoint import CheckpointError, load_checkpoint

from .errors import BenchmarkError

DEFAULT_WORK_DIR = Path("runs") / "benchmarks"
# Parity on random inputs proves only that the artifact computes the same function; keep it short.
PARITY_SAMPLES, PARITY_BATCH = 16, 8


def class_names_for(num_classes: int) -> list[str]:
    return imagenet_class_names() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]


def random_checkpoint(arch: str, work_dir: Path, seed: int = 0) -> Path:
    """`<work_dir>/checkpoints/<arch>-random-init.pt`: the architecture's default head, seeded weights."""
    path = Path(work_dir) / "checkpoints" / f"{arch}-random-init.pt"
    if path.is_file():
        try:
            load_checkpoint(path)
            return path
        except CheckpointError:
            pass  # a broken leftover: write it again
    spec = get_model_spec(arch)
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=spec.default_num_classes)
    Checkpoint(
        arch=arch,
        class_names=class_names_for(spec.default_num_classes),
        preprocess=spec.preprocess,
        model=model.state_dict(),
        # imagedata's synthetic data set (seeded random pixels): what export's parity checks on.
        config={
            "arch": arch,
            "data": "synthetic",
            "synthetic_size": 4 * PARITY_SAMPLES,
            "data_dir": None,
            "val_split": 0.0,
            "seed": seed,
        },
    ).save(path)
    return path


EXPORTED_FORMATS = ("torchscript", "onnx", "onnx-int8")


def export_model(
    arch: str, work_dir: Path, threads: int | None = None, formats: tuple[str, ...] = EXPORTED_FORMATS, log=print
) -> Path:
    """`<work_dir>/exports/<arch>/` with `formats` made by `python -m export`; reused when its manifest is
    valid, names the current checkpoint and has every format asked for."""
    checkpoint = random_checkpoint(arch, work_dir)
    export_dir = Path(work_dir) / "exports" / arch
    formats = tuple(dict.fromkeys(EXPORTED_FORMATS + tuple(formats)))  # an export made here serves every caller
    try:
        manifest = read_manifest(export_dir)
        if Path(manifest.source_checkpoint["path"]) == checkpoint.resolve() and {
            a.format for a in manifest.artifacts
        } >= set(formats):
            return export_dir
    except (ExportError, KeyError):
        pass
    command = [
        sys.executable,
        "-m",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(export_dir),
        "--name",
        arch,
        "--to",
        ",".join(formats),
        "--overwrite",  # our own stale export, if any
        "--parity-samples",
        str(PARITY_SAMPLES),
        "--parity-batch",
        str(PARITY_BATCH),
        # A random network's logits are near-ties, so reduced precision (int8, bf16) flips its top-1 on
        # noise while the logit vectors still agree: keep only the cosine gates here.
        "--int8-min-agreement",
        "0",
        "--fp16-min-agreement",
        "0",
    ]
    if threads:
        command += ["--threads", str(threads)]
    log(f"exporting {arch} (random init) with: {' '.join(command[1:])}")
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-20:])
        raise BenchmarkError(f"`python -m export` failed for {arch} (exit {process.returncode}):\n{tail}")
    return export_dir


def digits_export(work_dir: Path, formats: tuple[str, ...] = EXPORTED_FORMATS, epochs: int = 4, log=print) -> Path:
    """`<work_dir>/exports/digits/`: resnet20 trained on scikit-learn's digits with `python -m train` and
    exported to `formats` with `python -m export` (what the demo does), reused while its manifest reads and
    has them. Its labelled accuracy per artifact is what `infer` shows beside each runner's speed, and the
    export's own parity check on the labelled validation split gives each artifact's agreement with eager."""
    export_dir = Path(work_dir) / "exports" / "digits"
    formats = tuple(dict.fromkeys(EXPORTED_FORMATS + tuple(formats)))
    try:
        if {a.format for a in read_manifest(export_dir).artifacts} >= set(formats):
            return export_dir
    except ExportError:
        pass
    runs = Path(work_dir) / "runs"
    steps = [
        [
            sys.executable,
            "-m",
            "train",
            "--arch",
            "resnet20",
            "--data",
            "digits",
            "--epochs",
            str(epochs),
            "--out",
            str(runs),
            "--name",
            "resnet20-digits",
            "--overwrite",
        ],
        [
            sys.executable,
            "-m",
            "export",
            "--checkpoint",
            str(runs / "resnet20-digits" / "best.pt"),
            "--out",
            str(export_dir),
            "--name",
            "digits",
            "--to",
            ",".join(formats),
            "--overwrite",
        ],
    ]
    for command in steps:
        log(f"digits model: {' '.join(command[1:])}")
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-20:])
            raise BenchmarkError(f"`{' '.join(command[1:4])}` failed (exit {process.returncode}):\n{tail}")
    return export_dir


def digits_accuracy(export_dir: Path, fmt: str, out: Path) -> float | None:
    """Top-1 % of one artifact on the digits validation split, from `python -m client evaluate --local`."""
    command = [
        sys.executable,
        "-m",
        "client",
        "evaluate",
        "--local",
        str(export_dir),
        "--format",
        fmt,
        "--data",
        "digits",
        "--out",
        str(out),
    ]
    process = subprocess.run(command, capture_output=True, text=True)
    result = Path(out) / "evaluation.json"
    if process.returncode != 0 or not result.is_file():
        return None
    import json

    metrics = json.loads(result.read_text())
    return metrics.get("top1", metrics.get("metrics", {}).get("top1"))
