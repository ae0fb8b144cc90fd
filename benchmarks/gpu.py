"""`python -m benchmarks gpu`: ResNet-50 on one GPU: AMP training, FP16 inference per runtime, parity, memory.

What a GPU day needs in one command (under 8 minutes on an H100-class GPU, no network, torch 2.11+):

- training images/s: `train.engine.train_step` (the project's step: SGD with momentum, per-step cosine
  LR, on-device normalisation) in bf16 autocast with channels_last, synthetic uint8 batches of 256 in
  pinned memory, as train's loaders yield them;
- inference images/s at batch 1, 64 and 256 for eager fp32, eager fp16 channels_last, TorchScript fp16
  (traced, frozen, optimize_for_inference) and AOTInductor fp16 (`torch.export` with a dynamic batch,
  `torch._inductor.aoti_compile_and_package`, loaded back from the .pt2), each on a device-resident
  batch (the copy from the host is not what these rows compare);
- FP16 parity against fp32 on the same inputs (cosine, max |logit difference|, top-1 agreement);
- peak memory: CUDA's peak allocation per phase on a GPU, the process's peak RSS on the CPU;
- compile and build times (AOTInductor compile, TorchScript freeze).

Random weights (seeded): speed does not depend on them; parity on random weights checks the
arithmetic, not accuracy. `--device cpu --quick` runs every step on a tiny input on the CPU (the
test does), so on a GPU day the only untested thing is the GPU.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from models import create_model, get_model_spec
from train.config import resolve_config
from train.engine import StepParts, train_step
from train.optim import build_optimizer, build_scheduler

from .errors import BenchmarkError, check_archs, positive_int
from .plots import bars
from .report import Report, Table, Verdict
from .timing import Budget, interleaved
from .training import peak_rss_mb

TRAIN_TARGET = 3000.0  # ResNet-50 AMP training images/s on an H100-class GPU
INFER_TARGET = 10000.0  # FP16 inference images/s at batch 256, H100-class


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA's peak allocation since the last reset on a GPU; the process's peak RSS (ever) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


class Half(nn.Module):
    """fp16 inside, float32 in and out: what a served fp16 artifact computes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half().contiguous(memory_format=torch.channels_last)).float()


def fp16_model(model: nn.Module, device: torch.device) -> nn.Module:
    return Half(copy.deepcopy(model).to(device).half().to(memory_format=torch.channels_last)).eval()


def torchscript_fp16(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def aoti_fp16(model: nn.Module, example: torch.Tensor, max_batch: int, folder: Path):
    """`model` captured with a dynamic batch (2..max_batch; batch 1 is served by the same kernels), compiled
    by AOTInductor into a .pt2 and loaded back: a callable."""
    import torch._inductor

    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.fp16.pt2"))
    return torch._inductor.aoti_load_package(path)


def parity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    reference, other = reference.float(), other.float()
    cosine = nn.functional.cosine_similarity(reference, other, dim=1)
    return {
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float((reference - other).abs().max()),
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).float().mean()),
    }


def training_rate(arch: str, batch: int, size: int, device: torch.device, budget: Budget) -> dict:
    """Images/s of the project's train_step in bf16 autocast + channels_last on synthetic data."""
    spec = get_model_spec(arch)
    config = resolve_config({"arch": arch, "data": "synthetic", "batch_size": batch})
    torch.manual_seed(0)
    network = create_model(arch, num_classes=spec.default_num_classes).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(network, config)
    parts = StepParts(
        model=network,
        network=network,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        preprocess=spec.preprocess,
        device=device,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch=1000),
        amp_dtype=torch.bfloat16,
        channels_last=True,
    )
    network.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, spec.default_num_classes, (batch,), generator=generator)
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()

    def step() -> None:
        train_step(parts, images, labels)
        synchronize(device)

    reset_peak(device)
    samples = interleaved({"train": step}, budget, items=batch)["train"]
    return {**samples.to_dict(), "peak_memory_mb": peak_memory_mb(device)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="default: %(default)s (`--device cpu --quick` checks the whole run on the CPU)",
    )
    parser.add_argument("--arch", default=None, help="network (default: resnet50; --quick: resnet18)")
    parser.add_argument(
        "--batches", type=positive_int, nargs="+", help="inference batches (default: 1 64 256; --quick: 1 2)"
    )
    parser.add_argument("--train-batch", type=positive_int, help="training batch (default: 256; --quick: 2)")
    parser.add_argument("--image-size", type=positive_int, help="input size (default: 224; --quick: 32)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per timed group (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write gpu.md/.json and the PNGs directly into this folder")


