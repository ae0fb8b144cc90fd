"""`python -m train.experiments`: run a set of trainings in turn into one summary table.

    python -m train.experiments --list                                    # recipes and suites
    python -m train.experiments --suite cumulative --data-dir data/cifar  # the write-up's ablation chain
    python -m train.experiments --suite paper --dry-run                   # what would run, resolved
    python -m train.experiments --suite cumulative --epochs 1 --data digits --batch-size 32   # a smoke run
    python -m train.experiments --configs cifar_baseline my_recipe.yaml --data-dir data/cifar
    python -m train.experiments --all --dry-run

A suite (train/suites/NAME.yaml, or any YAML path) is data: named runs, each a recipe plus flags,
with the number its write-up reported. Flags this command does not know are passed to every run and
override the suite's. Each run is its own `python -m train` process under OUT/exp-<suite>-<NN>-<run>;
the summary (best and final val top-1, final train top-1, time, and the write-up's figures beside
ours) is rewritten after every run, so partial results survive.
"""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from fsutil.atomic import atomic_write_text

from .cli import build_parser as train_parser
from .cli import config_overrides
from .config import ConfigError, TrainConfig, list_recipes, load_recipe, resolve_config


@dataclass
class PlannedRun:
    name: str
    recipe: str
    flags: list[str]
    reported: dict[str, float] = field(default_factory=dict)  # best / final val top-1 of the source
    writeup: float | None = None  # what the write-up itself measured, when it reran the source


@dataclass
class Outcome:
    run: PlannedRun
    run_name: str
    command: list[str]
    status: str = "not run"
    best_top1: float | None = None
    final_top1: float | None = None
    train_top1: float | None = None
    epochs: int | None = None
    seconds: float | None = None


def suites_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("suites")))


def list_suites() -> dict[str, str]:
    return {
        p.stem: str(yaml.safe_load(p.read_text()).get("description", "")) for p in sorted(suites_dir().glob("*.yaml"))
    }


def load_suite(name_or_path: str) -> tuple[str, str, list[PlannedRun]]:
    """(suite name, its source, its runs) from train/suites/NAME.yaml or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = suites_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"suite {name_or_path!r} not found (looked at {path}); known suites: {', '.join(list_suites())}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
        raise ConfigError(f"{path}: a suite is a mapping with a non-empty `runs:` list")
    runs = []
    for i, entry in enumerate(data["runs"]):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("recipe"):
            raise ConfigError(f"{path}: runs[{i}] needs a name and a recipe")
        flags = [str(f) for f in entry.get("flags") or []]
        reported = {k: float(v) for k, v in (entry.get("reported") or {}).items() if k in ("best", "final")}
        writeup = float(entry["writeup"]) if entry.get("writeup") is not None else None
        runs.append(PlannedRun(str(entry["name"]), str(entry["recipe"]), flags, reported, writeup))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be distinct, got {names}")
    return path.stem, str(data.get("source", "")), runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.experiments",
        description="Run a suite of trainings (or several recipes) one after another and summarise them in "
        "markdown, with the write-up's figures beside ours. Unknown flags are passed on to every `python -m "
        "train` run and override the suite's own.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="list the recipes and suites and exit")
    what.add_argument("--suite", help="a suite name (train/suites) or a YAML file")
    what.add_argument("--configs", nargs="+", metavar="RECIPE", help="recipes (names or YAML paths) to run, in order")
    what.add_argument("--all", action="store_true", help="run every recipe")
    p.add_argument("--dry-run", action="store_true", help="print each run's command and resolved settings, run nothing")
    p.add_argument("--out", default="runs", help="directory for the runs and the summary (default: runs)")
    p.add_argument("--summary", help="markdown file to write (default: OUT/experiments-<suite>.md)")
    return p


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def read_metrics(run_dir: Path) -> tuple[float | None, float | None, float | None, int | None]:
    """(best val top-1, final val top-1, final train top-1, epochs) from a run's metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None, None, None, None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_top1")]
    if not rows:
        return None, None, None, None
    top1 = [float(r["val_top1"]) for r in rows]
    train = rows[-1].get("train_top1")
    return max(top1), top1[-1], float(train) if train else None, int(rows[-1]["epoch"])


