"""The machine a benchmark ran on, and its result written as a markdown table plus JSON.

Every benchmark produces one `Report`: a title, the conditions (machine, threads, library versions,
command line), one or more tables, and verdicts against the issue's targets. `Report.write` puts
`<name>.md` and `<name>.json` under `benchmarks/results/<machine>/` (atomically) and the markdown is
printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fsutil.atomic import atomic_save_figure, atomic_write_text
from hostinfo import cpu_flags, cpuinfo, usable_cores

RESULTS_ROOT = Path(__file__).with_name("results")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_generation(info: dict[str, str] | None = None) -> str | None:
    """AMD's microarchitecture from /proc/cpuinfo's family and model numbers ("zen3", "zen4", "zen5").

    A virtual machine may name its CPU only "AMD EPYC": without this, a Zen 4 and a Zen 5 (both AVX-512,
    VNNI, BF16; Zen 5 runs these benchmarks ~1.5-2x faster) would share one results folder.
    None for other vendors, whose model names say it, and for families not listed here. `info`: the
    /proc/cpuinfo fields (default: this machine's).
    """
    info = cpuinfo() if info is None else info
    if info.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        family, model = int(info["cpu family"]), int(info["model"])
    except (KeyError, ValueError):
        return None
    if family == 0x17:
        return "zen2" if model >= 0x30 else "zen"
    if family == 0x19:  # Zen 4: Genoa 0x10-0x1f, Raphael/Phoenix 0x60-0x7f, Bergamo/Siena 0xa0-0xaf
        return "zen4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "zen3"
    if family == 0x1A:
        return "zen5"
    return None


# The x86 extensions the numbers depend on: vector width for fp32, VNNI for int8, bf16 and AMX. A
# virtual machine may name its CPU only "AMD EPYC" whether it is a Zen 3 (AVX2) or a Zen 4 (AVX-512,
# VNNI, BF16), which run these benchmarks at very different speeds.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES /proc/cpuinfo lists (empty where it does not say, e.g. not Linux or not x86)."""
    flags = cpu_flags() or set()
    return [feature for feature in CPU_FEATURES if feature in flags]


def machine_slug() -> str:
    """A short directory name for this machine's results: CPU model (+ AMD generation), its widest
    vector extension (avx512 / avx2), usable cores (+ GPU when present)."""
    words = re.sub(r"\(\w+\)|processor|cpu|\d+-core", " ", cpu_model(), flags=re.IGNORECASE).split()
    slug = "-".join(words[:4]).lower()
    slug = re.sub(r"[^a-z0-9-]+", "", slug) or "cpu"
    generation = cpu_generation()
    if generation and generation not in slug:
        slug += f"-{generation}"
    features = cpu_features()
    vector = "avx512" if "avx512f" in features else "avx2" if "avx2" in features else None
    if vector:
        slug += f"-{vector}"
    slug += f"-{usable_cores()}c"
    if torch.cuda.is_available():
        gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower().replace("nvidia", "")).strip("-")
        slug += f"-{gpu}"
    return slug


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(threads: int) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("torchvision", "onnxruntime", "onnx"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    info: dict[str, Any] = {
        "machine": machine_slug(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_flags": sorted(cpu_flags() or []),
        "git_commit": git_commit(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"table {self.title!r}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": [dict(zip(self.columns, r)) for r in self.rows]}


@dataclass
class Verdict:
    target: str  # e.g. "ONNX Runtime >= 2x eager (resnet50, batch 8)"
    measured: str
    met: bool | None  # None: could not be measured here (say why in `measured`)

    def markdown(self) -> str:
        mark = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"| {self.target} | {self.measured} | {mark} |"


@dataclass
class Report:
    name: str  # file stem: ceiling, infer, train, serve
    title: str
    threads: int
    method: list[str] = field(default_factory=list)  # how it was measured, one sentence per item
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings: why a target was missed, what was changed
    data: dict[str, Any] = field(default_factory=dict)  # raw measurements for the JSON
    quick: bool = False
    figures: dict[str, Any] = field(default_factory=dict)  # file name (.png) -> matplotlib Figure

    def __post_init__(self) -> None:
        self.env = environment(self.threads)

    def markdown(self) -> str:
        env = self.env
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        load = ", ".join(f"{x:.2f}" for x in env["load_average"]) if env.get("load_average") else "n/a"
        parts = [
            f"## {self.title}" + (" (--quick: tiny smoke-test sizes, not a measurement)" if self.quick else ""),
            "",
            f"Machine `{env['machine']}`: {env['cpu']}"
            + (f" ({', '.join(env['cpu_features'])})" if env.get("cpu_features") else "")
            + f", {env['usable_cores']} usable cores"
            + (f", GPU {env['gpu']}" if env.get("gpu") else "")
            + f"; **{self.threads} thread(s)**; load average at the end {load}.  ",
            f"{versions}.  ",
            f"{env['date_utc']}, commit `{env.get('git_commit')}`, `{env['command']}`.",
        ]
        if self.method:
            parts += ["", *[f"- {line}" for line in self.method]]
        for table in self.tables:
            parts += ["", table.markdown()]
        if self.verdicts:
            parts += ["", "### Targets", "", "| target | measured | verdict |", "|---|---|---|"]
            parts += [v.markdown() for v in self.verdicts]
        if self.notes:
            parts += ["", "### Findings", "", *[f"- {line}" for line in self.notes]]
        parts += [f"\n![{name}]({name})" for name in self.figures]
        return "\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        self.env["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return {
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "environment": self.env,
            "method": self.method,
            "tables": [t.to_dict() for t in self.tables],
            "verdicts": [{"target": v.target, "measured": v.measured, "met": v.met} for v in self.verdicts],
            "notes": self.notes,
            "data": self.data,
            "figures": list(self.figures),
        }

    def write(self, results_root: Path, *, flat: bool = False) -> tuple[Path, Path]:
        """`<results_root>/<machine>/<name>.md` and `.json` (`flat`: directly in `results_root`), and the
        figures beside them; returns the two paths."""
        out = Path(results_root) if flat else Path(results_root) / self.env["machine"]
        out.mkdir(parents=True, exist_ok=True)
        as_dict = self.to_dict()  # refreshes the load average first
        md_path, json_path = out / f"{self.name}.md", out / f"{self.name}.json"
        atomic_write_text(json_path, json.dumps(as_dict, indent=2, default=str) + "\n")
        atomic_write_text(md_path, self.markdown())
        for name, figure in self.figures.items():
            atomic_save_figure(figure, out / name)
        return md_path, json_path


def format_cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)
