"""`python -m benchmarks ceiling`: this machine's dense GEMM throughput, the limit the others are compared with.

Square `torch.matmul` in fp32 and bf16, and in int8 ONNX Runtime's `MatMulInteger` (uint8 x int8 ->
int32, MLAS's quantized GEMM: the kernels our int8 artifact's convolutions run on) at a few sizes.
`torch._int_mm` is not used for int8: without VNNI it falls back to a scalar loop (1.3 GOP/s on an
AVX2 Zen 3, against hundreds for MLAS), which would make it a floor, not a ceiling. Operations are
counted as 2*M*N*K (a multiply and an add per multiply-accumulate), the same convention `infer` and
`train` use for the networks, so the int8 "GFLOP/s" are integer operations. The ceiling for a dtype is
its best median over the sizes.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from .errors import positive_int
from .report import Report, Table, usable_cores
from .timing import Budget, interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": None}  # int8: ONNX Runtime, see above


def int8_matmul(size: int, threads: int) -> Callable[[], object]:
    """One call of ONNX Runtime's MatMulInteger (uint8 activations x int8 weights, int32 out) on a
    size x size problem, at `threads` intra-op threads."""
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8_gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weights],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return lambda: session.run(None, {"A": a})


def gemm_gflops(size: int, dtype_name: str, budget: Budget, device: str = "cpu") -> dict:
    """Median GFLOP/s of a size x size x size matmul (threads: whatever torch is set to now)."""
    if dtype_name == "int8":
        call = int8_matmul(size, torch.get_num_threads())
    else:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype_name])
        b = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype_name])
        out = torch.empty(size, size, dtype=DTYPES[dtype_name], device=device)

        def call() -> None:
            torch.matmul(a, b, out=out)
            if device == "cuda":
                torch.cuda.synchronize()

    samples = interleaved({"gemm": call}, budget)["gemm"]
    flops = 2.0 * size**3
    return {"size": size, "median_s": samples.median_s, "calls": len(samples.seconds), "gflops": flops / samples.median_s / 1e9}


# A call slower than this means a fallback kernel (bf16 without AVX512_BF16 runs at ~1 GFLOP/s): larger
# sizes would take minutes each and cannot raise the ceiling, so they are not timed.
SLOW_CALL_S = 1.0


def measure_ceiling(dtype_name: str, threads: int, sizes: list[int], budget: Budget) -> dict:
    """The best median GFLOP/s over `sizes` (ascending; stopping after a call slower than SLOW_CALL_S)
    at `threads` intra-op threads, with the per-size numbers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_size: list[dict] = []
    try:
        for size in sorted(sizes):
            per_size.append(gemm_gflops(size, dtype_name, budget))
            if per_size[-1]["median_s"] > SLOW_CALL_S:
                break
    finally:
        torch.set_num_threads(previous)
    best = max(per_size, key=lambda r: r["gflops"])
    skipped = [size for size in sizes if size > per_size[-1]["size"]]
    return {"dtype": dtype_name, "threads": threads, "gflops": best["gflops"], "best_size": best["size"],
            "sizes": per_size, "skipped_sizes": skipped}  # fmt: skip


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
        return (f"GEMM ceiling: torch.matmul / ONNX Runtime MatMulInteger (N = {', '.join(map(str, self.sizes))}) at {self.threads} thread(s), measured "
                f"before and after the timings ({each} GFLOP/s); the better of the two is used")  # fmt: skip


def default_sizes(quick: bool) -> list[int]:
    return [128, 256] if quick else [1024, 2048, 3072]


def default_budget(quick: bool) -> Budget:
    return Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0.0) if quick else Budget(warmup=2, min_rounds=5, seconds=4.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="square GEMM sizes (default: 1024 2048 3072; --quick: 128 256)")


def run(args: argparse.Namespace) -> Report:
    threads = args.threads
    sizes = sorted(args.sizes or default_sizes(args.quick))
    budget = default_budget(args.quick)
    thread_counts = sorted({1, threads})
    report = Report("ceiling", "GEMM ceiling (torch.matmul; int8: ONNX Runtime MatMulInteger)", threads=threads, quick=args.quick)
    report.method = [
        f"Square matmul C = A·B at sizes {', '.join(map(str, sizes))}; FLOPs = 2·N³ (one multiply and one add "
        "per multiply-accumulate). Median of the timed calls after warm-up.",
        "int8: ONNX Runtime MatMulInteger (uint8 x int8 -> int32, MLAS: what the int8 artifact's convolutions run on; "
        "torch._int_mm has only a scalar fallback without VNNI).",
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
            by_size = {r["size"]: r["gflops"] for r in result["sizes"]}
            table.add(dtype_name, count, *[by_size.get(size) for size in sizes], result["gflops"])
            if result["skipped_sizes"]:
                slowest = result["sizes"][-1]
                report.notes.append(
                    f"{dtype_name}, {count} thread(s): N={', '.join(map(str, result['skipped_sizes']))} not timed: one call "
                    f"at N={slowest['size']} took {slowest['median_s']:.1f} s ({slowest['gflops']:.1f} GFLOP/s), a fallback "
                    "kernel on this CPU (larger sizes would take minutes and cannot raise the ceiling)"
                )  # fmt: skip
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
