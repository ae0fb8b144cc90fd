"""`python -m export`: a checkpoint -> TorchScript / ONNX / ONNX INT8 / AOTInductor (fp32, bf16, fp16) / TensorRT
FP16 artifacts, each gated by parity.

Examples:
  python -m export                                  # newest runs/**/best.pt -> exports/<arch>/ (torchscript,onnx)
  python -m export --to all --name digits           # + TensorRT FP16 where TensorRT and CUDA exist
  python -m export --to onnx-int8                   # + ONNX INT8 for CPU serving, calibrated on the training split
  python -m export --to aoti,aoti-bf16              # AOTInductor .pt2 packages (bf16: CPUs with AVX512-BF16/AMX)
  python -m export --to aoti,aoti-fp16 --device cuda   # the CUDA packages, fp32 and fp16
  python -m export --to trt --min-batch 1 --opt-batch 16 --max-batch 64
  python -m export --verify exports/digits          # re-check an existing export directory
  python -m export --verify exports/digits --accept-changed onnx   # you replaced model.onnx on purpose

An export is written into a temporary folder beside --out and swapped in whole: a crash or a failure
part-way leaves the previous export as it was. Replacing an export of another checkpoint needs --overwrite.

Exit status: 0 every artifact written and within its parity gate (TensorRT skipped under `--to all` when
it cannot run here, ONNX INT8 when there are no calibration images); 1 an artifact failed to export or
failed parity (it is marked failed in the manifest); 2 bad arguments or input (no checkpoint, unreadable
file, no calibration images for onnx-int8); 3 something asked for does not exist on this machine
(TensorRT without the `tensorrt` package or without CUDA; --device cuda without CUDA; aoti-bf16 on a
CPU without AVX512-BF16 or AMX; aoti-fp16 without CUDA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models import CheckpointError

from .build import ExportDirError, ExportOptions, ExportResult, export_checkpoint, verify_export, with_overrides
from .manifest import FORMATS, ExportError, ManifestError, ResourceUnavailable
from .parity import DEFAULT_PARITY_SAMPLES, FP16_THRESHOLDS, FP32_THRESHOLDS, INT8_THRESHOLDS
from .quantize import DEFAULT_CALIBRATION_SAMPLES, CalibrationUnavailable
from .runners import check_device
from .tensorrt_engine import BatchProfile

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(ExportError):
    """Bad flags or missing input: exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--to",
        default="torchscript,onnx",
        metavar="FORMATS",
        help="torchscript, onnx, onnx-int8, aoti, aoti-bf16, aoti-fp16, trt, all, or a comma list "
        "(default: torchscript,onnx). aoti is compiled for --device; aoti-bf16 needs a CPU with "
        "AVX512-BF16 or AMX, aoti-fp16 CUDA. `all` skips what cannot run here (TensorRT, "
        "aoti-bf16, aoti-fp16), and onnx-int8 without calibration images, with a note",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint to export (default: the newest best.pt under runs/)"
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where to look for best.pt when --checkpoint is not given (default: runs)",
    )
    parser.add_argument("--name", help="model name the server will use (default: the checkpoint's arch)")
    parser.add_argument("--out", type=Path, help="export directory (default: exports/<name>/)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an export of a different checkpoint at --out (an export of the same "
        "checkpoint is updated without it, keeping the formats not rebuilt)",
    )
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="EXPORT_DIR",
        help="re-run the parity checks of an existing export directory and update its manifest; "
        "fails, without loading it or touching the manifest, when any artifact's sha256 "
        "differs from the manifest",
    )
    parser.add_argument(
        "--accept-changed",
        action="append",
        choices=FORMATS,
        default=[],
        metavar="FORMAT",
        help="with --verify: accept this format's changed file (you replaced it on purpose); its "
        "new sha256 is recorded with the time and the hash it replaced, and its parity is "
        "checked again. Repeat for several formats",
    )

    batch = parser.add_argument_group("batch sizes (the TensorRT optimization profile; recorded in the manifest)")
    batch.add_argument("--min-batch", type=int, default=BatchProfile.min, help="default: %(default)s")
    batch.add_argument("--opt-batch", type=int, default=BatchProfile.opt, help="default: %(default)s")
    batch.add_argument("--max-batch", type=int, default=BatchProfile.max, help="default: %(default)s")

    parity = parser.add_argument_group("parity (each artifact vs eager PyTorch)")
    parity.add_argument(
        "--parity-data",
        type=Path,
        metavar="DIR",
        help="ImageFolder tree (DIR/<class>/<image>) of real images to check on (default: the "
        "checkpoint's validation data; random pixels, with a warning, when neither exists)",
    )
    parity.add_argument(
        "--random-parity",
        action="store_true",
        help="accept parity checked on random pixels when no labelled images can be had (the manifest records "
        "the accuracy gate as not run; reduced precision is never made the default); without it such an "
        "export still writes its artifacts but exits 1",
    )
    parity.add_argument("--parity-samples", type=int, default=DEFAULT_PARITY_SAMPLES, help="default: %(default)s")
    parity.add_argument(
        "--parity-batch",
        type=int,
        default=16,
        help="the larger batch size checked besides batch 1 (default: %(default)s)",
    )
    parity.add_argument("--fp32-rtol", type=float, help=f"default: {FP32_THRESHOLDS.rtol:g}")
    parity.add_argument("--fp32-atol", type=float, help=f"default: {FP32_THRESHOLDS.atol:g}")
    parity.add_argument(
        "--fp32-min-agreement",
        type=float,
        help=f"top-1 agreement, 0..1 (default: {FP32_THRESHOLDS.min_top1_agreement:g})",
    )
    parity.add_argument(
        "--fp16-min-agreement",
        type=float,
        help=f"top-1 agreement, 0..1 (default: {FP16_THRESHOLDS.min_top1_agreement:g})",
    )
    parity.add_argument("--fp16-min-cosine", type=float, help=f"default: {FP16_THRESHOLDS.min_cosine:g}")
    parity.add_argument(
        "--int8-min-agreement",
        type=float,
        help=f"top-1 agreement, 0..1 (default: {INT8_THRESHOLDS.min_top1_agreement:g})",
    )
    parity.add_argument("--int8-min-cosine", type=float, help=f"default: {INT8_THRESHOLDS.min_cosine:g}")
    parity.add_argument(
        "--max-top1-drop",
        type=float,
        metavar="POINTS",
        help="reduced precision (int8, bf16, fp16) is picked by default only when its labelled top-1 "
        "is at most this many points below fp32's, on at least "
        f"{INT8_THRESHOLDS.min_labelled} labelled images; more is a parity failure (default: "
        f"{INT8_THRESHOLDS.max_top1_drop * 100:g})",
    )

    int8 = parser.add_argument_group("int8 calibration (onnx-int8)")
    int8.add_argument(
        "--calibration-data",
        type=Path,
        metavar="DIR",
        help="ImageFolder tree of images like those the model will serve, to set activation ranges "
        "(default: the checkpoint's training split; keep it apart from --parity-data)",
    )
    int8.add_argument(
        "--calibration-samples",
        type=int,
        default=DEFAULT_CALIBRATION_SAMPLES,
        help="images used, spread over the data set (default: %(default)s)",
    )

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where TorchScript and ONNX parity runs (TensorRT always on CUDA; default: cpu)",
    )
    runtime.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime")
    runtime.add_argument("--opset", type=int, default=ExportOptions.opset, help="ONNX opset (default: %(default)s)")
    runtime.add_argument(
        "--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit in GiB (default: %(default)s)"
    )
    return parser