def run(args: argparse.Namespace) -> Report:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            "--device cuda: PyTorch sees no CUDA device here (`--device cpu --quick` checks the run on the CPU)"
        )
    arch = args.arch or ("resnet18" if args.quick else "resnet50")
    check_archs([arch])
    batches = args.batches or ([1, 2] if args.quick else [1, 64, 256])
    train_batch = args.train_batch or (2 if args.quick else 256)
    size = args.image_size or (32 if args.quick else 224)
    budget = (
        Budget(warmup=1, min_rounds=2, max_rounds=2, seconds=0)
        if args.quick
        else Budget(warmup=3, min_rounds=10, max_rounds=500, seconds=args.seconds)
    )
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    report = Report(
        "gpu",
        f"{arch} on {device.type}: AMP training, FP16 inference per runtime, parity, memory",
        threads=args.threads,
        quick=args.quick,
    )
    data: dict = {
        "arch": arch,
        "device": device.type,
        "image_size": size,
        "batches": batches,
        "train_batch": train_batch,
    }
    report.data = data
    args.log(f"training: {arch}, batch {train_batch}, bf16 autocast, channels_last")
    data["train"] = training_rate(arch, train_batch, size, device, budget)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows, parity_rows, builds = time_inference(arch, batches, size, device, budget, args.log)
    data.update(inference=rows, parity=parity_rows, builds=builds)

    report.method = method_lines(arch, size, device, args.threads, train_batch, data["train"])
    report.tables += result_tables(train_batch, data["train"], rows, parity_rows, builds)
    if device.type == "cuda" and not args.quick and arch == "resnet50":
        report.verdicts += h100_verdicts(data["train"], rows)
    top = max(batches)
    report.figures["gpu_inference.png"] = bars(
        f"{arch} inference at batch {top} ({device.type})",
        {r["runner"]: r["items_per_s"] for r in rows if r["batch"] == top},
        "images/s",
    )
    report.figures["gpu_inference_by_batch.png"] = bars(
        f"{arch} inference images/s by runner and batch ({device.type})",
        {f"{r['runner']}, b{r['batch']}": r["items_per_s"] for r in rows},
        "images/s",
    )
    return report


def time_inference(arch: str, batches: list[int], size: int, device: torch.device, budget: Budget, log):
    """Every inference runner at every batch, interleaved, with FP16 parity: (rows, parity rows, build times)."""
    torch.manual_seed(0)
    spec = get_model_spec(arch)
    fp32 = create_model(arch, num_classes=spec.default_num_classes).eval().to(device)
    half = fp16_model(fp32, device)
    example = torch.randn(max(2, min(batches)), 3, size, size, device=device)
    builds: dict[str, float] = {}
    started = time.perf_counter()
    ts = torchscript_fp16(half, example)
    builds["TorchScript fp16 trace + freeze s"] = time.perf_counter() - started
    rows, parity_rows = [], []
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-gpu-bench-") as scratch:
        log("compiling AOTInductor fp16 (dynamic batch)")
        started = time.perf_counter()
        aoti = aoti_fp16(half, example, max(batches), Path(scratch))
        builds["AOTInductor fp16 compile + load s"] = time.perf_counter() - started
        runners = {
            "eager fp32": fp32,
            "eager fp16 channels_last": half,
            "TorchScript fp16": ts,
            "AOTInductor fp16": aoti,
        }
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
            with torch.inference_mode():
                reference = fp32(x)
                for label, fn in runners.items():
                    if label != "eager fp32":
                        parity_rows.append({"batch": batch, "runner": label, **parity(reference, fn(x))})

            def call(fn, x=x) -> None:
                with torch.inference_mode():
                    fn(x)
                synchronize(device)

            log(f"inference at batch {batch}: {', '.join(runners)}")
            reset_peak(device)
            samples = interleaved(
                {label: (lambda fn=fn: call(fn)) for label, fn in runners.items()}, budget, items=batch
            )
            peak = peak_memory_mb(device)
            for label, s in samples.items():
                rows.append({"batch": batch, "runner": label, **s.to_dict(), "peak_memory_mb_all_runners": peak})
            del x
    return rows, parity_rows, builds


