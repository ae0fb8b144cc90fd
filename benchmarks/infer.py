"""`python -m benchmarks infer`: every runner on the same batches, as ratios to eager PyTorch.

For each architecture the random-init checkpoint is exported with `python -m export`; the runners
are the project's own (`export.runners`): eager PyTorch from the checkpoint (NCHW, and the same
module converted to channels_last), the TorchScript, ONNX Runtime, AOTInductor (fp32, and bf16 on CPUs
with AVX512-BF16 or AMX) and ONNX Runtime INT8 artifacts, and on a CUDA
machine the same on the GPU plus TensorRT where the export has an engine (`--devices` picks the CPU or
the GPU runners alone; on the GPU alone, ratios are to CUDA eager). All runners of one (architecture,
batch) are timed in the same interleaved rounds, each timed call right after untimed calls of its own
for PRIME_S (`timing.interleaved(prime_s=)`: as in a stream of that runner's calls). Every runner
takes and returns CPU float32 tensors, as the server's does, so a CUDA row includes the
host-to-device copy of its batch (from page-locked memory) and the copy back.

FLOPs: 2 x the multiply-accumulates of the convolutions and the classifier, counted by
`torch.utils.flop_counter` on one image (ResNet-50 at 224x224: 8.2 GFLOP = 4.1 GMAC), the same
convention as the GEMM ceiling (2*M*N*K), re-measured in this run at the same thread count for fp32
and int8: the fastest kernel and size of a probe run before the timings joins every (architecture,
batch) group as one more interleaved candidate, and each row is compared with its own group's ceiling
of its own precision. Each runner's labelled top-1 on the digits model (resnet20 trained here) and
its top-1 agreement with eager (the export's own parity check on the labelled validation split) are
reported beside the speeds.

Two opt-in ablations (`--ablations`) explain the CPU result: ONNX Runtime's graph optimization
levels and thread counts against eager, and what the session's idle threads should do: spin (ONNX
Runtime's default: the pool burns the cores after each run and slows whatever is timed next), block
(a lone run wakes the pool at every operator) or spin within a run only (the runners'); this one needs
--threads 2 or more, since a 1-thread session has no pool.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.aoti import bf16_missing_reason
from export.manifest import read_manifest
from export.runners import Runner, open_runner, runner_from_checkpoint

from .ablations import IDLE_THREADS, LEVELS, RUNNERS_IDLE_THREADS, OnnxSession
from .artifacts import digits_accuracy, digits_export, export_model, random_checkpoint
from .ceiling import CeilingProbe
from .errors import BenchmarkError, check_archs, positive_int
from .plots import throughput_vs_batch
from .report import Report, Table, Verdict
from .timing import PRIME_S, Budget, interleaved


@dataclass
class Candidate:
    label: str
    runner: Runner
    device: str
    precision: str | None = None  # None: the artifact's, fp32 for eager

    def effective_precision(self) -> str:
        return self.precision or (self.runner.artifact.precision if self.runner.artifact else "fp32")


# CPU runner label -> the export format it runs (None: eager PyTorch from the checkpoint itself)
CPU_RUNNERS = {
    "eager": None,
    "eager channels_last": None,
    "torchscript": "torchscript",
    "onnxruntime": "onnx",
    "aoti": "aoti",
    "aoti bf16": "aoti-bf16",
    "onnxruntime int8": "onnx-int8",
}
# AOTInductor compiles each package (tens of seconds even for resnet20): --quick times them only when named.
COMPILED_RUNNERS = ("aoti", "aoti bf16")
# Issue 23's targets for the AOTInductor fp32 package: at least eager channels_last's speed at every batch,
# and at least this fraction of ONNX Runtime fp32's.
AOTI_VS_ONNXRUNTIME = 0.8


def select_runners(named: list[str] | None, quick: bool) -> tuple[list[str], list[str]]:
    """The CPU runners to time (eager first: the baseline) and a note for each left out."""
    notes = []
    if named:
        runners = ["eager", *named]
    else:
        runners = [r for r in CPU_RUNNERS if not (quick and r in COMPILED_RUNNERS)]
        if quick:
            notes.append(
                "aoti, aoti bf16: not timed in --quick (each compiles for tens of seconds); name them with --runners"
            )
    why_no_bf16 = bf16_missing_reason()
    if "aoti bf16" in runners and why_no_bf16:
        runners.remove("aoti bf16")
        notes.append(f"aoti bf16: not measured: {why_no_bf16}")
    return list(dict.fromkeys(runners)), notes


def channels_last_runner(checkpoint: Path, threads: int) -> Runner:
    """Eager PyTorch with the network's weights (and so its activations) in channels_last, the layout
    oneDNN's convolutions prefer; the NCHW input batch is converted by the first convolution."""
    runner = runner_from_checkpoint(checkpoint, threads=threads)
    runner.model = runner.model.to(memory_format=torch.channels_last)
    return runner