def figure(value: float | None) -> str:
    """A published figure as its source gives it: 91.25 stays 91.25, 93.0 stays 93.0 (not 93)."""
    if value is None:
        return "-"
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def markdown_summary(title: str, source: str, outcomes: list[Outcome], extra: Sequence[str]) -> str:
    def num(v: float | None, fmt: str = ".2f") -> str:
        return format(v, fmt) if v is not None else "-"

    def reported(r: PlannedRun) -> str:
        return " / ".join(figure(r.reported.get(k)) for k in ("best", "final")) if r.reported else "-"

    lines = [
        f"# Experiments: {title}",
        "",
        f"Reported figures: {source}" if source else "",
        f"Extra flags for every run: `{shlex.join(extra)}`" if extra else "Extra flags: none",
        "",
        "| run | recipe + flags | status | epochs | best val top-1 | final val top-1 | final train top-1 "
        "| reported best / final | write-up's own run | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        setup = " ".join([o.run.recipe, *o.run.flags])
        lines.append(
            f"| {o.run.name} | `{setup}` | {o.status} | {o.epochs if o.epochs is not None else '-'} "
            f"| {num(o.best_top1)} | {num(o.final_top1)} | {num(o.train_top1)} | {reported(o.run)} "
            f"| {figure(o.run.writeup)} | {num(o.seconds, '.0f')} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{shlex.join(o.command)}`" for o in outcomes]
    return "\n".join(lines) + "\n"


def plan(args: argparse.Namespace) -> tuple[str, str, list[PlannedRun]]:
    if args.suite:
        return load_suite(args.suite)
    names = list(list_recipes()) if args.all else args.configs
    for name in names:
        load_recipe(name)  # fails early, naming the known recipes
    title = "all recipes" if args.all else "recipes"
    return title, "", [PlannedRun(Path(n).stem if Path(n).suffix else n, n, []) for n in names]


def resolved(command: list[str]) -> TrainConfig:
    """The config `python -m train` would resolve for this command line."""
    overrides, recipe = config_overrides(train_parser().parse_args(command[3:]))
    return resolve_config(overrides, recipe)


def settings_line(config: TrainConfig) -> str:
    """What a dry run shows of a resolved config: the network and its ablation options, the schedule."""
    network = [config.arch]
    if config.plain:
        network.append("--plain")
    if config.shortcut is not None:
        network.append(f"--shortcut {config.shortcut}")
    if config.norm is not None:
        network.append(f"--norm {config.norm}")
    if config.mean is not None:
        network.append(f"--mean {' '.join(map(str, config.mean))} --std {' '.join(map(str, config.std))}")
    precision = "fp32" if config.amp == "none" else config.amp
    return (
        f"{' '.join(network)} on {config.data}: {config.epochs} epochs, batch {config.batch_size}, "
        f"lr {config.lr} ({config.scheduler}), {precision}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if args.list:
        print("recipes:")
        for name, description in list_recipes().items():
            print(f"  {name:26s} {description}")
        print("suites:")
        for name, description in list_suites().items():
            print(f"  {name:26s} {description}")
        return 0
    try:
        title, source, runs = plan(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    prefix = f"exp-{slug(title)}"
    outcomes = []
    for i, run in enumerate(runs, start=1):
        run_name = f"{prefix}-{i:02d}-{slug(run.name)}"
        command = [
            sys.executable,
            "-m",
            "train",
            "--recipe",
            run.recipe,
            *run.flags,
            "--out",
            str(out),
            "--name",
            run_name,
            *extra,
        ]
        outcomes.append(Outcome(run, run_name, command))

    if args.dry_run:
        failed = 0
        for o in outcomes:
            print(f"{o.run.name}: {shlex.join(o.command)}")
            try:
                config = resolved(o.command)
            except ConfigError as e:
                print(f"  cannot run as given: {e}")
                failed += 1
                continue
            print(f"  {settings_line(config)}")
        return 1 if failed else 0

    summary = Path(args.summary) if args.summary else out / f"experiments-{slug(title)}.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    for o in outcomes:
        print(f"== {o.run.name}: {shlex.join(o.command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(o.command)
        o.seconds = time.perf_counter() - start
        o.status = "ok" if code == 0 else f"failed (exit {code})"
        failed += code != 0
        o.best_top1, o.final_top1, o.train_top1, o.epochs = read_metrics(out / o.run_name)
        atomic_write_text(summary, markdown_summary(title, source, outcomes, extra))
    print(summary.read_text())
    print(f"summary written to {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