def log(message: str) -> None:
    print(message, flush=True)


def newest_best_checkpoint(runs_dir: Path) -> Path:
    candidates = sorted(runs_dir.glob("**/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        where = runs_dir.resolve()
        raise UsageError(
            f"no checkpoint given and no best.pt found under {where}"
            f"{'' if runs_dir.is_dir() else ' (the directory does not exist)'}. Train one "
            "(`python -m train --arch resnet20 --data digits`) or pass --checkpoint PATH"
        )
    return candidates[-1]


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    try:
        batch = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    except ValueError as e:
        raise UsageError(f"--min-batch/--opt-batch/--max-batch: {e}") from e
    if not batch.min <= args.parity_batch <= batch.max:
        raise UsageError(
            f"--parity-batch {args.parity_batch} must lie within --min-batch..--max-batch ({batch.min}..{batch.max})"
        )
    if args.parity_samples < args.parity_batch:
        raise UsageError(
            f"--parity-samples ({args.parity_samples}) must be at least --parity-batch ({args.parity_batch})"
        )
    if args.parity_data is not None and not args.parity_data.is_dir():
        raise UsageError(f"--parity-data {args.parity_data}: no such directory")
    if args.calibration_data is not None and not args.calibration_data.is_dir():
        raise UsageError(f"--calibration-data {args.calibration_data}: no such directory")
    if args.calibration_samples < 1:
        raise UsageError(f"--calibration-samples must be at least 1, got {args.calibration_samples}")
    check_device(args.device)
    max_drop = None if args.max_top1_drop is None else args.max_top1_drop / 100
    return ExportOptions(
        formats=[f.strip() for f in args.to.split(",") if f.strip()],
        batch=batch,
        parity_batch=args.parity_batch,
        parity_samples=args.parity_samples,
        parity_data=args.parity_data,
        fp32_thresholds=with_overrides(
            FP32_THRESHOLDS, rtol=args.fp32_rtol, atol=args.fp32_atol, min_top1_agreement=args.fp32_min_agreement
        ),
        fp16_thresholds=with_overrides(
            FP16_THRESHOLDS,
            min_top1_agreement=args.fp16_min_agreement,
            min_cosine=args.fp16_min_cosine,
            max_top1_drop=max_drop,
        ),
        int8_thresholds=with_overrides(
            INT8_THRESHOLDS,
            min_top1_agreement=args.int8_min_agreement,
            min_cosine=args.int8_min_cosine,
            max_top1_drop=max_drop,
        ),
        calibration_data=args.calibration_data,
        calibration_samples=args.calibration_samples,
        opset=args.opset,
        workspace_bytes=int(args.workspace_gb * (1 << 30)),
        device=args.device,
        threads=args.threads,
    )


def summary_table(result: ExportResult) -> str:
    header = ("format", "file", "precision", "size", "top-1 agree", "max |diff|", "min cosine", "parity")
    rows = []
    for a in result.manifest.artifacts:
        m = a.parity["metrics"]
        rows.append(
            (
                a.format,
                a.file,
                a.precision,
                f"{a.details.get('size_bytes', 0) / 1e6:.1f} MB",
                f"{m['top1_agreement']:.2%}",
                f"{m['max_abs_diff']:.2e}",
                f"{m['min_cosine']:.6f}",
                "passed" if a.passed else "FAILED",
            )
        )
    for fmt in result.skipped:
        rows.append((fmt, "-", "-", "-", "-", "-", "-", "skipped"))
    for fmt in result.errors:
        rows.append((fmt, "-", "-", "-", "-", "-", "-", "export FAILED"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for fmt, reason in result.skipped.items():
        lines.append(f"{fmt} skipped: {reason}")
    for fmt, error in result.errors.items():
        lines.append(f"{fmt} export FAILED: {error}")
    for a in result.failed:
        lines.append(f"{a.format} FAILED parity ({a.parity['data']}): " + "; ".join(a.parity["failures"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.accept_changed and args.verify is None:
        raise UsageError("--accept-changed goes with --verify EXPORT_DIR")
    options = options_from_args(args)
    if args.verify is not None:
        result = verify_export(args.verify, args.checkpoint, options, log=log, accept_changed=args.accept_changed)
    else:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = newest_best_checkpoint(args.runs_dir)
            log(f"no --checkpoint given: using the newest best.pt under {args.runs_dir}/: {checkpoint}")
        name = args.name
        out = args.out
        if out is None:
            from models import load_checkpoint  # the arch names the default directory

            name = name or load_checkpoint(checkpoint).arch
            out = Path("exports") / name
        result = export_checkpoint(checkpoint, out, name, options, log=log, overwrite=args.overwrite)
    log("")
    log(summary_table(result))
    if result.random_parity and not args.random_parity:
        print(
            "error: no labelled images could be had, so parity ran on RANDOM pixels and the accuracy gate did not "
            "run (the manifest says so). Pass --parity-data DIR (an ImageFolder of real images), or --random-parity "
            "to accept this",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ResourceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, ManifestError, CalibrationUnavailable, ExportDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as e:  # an exporter, the ONNX checker or the TensorRT builder failed
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