def aoti_verdicts(rows: list[dict]) -> list[Verdict]:
    """The AOTInductor fp32 targets, per model, over every batch where both sides were timed."""
    verdicts = []
    speed = {(r["model"], r["batch"], r["runner"]): r["items_per_s"] for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for other, least, target in (
            ("eager channels_last", 1.0, "AOTInductor fp32 >= eager channels_last"),
            ("onnxruntime", AOTI_VS_ONNXRUNTIME, f"AOTInductor fp32 >= {AOTI_VS_ONNXRUNTIME:g} x ONNX Runtime fp32"),
        ):
            ratios = {
                b: speed[(m, b, "aoti")] / speed[(m, b, other)]
                for (m, b, runner) in speed
                if m == model and runner == "aoti" and (m, b, other) in speed
            }
            if ratios:
                measured = ", ".join(f"batch {b}: {ratio:.2f}x" for b, ratio in sorted(ratios.items()))
                verdicts.append(Verdict(f"{target} ({model}, every batch)", measured, min(ratios.values()) >= least))
    return verdicts


def compile_table(exports: dict[str, Path], formats: tuple[str, ...]) -> Table:
    """What each artifact cost to make: export seconds (compile, for AOTInductor) and file size."""
    table = Table(
        "Export time and file size (`python -m export`, this run's exports)", ["model", "artifact", "export s", "MB"]
    )
    for arch, export_dir in exports.items():
        for fmt in formats:
            artifact = read_manifest(export_dir).find(fmt)
            if artifact is not None:
                table.add(
                    arch, fmt, artifact.details.get("export_seconds"), artifact.details.get("size_bytes", 0) / 1e6
                )
    return table


def forward_flops(model: torch.nn.Module, input_size: int) -> int:
    """FLOPs (2 x MACs) of one forward pass on one image."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    return counter.get_total_flops()


def build_candidates(
    checkpoint: Path,
    export_dir: Path,
    threads: int,
    devices: list[str],
    cpu_runners: list[str],
    log: Callable[[str], None],
) -> tuple[list[Candidate], list[str]]:
    """Every runner this machine can run for one model on `devices`, and a note for each it cannot.
    The first candidate is the baseline of the ratios: eager on the CPU, else eager on CUDA."""
    candidates = []
    if "cpu" in devices:
        for label in cpu_runners:
            if label == "eager":
                runner = runner_from_checkpoint(checkpoint, threads=threads)
            elif label == "eager channels_last":
                runner = channels_last_runner(checkpoint, threads)
            else:
                runner = open_runner(export_dir, CPU_RUNNERS[label], threads=threads)
            candidates.append(Candidate(label, runner, "cpu"))
    skipped = []
    if "cuda" not in devices:
        if not torch.cuda.is_available():
            skipped.append(
                "CUDA runners (eager fp32 and fp16, TorchScript, ONNX Runtime CUDA, TensorRT): no CUDA device on this machine"
            )
        return candidates, skipped
    candidates += [
        Candidate("cuda eager", runner_from_checkpoint(checkpoint, device="cuda"), "cuda"),
        Candidate("cuda torchscript", open_runner(export_dir, "torchscript", device="cuda"), "cuda"),
    ]
    for label, fmt in (("cuda onnxruntime", "onnx"), ("tensorrt fp16", "trt")):
        try:
            if fmt == "trt" and read_manifest(export_dir).find("trt") is None:
                raise RuntimeError(
                    "the export has no TensorRT engine (`python -m export --to all` on this machine adds one)"
                )
            candidates.append(Candidate(label, open_runner(export_dir, fmt, device="cuda"), "cuda"))
        except Exception as e:  # a missing optional runtime: report it, run the rest
            skipped.append(f"{label}: {e}")
            log(f"skipping {label}: {e}")
    return candidates, skipped


def onnx_file(export_dir: Path) -> Path:
    return Path(export_dir) / read_manifest(export_dir).find("onnx").file


def onnx_ablation(
    arch: str, checkpoint: Path, export_dir: Path, batch: int, threads: int, budget: Budget
) -> tuple[Table, list[dict]]:
    """Where ONNX Runtime's lead over eager comes from: its graph optimization levels and the thread count.

    ORT_DISABLE_ALL runs the exported graph as is; BASIC adds constant folding and simple fusions;
    EXTENDED adds Conv+Add+Relu fusions; ALL adds the NCHWc layout (weights reordered once into the
    blocked format MLAS's convolution kernels use, instead of per call)."""
    thread_counts = sorted({1, threads})
    candidates: dict[str, tuple] = {}
    for t in thread_counts:
        candidates[f"eager, {t} thread(s)"] = (runner_from_checkpoint(checkpoint, threads=t), t)
    for level in LEVELS:
        candidates[f"onnxruntime {level}, {threads} thread(s)"] = (
            OnnxSession(onnx_file(export_dir), threads, level),
            threads,
        )
    for t in thread_counts:
        if t != threads:
            candidates[f"onnxruntime ORT_ENABLE_ALL, {t} thread(s)"] = (OnnxSession(onnx_file(export_dir), t), t)
    size = candidates[f"eager, {threads} thread(s)"][0].preprocess.input_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def call(runner, t: int) -> None:
        torch.set_num_threads(t)  # PyTorch's pool is per process: set it for each eager call
        runner.predict(x)

    samples = interleaved(
        {name: (lambda r=r, t=t: call(r, t)) for name, (r, t) in candidates.items()},
        budget,
        items=batch,
        prime_s=PRIME_S,
    )
    torch.set_num_threads(threads)
    table = Table(
        f"ONNX Runtime vs eager by graph optimization level and threads ({arch}, batch {batch})",
        ["runner", "images/s", "x eager at the same threads"],
    )
    rows = []
    for name, (_, t) in candidates.items():
        ratio = samples[name].items_per_s / samples[f"eager, {t} thread(s)"].items_per_s
        table.add(name, samples[name].items_per_s, f"{ratio:.2f}x")
        rows.append({"runner": name, "threads": t, **samples[name].to_dict(), "vs_eager_same_threads": ratio})
    return table, rows


def cpu_ms_after_a_run(runner, x: torch.Tensor, window_s: float = 0.3, repeats: int = 3) -> float:
    """Median CPU ms this process burns in the `window_s` after one of `runner`'s calls (its idle threads)."""
    burnt = []
    for _ in range(repeats):
        runner.predict(x)
        start = time.process_time()
        time.sleep(window_s)
        burnt.append(time.process_time() - start)
    return 1e3 * float(np.median(burnt))


def idle_threads_ablation(
    arch: str, checkpoint: Path, export_dir: Path, threads: int, budget: Budget, consecutive: int
) -> tuple[Table, list[dict]]:
    """What an ONNX Runtime session's idle threads should do (`export.runners.IDLE_THREADS`), at batch 1
    where it matters most. For each policy: the session's own call after a 0.1 s idle pause, `consecutive`
    such calls in a row (lone requests: how fast the host wakes an idle virtual CPU depends on how it
    has been woken lately); eager PyTorch's call right after the session's (the next runner of a
    benchmark round, a server worker's next decode); the CPU the session burns in the 0.3 s after a call."""
    eager = runner_from_checkpoint(checkpoint, threads=threads)
    sessions = {idle: OnnxSession(onnx_file(export_dir), threads, idle=idle) for idle in IDLE_THREADS}
    size = eager.preprocess.input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def pause() -> None:
        time.sleep(0.1)

    runners = {"eager": eager, **sessions}
    lone = interleaved(
        {name: (lambda r=r: r.predict(x)) for name, r in runners.items()},
        budget,
        before={name: pause for name in runners},
        consecutive=consecutive,
    )
    after = interleaved(
        {idle: (lambda: eager.predict(x)) for idle in sessions},
        budget,
        before={idle: (lambda r=r: r.predict(x)) for idle, r in sessions.items()},
    )
    eager_ms = lone["eager"].percentile_ms(50)
    table = Table(
        f"ONNX Runtime's idle threads ({arch}, batch 1, {threads} thread(s); eager after a 0.1 s pause: {eager_ms:.1f} ms)",
        [
            "idle threads",
            "own call after a 0.1 s pause, p50 ms",
            "eager right after its call, p50 ms",
            "eager right after / after a pause",
            "CPU ms burnt in the 0.3 s after a call",
        ],
    )
    rows = []
    for idle, runner in sessions.items():
        row = {
            "idle_threads": idle,
            "runner_default": idle == RUNNERS_IDLE_THREADS,
            "config": IDLE_THREADS[idle],
            "own_call_after_pause_ms": lone[idle].percentile_ms(50),
            "eager_right_after_ms": after[idle].percentile_ms(50),
            "eager_after_pause_ms": eager_ms,
            "eager_slowdown": after[idle].percentile_ms(50) / eager_ms,
            "cpu_ms_after_call": cpu_ms_after_a_run(runner, x),
        }
        rows.append(row)
        label = f"{idle} (the runners')" if row["runner_default"] else idle
        table.add(
            label,
            row["own_call_after_pause_ms"],
            row["eager_right_after_ms"],
            f"{row['eager_slowdown']:.2f}x",
            row["cpu_ms_after_call"],
        )
    return table, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archs", nargs="+", help="architectures (default: resnet18 resnet50; --quick: resnet20)")
    parser.add_argument(
        "--batches",
        type=positive_int,
        nargs="+",
        help="batch sizes (default: 1 8 32, and 64 256 where CUDA is timed; --quick: 1 2)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        help="whose runners to time (default: cpu, and cuda where PyTorch sees a CUDA device); "
        "`--devices cuda` times the GPU runners alone, against CUDA eager",
    )
    parser.add_argument(
        "--runners",
        nargs="+",
        choices=[r for r in CPU_RUNNERS if r != "eager"],
        metavar="RUNNER",
        help="CPU runners to time beside eager (default: every one this CPU runs; --quick leaves out the "
        f"compiled ones). One of: {', '.join(r for r in CPU_RUNNERS if r != 'eager')}",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="time budget per (architecture, batch), shared by all runners (default: %(default)s)",
    )
    parser.add_argument(
        "--no-accuracy",
        action="store_true",
        help="skip the digits model (trained and exported here once) whose per-artifact top-1 is shown "
        "beside each runner's speed",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also time ONNX Runtime's graph-optimization levels / threads and its idle-thread policies "
        "(sessions built here with one setting changed from the runners')",
    )


def run(args: argparse.Namespace) -> Report:
    plan = plan_run(args)
    report = Report("infer", "Inference throughput per runner", threads=args.threads, quick=args.quick)
    cpu_runners, runner_notes = select_runners(args.runners, args.quick) if "cpu" in plan.devices else ([], [])
    report.notes += runner_notes
    formats = tuple(CPU_RUNNERS[r] for r in cpu_runners if CPU_RUNNERS[r])
    precisions = ("fp32", "int8") + (("bf16",) if "aoti bf16" in cpu_runners else ())
    # The ceilings are the CPU's: the CUDA rows have no fraction.
    ceiling = CeilingProbe(precisions, args.threads, args.quick) if "cpu" in plan.devices else None
    if ceiling:
        args.log(f"probing the {', '.join(precisions)} GEMM kernels at {args.threads} thread(s) for the ceiling")
        ceiling.select()
    exports: dict[str, Path] = {}
    rows: list[dict] = []
    labels: list[str] = []
    for arch in plan.archs:
        exports[arch] = export_model(arch, args.work_dir, threads=args.threads, formats=formats, log=args.log)
        arch_rows, labels = time_arch(args, plan, arch, exports[arch], cpu_runners, ceiling, report)
        rows += arch_rows
    if ceiling:
        report.data["ceiling"] = ceiling.to_dict()
    report.tables.append(inference_table(rows, plan.devices))
    report.data["rows"] = rows
    report.verdicts += aoti_verdicts(rows)
    if exports and formats:
        report.tables.append(compile_table(exports, formats))
    accuracy = {} if args.no_accuracy else digits_accuracy_rows(args, cpu_runners, labels, report)
    report.figures["infer_throughput_vs_batch.png"] = throughput_vs_batch(rows, accuracy)
    report.method = method_lines(formats, args.threads, report, ceiling)
    if args.ablations and "cpu" in plan.devices:
        add_ablations(args, plan, report)
    return report


@dataclass(frozen=True)
class Plan:
    archs: list[str]
    devices: list[str]
    batches: list[int]
    budget: Budget


def budget_for(args: argparse.Namespace) -> Budget:
    if args.quick:
        return Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0)
    return Budget(warmup=2, min_rounds=5, seconds=args.seconds)


def plan_run(args: argparse.Namespace) -> Plan:
    archs = args.archs or (["resnet20"] if args.quick else ["resnet18", "resnet50"])
    check_archs(archs)
    devices = list(dict.fromkeys(args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])))
    if "cuda" in devices and not torch.cuda.is_available():
        raise BenchmarkError("--devices cuda: PyTorch sees no CUDA device on this machine")
    batches = args.batches or ([1, 2] if args.quick else [1, 8, 32, 64, 256] if "cuda" in devices else [1, 8, 32])
    return Plan(archs, devices, batches, budget_for(args))


