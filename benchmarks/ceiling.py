"""`python -m benchmarks ceiling`: this machine's dense GEMM throughput, the limit the others are compared with.

Square `torch.matmul` in fp32 and bf16, and `torch._int_mm` (int8 x int8 -> int32, the kernel
PyTorch's own int8 quantization uses) at a few sizes; operations are counted as 2*M*N*K (a multiply
and an add per multiply-accumulate), the same convention `infer` and `train` use for the networks, so
the int8 "GFLOP/s" are integer operations. The ceiling for a dtype is its best median over the sizes.
"""

from __future__ import annotations

import argparse

import torch

from .errors import positive_int
from .report import Report, Table, usable_cores
from .timing import Budget, interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def gemm_gflops(size: int, dtype: torch.dtype, budget: Budget, device: str = "cpu") -> dict:
    """Median GFLOP/s of a size x size x size matmul (threads: whatever torch is set to now)."""
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a, b = (torch.randint(-128, 128, (size, size), generator=generator, dtype=dtype).to(device) for _ in "ab")
        out = torch.empty(size, size, dtype=torch.int32, device=device)
        multiply = torch._int_mm  # int8 GEMM with int32 accumulation; torch.matmul has no int8 kernel
    else:
        a = torch.randn(size, size, generator=generator).to(device, dtype)
        b = torch.randn(size, size, generator=generator).to(device, dtype)
        out = torch.empty(size, size, dtype=dtype, device=device)
        multiply = torch.matmul

    def call() -> None:
        multiply(a, b, out=out)
        if device == "cuda":
            torch.cuda.synchronize()

    samples = interleaved({"gemm": call}, budget)["gemm"]
    flops = 2.0 * size**3
    return {"size": size, "median_s": samples.median_s, "calls": len(samples.seconds), "gflops": flops / samples.median_s / 1e9}


def measure_ceiling(dtype_name: str, threads: int, sizes: list[int], budget: Budget) -> dict:
    """The best median GFLOP/s over `sizes` at `threads` intra-op threads, with the per-size numbers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per_size = [gemm_gflops(size, DTYPES[dtype_name], budget) for size in sizes]
    finally:
        torch.set_num_threads(previous)
    best = max(per_size, key=lambda r: r["gflops"])
    return {"dtype": dtype_name, "threads": threads, "gflops": best["gflops"], "best_size": best["size"], "sizes": per_size}


class CeilingProbe:
    """The GEMM ceiling for another benchmark's fractions: measured before and after its timings, the
    better of the two kept (a neighbour's load can only lower a measurement, never raise it)."""

    def __init__(self, dtypes: tuple[str, ...], threads: int, quick: bool) -> None:
        self.dtypes, self.threads = dtypes, threads
        self.sizes = [256] if quick else [1024, 2048]
        self.budget = Budget(warmup=1, min_rounds=3, seconds=0 if quick else 3)
        self.runs: list[dict[str, float]] = []

    def measure(self) -> None:
        self.runs.append({d: measure_ceiling(d, self.threads, self.sizes, self.budget)["gflops"] for d in self.dtypes})

    @property
    def gflops(self) -> dict[str, float]:
        return {d: max(run[d] for run in self.runs) for d in self.dtypes}

    def describe(self) -> str:
        each = "; ".join(f"{when}: " + ", ".join(f"{d} {run[d]:.0f}" for d in self.dtypes)
                         for when, run in zip(("before", "after"), self.runs))  # fmt: skip
        return (f"GEMM ceiling: torch.matmul / torch._int_mm (N = {', '.join(map(str, self.sizes))}) at {self.threads} thread(s), measured "
                f"before and after the timings ({each} GFLOP/s); the better of the two is used")  # fmt: skip


def default_sizes(quick: bool) -> list[int]:
    return [128, 256] if quick else [1024, 2048, 3072]


def default_budget(quick: bool) -> Budget:
    return Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0.0) if quick else Budget(warmup=2, min_rounds=5, seconds=4.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="square GEMM sizes (default: 1024 2048 3072; --quick: 128 256)")


def run(args: argparse.Namespace) -> Report:
    threads = args.threads
    sizes = args.sizes or default_sizes(args.quick)
    budget = default_budget(args.quick)
    thread_counts = sorted({1, threads})
    report = Report("ceiling", "GEMM ceiling (torch.matmul)", threads=threads, quick=args.quick)
    report.method = [
        f"Square matmul C = A·B at sizes {', '.join(map(str, sizes))}; FLOPs = 2·N³ (one multiply and one add "
        "per multiply-accumulate). Median of the timed calls after warm-up.",
        "int8: torch._int_mm (int8 x int8 -> int32 accumulation; torch.matmul has no int8 kernel).",
        "The ceiling of a dtype is its best median over the sizes; `infer` and `train` re-measure the ceilings of "
        "their precisions in their own run and report the fraction their networks reach.",
        f"Rows at 1 thread and at {threads} thread(s) (of {usable_cores()} usable cores).",
    ]
    table = Table("GEMM GFLOP/s (median)", ["dtype", "threads", *[f"N={s}" for s in sizes], "ceiling GFLOP/s"])
    results = []
    for dtype_name in DTYPES:
        for count in thread_counts:
            result = measure_ceiling(dtype_name, count, sizes, budget)
            results.append(result)
            table.add(dtype_name, count, *[r["gflops"] for r in result["sizes"]], result["gflops"])
    report.tables.append(table)
    report.data["ceilings"] = results
    fp32 = {r["threads"]: r["gflops"] for r in results if r["dtype"] == "fp32"}
    bf16 = {r["threads"]: r["gflops"] for r in results if r["dtype"] == "bf16"}
    int8 = {r["threads"]: r["gflops"] for r in results if r["dtype"] == "int8"}
    report.notes.append(
        f"At {threads} thread(s): fp32 {fp32[threads]:.0f} GFLOP/s, bf16 {bf16[threads]:.0f} GFLOP/s, int8 "
        f"{int8[threads]:.0f} GOP/s (bf16/fp32 = {bf16[threads] / fp32[threads]:.2f}x, int8/fp32 = "
        f"{int8[threads] / fp32[threads]:.2f}x); {threads} threads vs 1 thread: "
        f"fp32 {fp32[threads] / fp32[1]:.2f}x."
    )
    return report
