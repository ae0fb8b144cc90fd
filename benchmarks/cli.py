"""`python -m benchmarks <name>`: measured speed, as ratios taken in one run, written under benchmarks/results/.

  python -m benchmarks ceiling     fp32 (torch.matmul, ONNX Runtime), bf16 (torch.matmul), int8 (ONNX Runtime) GEMM GFLOP/s
  python -m benchmarks infer       resnet18/resnet50 at batch 1, 8, 32 through every runner, vs eager
  python -m benchmarks train       our training step vs a bare PyTorch loop (fp32, bf16, channels_last, compile)
  python -m benchmarks serve       TorchServe + our handler under locust vs the raw runner and the stock handler
  python -m benchmarks gpu --out DIR   ResNet-50 AMP training, FP16 inference per runtime, parity, memory (one GPU)
  python -m benchmarks loader      training-input images/s per CPU core per decoder, folder vs shards, 1 and 2 workers

Each warms up, repeats, reports medians, states its thread count and writes
benchmarks/results/<machine>/<name>.md and .json, then prints the markdown. `--quick` runs tiny sizes
(a smoke test, written under the work directory instead). The machine is shared and noisy: compare the
ratios, which are measured side by side, more than the absolute numbers.

Exit status: 0 measured and written (targets met or not: see the report; --strict makes a missed
target exit 1); 2 bad command line; 3 the benchmark could not run (the message says why).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from hostinfo import usable_cores

from . import report as report_module
from .artifacts import DEFAULT_WORK_DIR
from .errors import BenchmarkError, BenchmarkUsageError, positive_int
from .report import RESULTS_ROOT

BENCHMARKS = {
    "ceiling": "benchmarks.ceiling",
    "infer": "benchmarks.infer",
    "train": "benchmarks.training",
    "serve": "benchmarks.serving",
    "gpu": "benchmarks.gpu",
    "loader": "benchmarks.loader",
}
EXIT_OK, EXIT_MISSED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            help=module.__doc__.splitlines()[0].split(": ", 1)[-1],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--quick", action="store_true", help="tiny sizes and few repeats: checks that it runs, measures nothing"
        )
        sub.add_argument(
            "--threads",
            type=positive_int,
            default=usable_cores(),
            help="intra-op threads for PyTorch and ONNX Runtime (default: the usable cores, %(default)s)",
        )
        sub.add_argument(
            "--results-dir",
            type=Path,
            help=f"where <machine>/{name}.md and .json go (default: {RESULTS_ROOT.relative_to(Path(__file__).parent.parent)}; "
            "--quick: <work-dir>/results)",
        )
        sub.add_argument(
            "--work-dir",
            type=Path,
            default=DEFAULT_WORK_DIR,
            help="checkpoints, exports, model archives and server logs (default: %(default)s)",
        )
        sub.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
        sub.add_argument(
            "--allow-dirty",
            action="store_true",
            help="write into the committed results folder even from a checkout with uncommitted changes "
            "(the files then record the commit as '<sha>+dirty')",
        )
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def uncommitted_results_source(results_dir: Path, allow_dirty: bool) -> str | None:
    """Why results must not go into the committed results folder from this checkout (None: they may).

    Figures committed under benchmarks/results/ must name the code that made them: a clean commit.
    """
    if allow_dirty or not results_dir.resolve().is_relative_to(RESULTS_ROOT.resolve()):
        return None
    commit = report_module.git_commit()
    if commit is None:
        return (
            f"{RESULTS_ROOT} records results with their git commit, and this is not a git checkout; pass --results-dir"
        )
    if commit.endswith("+dirty"):
        return (
            f"the checkout has uncommitted changes to tracked files, so results written to {RESULTS_ROOT} would not name "
            "the code that made them: commit first, write elsewhere with --results-dir, or pass --allow-dirty"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log = log
    results_dir = args.results_dir or (args.work_dir / "results" if args.quick else RESULTS_ROOT)
    unclean = uncommitted_results_source(results_dir, args.allow_dirty)
    if unclean:
        print(f"error: {unclean}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = args.module.run(args)
    except BenchmarkUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    out = getattr(args, "out", None)
    md_path, json_path = report.write(out, flat=True) if out else report.write(results_dir)
    print(report.markdown())
    log(f"wrote {md_path} and {json_path}")
    missed = [v for v in report.verdicts if v.met is False]
    return EXIT_MISSED if args.strict and missed else EXIT_OK
