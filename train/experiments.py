"""`python -m train.experiments`: run several recipes in turn and write a markdown summary.

    python -m train.experiments --list
    python -m train.experiments --configs cifar_baseline cifar_modern --data-dir data/cifar
    python -m train.experiments --all --dry-run
    python -m train.experiments --configs cifar_baseline cifar_modern --epochs 2 --data digits  # quick ablation

Flags this command does not know are passed to every `python -m train` run (they override the
recipes). Each run is its own process under OUT/exp-<recipe>; the summary (best and final val top-1,
time per run) goes to OUT/experiments.md.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .cli import build_parser as train_parser
from .cli import config_overrides
from .config import ConfigError, list_recipes, resolve_config


@dataclass
class Outcome:
    recipe: str
    command: list[str]
    status: str = "not run"
    best_top1: float | None = None
    final_top1: float | None = None
    epochs: int | None = None
    seconds: float | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.experiments",
        description="Run recipes one after another and summarise them in markdown (an ablation runner). "
        "Unknown flags are passed on to every `python -m train` run.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="list the recipes and exit")
    what.add_argument("--configs", nargs="+", metavar="RECIPE", help="recipes to run, in order")
    what.add_argument("--all", action="store_true", help="run every recipe")
    p.add_argument("--dry-run", action="store_true", help="print the commands and resolved settings, run nothing")
    p.add_argument("--out", default="runs", help="directory for the runs and the summary (default: runs)")
    p.add_argument("--summary", help="markdown file to write (default: OUT/experiments.md)")
    return p


def read_metrics(run_dir: Path) -> tuple[float | None, float | None, int | None]:
    """(best val top-1, final val top-1, epochs) from a run's metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None, None, None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_top1")]
    if not rows:
        return None, None, None
    top1 = [float(r["val_top1"]) for r in rows]
    return max(top1), top1[-1], int(rows[-1]["epoch"])


def markdown_summary(outcomes: list[Outcome], extra: Sequence[str]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    lines = [
        "# Experiments",
        "",
        f"Extra flags: `{shlex.join(extra)}`" if extra else "Extra flags: none",
        "",
        "| recipe | status | epochs | best val top-1 (%) | final val top-1 (%) | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.recipe} | {o.status} | {o.epochs if o.epochs is not None else '-'} | {num(o.best_top1, '.2f')} "
            f"| {num(o.final_top1, '.2f')} | {num(o.seconds, '.0f')} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{shlex.join(o.command)}`" for o in outcomes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    recipes = list_recipes()
    if args.list:
        for name, description in recipes.items():
            print(f"{name:26s} {description}")
        return 0
    names = list(recipes) if args.all else args.configs
    unknown = [n for n in names if n not in recipes]
    if unknown:
        print(f"error: unknown recipes {unknown}; known: {', '.join(recipes)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    outcomes = [
        Outcome(n, [sys.executable, "-m", "train", "--recipe", n, "--out", str(out), "--name", f"exp-{n}", *extra])
        for n in names
    ]
    failed = 0
    if args.dry_run:
        for o in outcomes:
            print(shlex.join(o.command))
            try:  # resolve the config exactly as the run would
                overrides, recipe = config_overrides(train_parser().parse_args(o.command[3:]))
                config = resolve_config(overrides, recipe)
            except ConfigError as e:
                print(f"  cannot run as given: {e}")
                failed += 1
                continue
            print(f"  {config['arch']} on {config['data']}: {config['epochs']} epochs, batch {config['batch_size']}, "
                  f"lr {config['lr']} ({config['scheduler']}), {config['amp']} precision")  # fmt: skip
        return 1 if failed else 0

    summary = Path(args.summary) if args.summary else out / "experiments.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    for o in outcomes:
        print(f"== {o.recipe}: {shlex.join(o.command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(o.command)
        o.seconds = time.perf_counter() - start
        o.status = "ok" if code == 0 else f"failed (exit {code})"
        failed += code != 0
        o.best_top1, o.final_top1, o.epochs = read_metrics(out / f"exp-{o.recipe}")
        summary.write_text(markdown_summary(outcomes, extra))  # after every run: partial results survive
    print(summary.read_text())
    print(f"summary written to {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