def time_arch(args, plan: Plan, arch: str, export_dir: Path, cpu_runners, ceiling, report: Report):
    """Every runner of one architecture at every batch, interleaved per batch: its rows and runner labels."""
    checkpoint = random_checkpoint(arch, args.work_dir)
    candidates, skipped = build_candidates(checkpoint, export_dir, args.threads, plan.devices, cpu_runners, args.log)
    report.notes += [f"{arch}: not measured: {s}" for s in skipped if f"{arch}: not measured: {s}" not in report.notes]
    input_size = candidates[0].runner.preprocess.input_size
    flops = forward_flops(candidates[0].runner.model, input_size)
    report.data.setdefault("flops_per_image", {})[arch] = flops
    rows = []
    for batch in plan.batches:
        x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(batch))
        # Page-locked: the copy to the GPU runs at DMA speed instead of staging through a bounce buffer.
        if "cuda" in plan.devices:
            x = x.pin_memory()
        args.log(f"{arch} batch {batch}: timing {', '.join(c.label for c in candidates)}")
        timed = {c.label: (lambda r=c.runner, x=x: r.predict(x)) for c in candidates}
        samples = interleaved(
            {**timed, **(ceiling.candidates() if ceiling else {})}, plan.budget, items=batch, prime_s=PRIME_S
        )
        group_ceilings = ceiling.ceilings(samples) if ceiling else {}
        eager = samples[candidates[0].label].items_per_s
        for c in candidates:
            s = samples[c.label]
            gflops = flops * s.items_per_s / 1e9
            cpu_ceiling = group_ceilings.get(c.effective_precision()) if c.device == "cpu" else None
            rows.append(
                {
                    "model": arch,
                    "batch": batch,
                    "runner": c.label,
                    "device": c.device,
                    "precision": c.effective_precision(),
                    **s.to_dict(),
                    "vs_eager": s.items_per_s / eager,
                    "gflops": gflops,
                    "ceiling_gflops": cpu_ceiling,
                    "ceiling_fraction": gflops / cpu_ceiling if cpu_ceiling else None,
                }
            )
    return rows, [c.label for c in candidates]


