"""`python -m benchmarks ceiling`: this machine's dense GEMM throughput, the limit the others are compared with.

Square GEMMs at a few sizes through each library that runs one of our models' precisions: fp32 in
`torch.matmul` (MKL's sgemm) and in ONNX Runtime's `MatMul` (MLAS), bf16 in `torch.matmul`, int8 in
ONNX Runtime's `MatMulInteger` (uint8 x int8 -> int32, MLAS's quantized GEMM: the kernels our int8
artifact's convolutions run on). A dtype's ceiling is its fastest kernel's best median over the sizes.
fp32 needs both libraries: MKL takes its AVX2 path on AMD CPUs while MLAS picks AVX-512 from CPUID,
which on a Zen 5 (full-width AVX-512 units) doubles the fp32 rate; a ceiling from MKL alone would be
half the machine's. `torch._int_mm` is not used for int8: without VNNI it falls back to a scalar loop
(1.3 GOP/s on an AVX2 Zen 3, against hundreds for MLAS), which would make it a floor, not a ceiling.
Operations are counted as 2*M*N*K (a multiply and an add per multiply-accumulate), the same
convention `infer` and `train` use for the networks, so the int8 "GFLOP/s" are integer operations.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from export.runners import onnxruntime_session_options

from .errors import positive_int
from .report import Report, Table, usable_cores
from .timing import Budget, interleaved

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TORCH, ONNXRUNTIME = "torch.matmul", "onnxruntime"
KERNELS = {"fp32": (TORCH, ONNXRUNTIME), "bf16": (TORCH,), "int8": (ONNXRUNTIME,)}  # see the module doc


def onnxruntime_matmul(size: int, dtype_name: str, threads: int) -> Callable[[], object]:
    """One call of ONNX Runtime's MatMul (fp32) or MatMulInteger (int8: uint8 activations x int8
    weights, int32 out) on a size x size problem, at `threads` intra-op threads."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype_name == "int8":
        op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
        b = rng.integers(-128, 128, (size, size), dtype=np.int8)
    else:
        op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        f"{dtype_name}_gemm",
        [helper.make_tensor_value_info("A", a_type, [size, size])],
        [helper.make_tensor_value_info("Y", y_type, [size, size])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    # The runners' own options (threads, idle threads), so the ceiling is measured as the networks run.
    options = onnxruntime_session_options(threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": a})


def gemm_call(size: int, dtype_name: str, kernel: str, threads: int) -> Callable[[], object]:
    """One size x size x size matmul of `dtype_name` through `kernel`, at `threads` intra-op threads."""
    if kernel == ONNXRUNTIME:
        return onnxruntime_matmul(size, dtype_name, threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(TORCH_DTYPES[dtype_name])
    b = torch.randn(size, size, generator=generator).to(TORCH_DTYPES[dtype_name])
    out = torch.empty(size, size, dtype=TORCH_DTYPES[dtype_name])

    def call() -> None:
        torch.set_num_threads(threads)  # PyTorch's pool is per process: another candidate may have changed it
        torch.matmul(a, b, out=out)

    return call


def gemm_gflops(size: int, dtype_name: str, kernel: str, budget: Budget) -> dict:
    """Median GFLOP/s of a size x size x size matmul (threads: whatever torch is set to now)."""
    samples = interleaved({"gemm": gemm_call(size, dtype_name, kernel, torch.get_num_threads())}, budget)["gemm"]
    flops = 2.0 * size**3
    return {
        "size": size,
        "median_s": samples.median_s,
        "calls": len(samples.seconds),
        "gflops": flops / samples.median_s / 1e9,
    }


# A call slower than this means a fallback kernel (bf16 without AVX512_BF16 runs at ~1 GFLOP/s): larger
# sizes would take minutes each and cannot raise the ceiling, so they are not timed.
SLOW_CALL_S = 1.0


def measure_kernel(dtype_name: str, kernel: str, threads: int, sizes: list[int], budget: Budget) -> dict:
    """One kernel's best median GFLOP/s over `sizes` (ascending; stopping after a call slower than
    SLOW_CALL_S) at `threads` intra-op threads, with the per-size numbers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_size: list[dict] = []
    try:
        for size in sorted(sizes):
            per_size.append(gemm_gflops(size, dtype_name, kernel, budget))
            if per_size[-1]["median_s"] > SLOW_CALL_S:
                break
    finally:
        torch.set_num_threads(previous)
    best = max(per_size, key=lambda r: r["gflops"])
    skipped = [size for size in sizes if size > per_size[-1]["size"]]
    return {
        "dtype": dtype_name,
        "kernel": kernel,
        "threads": threads,
        "gflops": best["gflops"],
        "best_size": best["size"],
        "sizes": per_size,
        "skipped_sizes": skipped,
    }


def fastest_kernel(dtype_name: str, threads: int, sizes: list[int], budget: Budget) -> dict:
    """`measure_kernel`'s result for the dtype's fastest kernel: its ceiling."""
    return max(
        (measure_kernel(dtype_name, kernel, threads, sizes, budget) for kernel in KERNELS[dtype_name]),
        key=lambda r: r["gflops"],
    )


class CeilingProbe:
    """The GEMM ceiling for another benchmark's fractions, timed side by side with its networks.

    `select`, before the timings, finds each dtype's fastest kernel and size; `candidates` adds that
    GEMM to a group of `interleaved(..., prime_s=)` candidates and `ceilings` reads its GFLOP/s off
    the group's samples, so both sides of every fraction are measured in the same rounds. (Measured
    apart, before and after the timings, the ceiling moved by up to 25% between runs on a shared Zen 4
    while the networks did not, and every fraction with it.) Primed, because a ceiling is the rate of a
    warm kernel: right after a network's call a GEMM ran 10-60% slower (the 3 ms int8 one 2x), on
    evicted caches beside PyTorch's spinning threads."""

    def __init__(self, dtypes: tuple[str, ...], threads: int, quick: bool) -> None:
        self.dtypes, self.threads = dtypes, threads
        self.sizes = [256] if quick else [1024, 2048]
        self.budget = Budget(warmup=1, min_rounds=3, seconds=0 if quick else 3)
        self.selected: dict[str, dict] = {}
        self.calls: dict[str, Callable[[], object]] = {}
        self.groups: list[dict[str, float]] = []

    @staticmethod
    def label(dtype_name: str) -> str:
        return f"GEMM ceiling {dtype_name}"

    def select(self) -> None:
        for d in self.dtypes:
            best = fastest_kernel(d, self.threads, self.sizes, self.budget)
            self.selected[d] = {"kernel": best["kernel"], "size": best["best_size"], "probe_gflops": best["gflops"]}
            self.calls[d] = gemm_call(best["best_size"], d, best["kernel"], self.threads)

    def candidates(self, dtypes: tuple[str, ...] | None = None) -> dict[str, Callable[[], object]]:
        """The selected GEMM of each of `dtypes` (default: all), keyed by `label`, for `interleaved`."""
        return {self.label(d): self.calls[d] for d in dtypes or self.dtypes}

    def ceilings(self, samples: dict) -> dict[str, float]:
        """GFLOP/s of each GEMM timed in one group's `samples` (and kept for `describe`)."""
        group = {
            d: 2.0 * sel["size"] ** 3 / samples[self.label(d)].median_s / 1e9
            for d, sel in self.selected.items()
            if self.label(d) in samples
        }
        self.groups.append(group)
        return group

    def to_dict(self) -> dict:
        return {"selected": self.selected, "groups": self.groups}

    def describe(self) -> str:
        picked = "; ".join(
            f"{d}: {s['kernel']} at N={s['size']} ({s['probe_gflops']:.0f} GFLOP/s)" for d, s in self.selected.items()
        )
        spread = ", ".join(
            f"{d} {min(v):.0f}-{max(v):.0f}" for d in self.dtypes if (v := [g[d] for g in self.groups if d in g])
        )
        return (
            f"GEMM ceiling at {self.threads} thread(s): each precision's fastest kernel and size in a probe before the "
            f"timings (N = {', '.join(map(str, self.sizes))}; {picked}), then timed (primed like the networks) as one "
            f"more candidate in the same rounds as the networks, so each fraction's two sides are measured side by "
            f"side ({spread} GFLOP/s over the groups); each row's fraction is of its own group's ceiling"
        )


def default_sizes(quick: bool) -> list[int]:
    return [128, 256] if quick else [1024, 2048, 3072]


def default_budget(quick: bool) -> Budget:
    return (
        Budget(warmup=1, min_rounds=2, max_rounds=3, seconds=0.0)
        if quick
        else Budget(warmup=2, min_rounds=5, seconds=4.0)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=positive_int, nargs="+", help="square GEMM sizes (default: 1024 2048 3072; --quick: 128 256)"
    )


def run(args: argparse.Namespace) -> Report:
    threads = args.threads
    sizes = sorted(args.sizes or default_sizes(args.quick))
    budget = default_budget(args.quick)
    thread_counts = sorted({1, threads})
    report = Report(
        "ceiling",
        "GEMM ceiling (torch.matmul and ONNX Runtime MatMul / MatMulInteger)",
        threads=threads,
        quick=args.quick,
    )
    report.method = [
        f"Square matmul C = A·B at sizes {', '.join(map(str, sizes))}; FLOPs = 2·N³ (one multiply and one add "
        "per multiply-accumulate). Median of the timed calls after warm-up.",
        "fp32: torch.matmul (MKL sgemm, which takes its AVX2 path on AMD CPUs) and ONNX Runtime MatMul (MLAS, "
        "which picks AVX-512 where the CPU has it); the ceiling is the faster of the two.",
        "int8: ONNX Runtime MatMulInteger (uint8 x int8 -> int32, MLAS: what the int8 artifact's convolutions run on; "
        "torch._int_mm has only a scalar fallback without VNNI).",
        "The ceiling of a dtype is its fastest kernel's best median over the sizes; `infer` and `train` re-measure "
        "the ceilings of their precisions in their own run and report the fraction their networks reach.",
        f"Rows at 1 thread and at {threads} thread(s) (of {usable_cores()} usable cores).",
    ]
    table = Table("GEMM GFLOP/s (median)", ["dtype", "kernel", "threads", *[f"N={s}" for s in sizes], "best GFLOP/s"])
    results = []
    for dtype_name, kernels in KERNELS.items():
        for kernel in kernels:
            for count in thread_counts:
                result = measure_kernel(dtype_name, kernel, count, sizes, budget)
                results.append(result)
                by_size = {r["size"]: r["gflops"] for r in result["sizes"]}
                table.add(dtype_name, kernel, count, *[by_size.get(size) for size in sizes], result["gflops"])
                if result["skipped_sizes"]:
                    slowest = result["sizes"][-1]
                    report.notes.append(
                        f"{dtype_name} {kernel}, {count} thread(s): N={', '.join(map(str, result['skipped_sizes']))} not "
                        f"timed: one call at N={slowest['size']} took {slowest['median_s']:.1f} s ({slowest['gflops']:.1f} "
                        "GFLOP/s), a fallback kernel on this CPU (larger sizes would take minutes and cannot raise the ceiling)"
                    )
    report.tables.append(table)
    report.data["ceilings"] = results

    def ceiling(dtype_name: str, count: int) -> dict:
        return max(
            (r for r in results if r["dtype"] == dtype_name and r["threads"] == count), key=lambda r: r["gflops"]
        )

    fp32, bf16, int8 = (ceiling(d, threads) for d in ("fp32", "bf16", "int8"))
    report.data["ceiling_gflops"] = {"fp32": fp32["gflops"], "bf16": bf16["gflops"], "int8": int8["gflops"]}
    fp32_kernels = {r["kernel"]: r["gflops"] for r in results if r["dtype"] == "fp32" and r["threads"] == threads}
    report.notes.append(
        f"At {threads} thread(s): fp32 {fp32['gflops']:.0f} GFLOP/s ({fp32['kernel']}; torch.matmul / ONNX Runtime = "
        f"{fp32_kernels[TORCH] / fp32_kernels[ONNXRUNTIME]:.2f}x), bf16 {bf16['gflops']:.0f} GFLOP/s, int8 "
        f"{int8['gflops']:.0f} GOP/s (bf16/fp32 = {bf16['gflops'] / fp32['gflops']:.2f}x, int8/fp32 = "
        f"{int8['gflops'] / fp32['gflops']:.2f}x); {threads} threads vs 1 thread: "
        f"fp32 {fp32['gflops'] / ceiling('fp32', 1)['gflops']:.2f}x."
    )
    return report