def method_lines(arch: str, size: int, device: torch.device, threads: int, train_batch: int, train: dict) -> list[str]:
    where = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {threads} thread(s)"
    memory = (
        "torch.cuda.max_memory_allocated per phase." if device.type == "cuda" else "the process's peak RSS (VmHWM)."
    )
    return [
        f"{arch} with seeded random weights, {size}x{size} inputs, {device.type}{where}.",
        f"Training: `train.engine.train_step`, bf16 autocast + channels_last, batch {train_batch} of synthetic uint8 "
        f"images; {train['calls']} timed steps after warm-up, images/s = batch / median step.",
        "Inference: device-resident float32 batches; all four runners of a batch timed in the same interleaved rounds "
        "(images/s = batch / median call); fp16 runners take and return float32.",
        "Parity: fp16 runner logits against eager fp32 on the same random batch. Peak memory: " + memory,
    ]


def result_tables(
    train_batch: int, train: dict, rows: list[dict], parity_rows: list[dict], builds: dict
) -> list[Table]:
    training = Table(
        "Training (bf16 autocast, channels_last)",
        ["batch", "images/s", "ms/step", "steps", "spread (IQR/median)", "peak memory MiB"],
        [
            [
                train_batch,
                train["items_per_s"],
                1e3 * train["median_s"],
                train["calls"],
                f"{train['iqr_over_median']:.1%}",
                train["peak_memory_mb"],
            ]
        ],
    )
    inference = Table(
        "Inference",
        [
            "runner",
            "batch",
            "images/s",
            "p50 ms",
            "calls",
            "spread (IQR/median)",
            "peak memory MiB (batch, all runners)",
        ],
        [
            [
                r["runner"],
                r["batch"],
                r["items_per_s"],
                r["p50_ms"],
                r["calls"],
                f"{r['iqr_over_median']:.1%}",
                r["peak_memory_mb_all_runners"],
            ]
            for r in rows
        ],
    )
    fp16_parity = Table(
        "FP16 parity against eager fp32",
        ["runner", "batch", "min cosine", "max |diff|", "top-1 agreement"],
        [
            [
                p["runner"],
                p["batch"],
                f"{p['min_cosine']:.5f}",
                f"{p['max_abs_diff']:.2e}",
                f"{p['top1_agreement']:.1%}",
            ]
            for p in parity_rows
        ],
    )
    return [
        training,
        inference,
        fp16_parity,
        Table("Build times", ["step", "seconds"], [[k, v] for k, v in builds.items()]),
    ]


def h100_verdicts(train: dict, rows: list[dict]) -> list[Verdict]:
    verdicts = [
        Verdict(
            f"AMP training >= {TRAIN_TARGET:,.0f} img/s (H100-class)",
            f"{train['items_per_s']:,.0f} img/s",
            train["items_per_s"] >= TRAIN_TARGET,
        )
    ]
    best = max(
        (r for r in rows if r["batch"] == 256 and "fp16" in r["runner"]), key=lambda r: r["items_per_s"], default=None
    )
    if best:
        verdicts.append(
            Verdict(
                f"FP16 inference >= {INFER_TARGET:,.0f} img/s at batch 256 (H100-class)",
                f"{best['items_per_s']:,.0f} img/s ({best['runner']})",
                best["items_per_s"] >= INFER_TARGET,
            )
        )
    return verdicts