def inference_table(rows: list[dict], devices: list[str]) -> Table:
    table = Table(
        "Inference",
        [
            "model",
            "batch",
            "runner",
            "images/s",
            "p50 ms",
            "p99 ms",
            "calls",
            "spread (IQR/median)",
            "x eager" if "cpu" in devices else "x cuda eager",
            "GEMM ceiling GFLOP/s (same rounds)",
            "% of GEMM ceiling (its precision)",
        ],
    )
    for row in rows:
        table.add(
            row["model"],
            row["batch"],
            row["runner"],
            row["items_per_s"],
            row["p50_ms"],
            row["p99_ms"],
            row["calls"],
            f"{row['iqr_over_median']:.1%}",
            f"{row['vs_eager']:.2f}x",
            row["ceiling_gflops"],
            None if row["ceiling_fraction"] is None else f"{100 * row['ceiling_fraction']:.0f}%",
        )
    return table


def digits_accuracy_rows(args, cpu_runners, labels: list[str], report: Report) -> dict[str, float | None]:
    """Each artifact's labelled top-1 on the trained digits model, keyed by runner label for the figure."""
    # torchscript always: the fp32 network whose accuracy eager's rows show
    digits_formats = tuple(dict.fromkeys(["torchscript"] + [CPU_RUNNERS[r] for r in cpu_runners if CPU_RUNNERS[r]]))
    digits = digits_export(args.work_dir, formats=digits_formats, epochs=1 if args.quick else 4, log=args.log)
    manifest = read_manifest(digits)
    by_format, agreement = {}, {}
    for fmt in digits_formats:
        args.log(f"digits model: top-1 of its {fmt} artifact")
        by_format[fmt] = digits_accuracy(digits, fmt, args.work_dir / "evaluations" / fmt)
        artifact = manifest.find(fmt)
        agreement[fmt] = artifact.parity.get("metrics", {}).get("top1_agreement") if artifact else None
    accuracy: dict[str, float | None] = {}
    for label in labels:
        runner = label.removeprefix("cuda ")
        if runner in CPU_RUNNERS:  # eager: the same fp32 network as the TorchScript artifact
            accuracy[label] = by_format.get(CPU_RUNNERS[runner] or "torchscript")
    report.tables.append(
        Table(
            "Labelled accuracy on the digits model (resnet20, scikit-learn digits validation split)",
            ["artifact", "top-1 %", "top-1 agreement with eager (export's parity check)"],
            [
                [fmt, by_format[fmt], None if agreement[fmt] is None else f"{100 * agreement[fmt]:.2f}%"]
                for fmt in digits_formats
            ],
        )
    )
    report.data["digits_top1"] = by_format
    report.data["digits_top1_agreement_with_eager"] = agreement
    return accuracy


def method_lines(formats: tuple[str, ...], threads: int, report: Report, ceiling) -> list[str]:
    return [
        "Random-init weights (seeded) saved with `models.Checkpoint.save`, exported with `python -m export` "
        f"({', '.join(formats)}; parity checked on random pixels, which is all random weights allow). "
        "Input: one fixed random float32 NCHW batch. `eager channels_last` is the same module with its weights "
        "converted to channels_last; `aoti` and `aoti bf16` are the AOTInductor packages (frozen weights, bf16 "
        "computed inside a float32-in, float32-out package).",
        "ONNX Runtime INT8 is the export's `onnx-int8` artifact (static QDQ quantization, int8 weights per channel, "
        "uint8 activations, calibrated on the synthetic training split). Its speed does not depend on the weights, "
        "but its accuracy does: with random weights only its cosine gate is kept (their near-tied logits flip top-1 "
        "on noise), and its accuracy gate is checked on a trained model (tests/export/test_int8.py, resnet20 on "
        "digits: 100% top-1 agreement). Its row's fraction is of the int8 GEMM ceiling (ONNX Runtime MatMulInteger), the "
        "others' of the fp32 one.",
        "All runners of one (model, batch) are timed in the same interleaved rounds after warm-up, each timed call "
        f"right after {PRIME_S * 1e3:.0f} ms (at least one call) of untimed calls of the same runner (a stream of its own "
        "calls: right after another runner, a call would share the cores with that one's spinning threads); "
        "images/s = batch / median call time; p50/p99 are per "
        "call (one batch).",
        "FLOPs = 2 x MACs of convolutions + classifier (torch.utils.flop_counter) per image: "
        + ", ".join(f"{a} {f / 1e9:.2f} GFLOP ({f / 2e9:.2f} GMAC)" for a, f in report.data["flops_per_image"].items())
        + (f". {ceiling.describe()}." if ceiling else ". No CPU runner timed (--devices), so no CPU GEMM ceiling."),
        f"ONNX Runtime: CPU provider, graph optimization ORT_ENABLE_ALL, intra-op threads {threads}, inter-op 1; "
        f"PyTorch: torch.set_num_threads({threads}).",
    ]


def add_ablations(args, plan: Plan, report: Report) -> None:
    """ONNX Runtime's optimisation levels, and its idle-thread policies (opt-in: --ablations)."""
    threads, budget = args.threads, plan.budget
    arch, batch = plan.archs[-1], plan.batches[len(plan.batches) // 2]
    args.log(f"{arch} batch {batch}: ONNX Runtime graph optimization levels and threads vs eager")
    ablation, ablation_rows = onnx_ablation(
        arch, random_checkpoint(arch, args.work_dir), export_model(arch, args.work_dir), batch, threads, budget
    )
    report.tables.append(ablation)
    report.data["onnx_ablation"] = ablation_rows
    by_name = {r["runner"]: r["vs_eager_same_threads"] for r in ablation_rows}
    report.notes.append(
        f"{arch} batch {batch}, {threads} thread(s): ONNX Runtime / eager is {by_name[f'onnxruntime ORT_DISABLE_ALL, {threads} thread(s)']:.2f}x "
        f"with graph optimizations off, {by_name[f'onnxruntime ORT_ENABLE_EXTENDED, {threads} thread(s)']:.2f}x with the fusions "
        f"(EXTENDED) and {by_name[f'onnxruntime ORT_ENABLE_ALL, {threads} thread(s)']:.2f}x with the NCHWc layout (ALL, what the "
        "runner uses)."
    )
    arch = plan.archs[0]
    if threads == 1:
        report.notes.append(
            "ONNX Runtime's idle-threads table: not measured at 1 thread. A session with one intra-op thread runs "
            "on the caller's thread and has no pool, so no thread idles; run with `--threads 2` or more."
        )
        return
    args.log(f"{arch} batch 1: ONNX Runtime's idle threads spinning, blocking, or spinning within a run")
    idle_table, idle_rows = idle_threads_ablation(
        arch,
        random_checkpoint(arch, args.work_dir),
        export_model(arch, args.work_dir),
        threads,
        budget,
        consecutive=2 if args.quick else 8,
    )
    report.tables.append(idle_table)
    report.data["idle_threads_ablation"] = idle_rows
    by_idle = {r["idle_threads"]: r for r in idle_rows}
    spin, within = by_idle["spin"], by_idle[RUNNERS_IDLE_THREADS]
    report.notes.append(
        f"{arch} batch 1, ONNX Runtime's idle threads: spinning (its default) burns "
        f"{spin['cpu_ms_after_call']:.0f} CPU ms after each call and the eager call right after it takes "
        f"{spin['eager_slowdown']:.2f}x as long as after a pause; blocking makes a lone call take "
        f"{by_idle['block']['own_call_after_pause_ms']:.1f} ms against {spin['own_call_after_pause_ms']:.1f} ms; "
        f"spinning within a run (the runners') takes {within['own_call_after_pause_ms']:.1f} ms, "
        f"burns {within['cpu_ms_after_call']:.1f} CPU ms after it, and the eager call right after it "
        f"takes {within['eager_slowdown']:.2f}x as long as after a pause."
    )
