"""`python -m benchmarks train`: our training step against a bare PyTorch loop, same model, batch, data and precision.

"Ours" is `train.engine.train_step` with `StepParts` assembled from `train`'s own pieces
(`train.optim.build_optimizer` / `build_scheduler` on `python -m train`'s default config: SGD with
momentum and weight decay, per-step cosine LR; EMA and mixup off, as the bare loop has neither). It
takes the uint8 batch a loader yields (in pinned memory on CUDA, as train's loaders pin it) and
normalises it itself. The bare loop is the textbook one:
`zero_grad`, forward under the same autocast, cross-entropy, `backward`, `SGD.step`, on the same
batch already normalised to float (so it does strictly less work). Both networks start from the same
weights and run the same precision and memory format; each configuration times both in the same
interleaved rounds, at least `--steps` of each.

Peak memory is each side's alone: after the timings, each side of a configuration is rebuilt in a fresh
(spawned, not forked) Python process that runs a few steps and reports its own peak RSS (VmHWM) and,
on CUDA, `torch.cuda.max_memory_allocated`. Both children import the same modules, so the
difference between the two is the difference between the two steps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import psutil
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import create_model, get_model_spec, normalize_batch
from train.config import TrainConfig, resolve_config
from train.engine import StepParts, train_step
from train.optim import build_optimizer, build_scheduler

from .ceiling import CeilingProbe
from .errors import BenchmarkError, check_archs, positive_int
from .report import Report, Table, Verdict, cpu_features
from .timing import Budget, interleaved, primer

TARGET = 0.97  # ours / bare images per second ...
TARGET_STEPS = 30  # ... over at least this many timed steps per side
MEMORY_STEPS = 3  # the first step allocates gradients and momentum buffers; later ones hold them with the activations
SIDES = ("ours", "bare")


@dataclass(frozen=True)
class Variant:
    name: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp16" if self.amp_dtype == torch.float16 else "fp32"


VARIANTS = {
    "fp32": Variant("fp32"),
    "bf16": Variant("bf16 autocast", amp_dtype=torch.bfloat16),
    "channels_last": Variant("fp32 channels_last", channels_last=True),
    "bf16_channels_last": Variant("bf16 autocast channels_last", amp_dtype=torch.bfloat16, channels_last=True),
    "compile": Variant("fp32 torch.compile", compile=True),
}
CUDA_VARIANTS = ("bf16_channels_last",)  # the GPU number the issue asks for: ResNet-50 AMP bf16 channels_last
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_emulates_bf16() -> bool:
    """An x86 CPU without bf16 instructions, where bf16 autocast runs on emulated kernels (an AVX2 Zen 3:
    a ResNet-18 training step at batch 16 took 39 s in bf16 against 2.9 s in fp32)."""
    features = cpu_features()
    return "avx2" in features and not any(flag in features for flag in NATIVE_BF16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Setup:
    """What both loops of a run share. Picklable, so that a child process can rebuild one side from it."""

    arch: str
    batch: int
    size: int
    device_name: str
    config: TrainConfig
    threads: int

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded uint8 batch and its labels, as a loader yields them (pinned on CUDA, as train's loaders pin it)."""
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (self.batch, 3, self.size, self.size), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, get_model_spec(self.arch).default_num_classes, (self.batch,), generator=generator)
        if self.device.type == "cuda":  # ours copies them asynchronously, as in training
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def network(self) -> nn.Module:
        torch.manual_seed(0)
        return create_model(self.arch, num_classes=get_model_spec(self.arch).default_num_classes)

    def step(
        self, side: str, variant: Variant, network: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> Callable[[], None]:
        """One side's step, on its own copy of the network."""
        if side == "ours":
            return our_step(network, variant, self.config, self.device, images, labels)
        floats = normalize_batch(images, get_model_spec(self.arch).preprocess)
        return bare_step(network, variant, self.config, self.device, floats, labels)


def peak_rss_mb() -> float:
    """This process image's peak resident set (Linux's VmHWM). Not `ru_maxrss`: in a child started by
    fork + exec that also counts the forked copy of the parent, so it is at least the parent's RSS."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        raise BenchmarkError("peak memory needs Linux's /proc/self/status (VmHWM)") from None
    return int(line.split()[1]) / 1024  # kB


def side_peak_memory(setup: Setup, variant: Variant, side: str) -> dict:
    """Runs in a fresh process: builds one side alone, runs MEMORY_STEPS steps, returns its peak memory in MiB."""
    torch.set_num_threads(setup.threads)
    images, labels = setup.data()
    step = setup.step(side, variant, setup.network(), images, labels)
    before = psutil.Process().memory_info().rss
    for _ in range(MEMORY_STEPS):
        step()
    result = {
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_steps_mb": before / 2**20,
        "memory_steps": MEMORY_STEPS,
    }
    if setup.device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(setup.device) / 2**20
    return result


def peak_memory(setup: Setup, variant: Variant) -> dict[str, dict]:
    """Each side's `side_peak_memory`, in a process of its own (spawned: a forked child starts with the
    parent's peak RSS). The two run at the same time: it costs their speed, not their memory."""
    with contextlib.ExitStack() as stack:
        pools = {side: stack.enter_context(ProcessPoolExecutor(1, mp_context=get_context("spawn"))) for side in SIDES}
        futures = {side: pool.submit(side_peak_memory, setup, variant, side) for side, pool in pools.items()}
        return {side: future.result() for side, future in futures.items()}


def our_step(
    network: nn.Module,
    variant: Variant,
    config: TrainConfig,
    device: torch.device,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> Callable[[], None]:
    network = network.to(device)
    if variant.channels_last:
        network.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(network, config)
    parts = StepParts(
        model=torch.compile(network) if variant.compile else network,
        network=network,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        preprocess=get_model_spec(config.arch).preprocess,
        device=device,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch=1000),
        amp_dtype=variant.amp_dtype,
        channels_last=variant.channels_last,
    )
    network.train()

    def step() -> None:
        train_step(parts, images, labels)
        synchronize(device)

    return step


def bare_step(
    network: nn.Module,
    variant: Variant,
    config: TrainConfig,
    device: torch.device,
    x: torch.Tensor,
    labels: torch.Tensor,
) -> Callable[[], None]:
    network = network.to(device)
    if variant.channels_last:
        network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model = torch.compile(network) if variant.compile else network
    optimizer = torch.optim.SGD(
        network.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    x, y = x.to(device), labels.to(device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=variant.amp_dtype)) if variant.amp_dtype else contextlib.nullcontext
    )
    network.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        synchronize(device)

    return step


def training_flops(arch: str, num_classes: int, input_size: int) -> int:
    """FLOPs (2 x MACs) of forward + backward for one image (convolutions, classifier)."""
    model = create_model(arch, num_classes=num_classes).train()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, input_size, input_size)).sum().backward()
    return counter.get_total_flops() // 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", help="network (default: resnet18; --quick: resnet20)")
    parser.add_argument("--batch", type=positive_int, help="images per step (default: 16; --quick: 4)")
    parser.add_argument(
        "--image-size", type=positive_int, help="input size (default: the architecture's, 224 for resnet18/50)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="configurations (default on CPU: fp32 bf16 channels_last compile; --quick: fp32 bf16; "
        "on CUDA also bf16_channels_last)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: %(default)s")
    parser.add_argument(
        "--steps",
        type=positive_int,
        help=f"timed steps of each loop per configuration, at least (default: {TARGET_STEPS}, what the target "
        "asks for; --quick: 2)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=25.0,
        help="time budget per configuration, shared by both loops; more steps are timed while it lasts, never "
        "fewer than --steps (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> Report:
    threads = args.threads
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: no CUDA device is visible")
    arch = args.arch or ("resnet20" if args.quick else "resnet18")
    check_archs([arch])
    batch = args.batch or (4 if args.quick else 16)
    spec = get_model_spec(arch)
    size = args.image_size or spec.preprocess.input_size
    names, emulated_bf16 = variant_names(args, device)
    steps = args.steps or (2 if args.quick else TARGET_STEPS)
    budget = (
        Budget(warmup=1, min_rounds=steps, max_rounds=steps, seconds=0)
        if args.quick
        else Budget(warmup=2, min_rounds=steps, max_rounds=max(steps, Budget.max_rounds), seconds=args.seconds)
    )
    config = resolve_config({"arch": arch, "data": "synthetic", "batch_size": batch})
    setup = Setup(arch, batch, size, device.type, config, threads)

    report = Report("train", "Training step: ours vs a bare PyTorch loop", threads=threads, quick=args.quick)
    if emulated_bf16:
        report.notes.append(
            f"Not timed by default: {', '.join(VARIANTS[n].name for n in emulated_bf16)}. This CPU has none of "
            f"{', '.join(NATIVE_BF16)}, so bf16 runs on emulated kernels (a ResNet-18 step 13x slower than "
            "fp32 on an AVX2 Zen 3): it would take minutes a step and no one trains in bf16 on such a CPU. "
            "`--variants bf16` times it anyway."
        )
    precisions = tuple(dict.fromkeys(VARIANTS[n].precision for n in names))
    # The ceilings are the CPU's.
    ceiling = CeilingProbe(precisions, threads, args.quick) if device.type == "cpu" else None
    if ceiling:
        args.log(f"probing the {' and '.join(precisions)} GEMM kernels at {threads} thread(s) for the ceiling")
        ceiling.select()
    flops = training_flops(arch, spec.default_num_classes, size)
    report.data.update(flops_per_image=flops, arch=arch, batch=batch, image_size=size, steps=steps)
    inputs = (*setup.data(), setup.network())
    rows = [time_variant(setup, VARIANTS[name], inputs, budget, ceiling, flops, args.log) for name in names]
    for row in rows:
        report.verdicts.append(
            Verdict(
                f"ours >= {TARGET:g} x bare over >= {TARGET_STEPS} steps each ({row['configuration']})",
                f"{row['ratio']:.3f} over {row['steps_timed']} steps each",
                row["ratio"] >= TARGET and row["steps_timed"] >= TARGET_STEPS,
            )
        )
    if ceiling:
        report.data["ceiling"] = ceiling.to_dict()
    report.method = method_lines(setup, spec.default_num_classes, steps, flops) + [
        f"{ceiling.describe()}." if ceiling else "On CUDA, no fraction of a GEMM ceiling (the ceilings are the CPU's).",
    ]
    report.tables += result_tables(rows, device.type)
    report.data["rows"] = rows
    return report


def variant_names(args: argparse.Namespace, device: torch.device) -> tuple[list[str], list[str]]:
    """The configurations to time, and the bf16 ones left out because this CPU only emulates bf16."""
    names = args.variants or (["fp32", "bf16"] if args.quick else ["fp32", "bf16", "channels_last", "compile"])
    if device.type == "cuda" and not args.variants:
        names += [n for n in CUDA_VARIANTS if n not in names]
    emulated_bf16 = []
    if device.type == "cpu" and not args.variants and cpu_emulates_bf16():
        emulated_bf16 = [n for n in names if VARIANTS[n].precision == "bf16"]
        names = [n for n in names if n not in emulated_bf16]
    return names, emulated_bf16


def time_variant(setup: Setup, variant, inputs: tuple, budget: Budget, ceiling, flops: float, log) -> dict:
    """Our step and the bare loop of one configuration, interleaved, then each side's peak memory alone.

    `inputs`: (images, labels, initial network), shared by every configuration so all start alike."""
    images, labels, initial = inputs
    log(f"{variant.name}: building both loops{' (compiling during warm-up)' if variant.compile else ''}")
    candidates = {side: setup.step(side, variant, copy.deepcopy(initial), images, labels) for side in SIDES}
    gemm = ceiling.candidates((variant.precision,)) if ceiling else {}
    # Primed, see CeilingProbe; training steps are long and all in PyTorch, so only the GEMM needs it.
    samples = interleaved(
        {**candidates, **gemm}, budget, items=setup.batch, before={name: primer(call) for name, call in gemm.items()}
    )
    ours, bare = samples["ours"], samples["bare"]
    cpu_ceiling = ceiling.ceilings(samples)[variant.precision] if ceiling else None
    del candidates  # free this configuration's networks before the memory children start
    log(f"{variant.name}: peak memory of each loop alone, in two fresh processes")
    memory = peak_memory(setup, variant)
    return {
        "configuration": variant.name,
        "precision": variant.precision,
        "ours": {**ours.to_dict(), **memory["ours"]},
        "bare": {**bare.to_dict(), **memory["bare"]},
        "ratio": ours.items_per_s / bare.items_per_s,
        "steps_timed": min(len(ours.seconds), len(bare.seconds)),
        "ceiling_gflops": cpu_ceiling,
        "ceiling_fraction": flops * ours.items_per_s / (cpu_ceiling * 1e9) if cpu_ceiling else None,
    }


def method_lines(setup: Setup, num_classes: int, steps: int, flops: float) -> list[str]:
    return [
        f"{setup.arch}, {num_classes} classes, batch {setup.batch}, {setup.size}x{setup.size} synthetic images "
        f"(seeded random uint8), {setup.device_name}, {setup.threads} thread(s).",
        "Ours: `train.engine.train_step` (normalise on device, autocast, SGD momentum + weight decay with "
        "train.optim's parameter groups, per-step cosine LR). Bare: zero_grad / forward / cross-entropy / "
        "backward / SGD.step on the pre-normalised float batch. Same initial weights.",
        "Both loops of a configuration are timed in the same interleaved rounds after warm-up (for torch.compile "
        f"the warm-up includes compilation), at least {steps} steps each; images/s = batch / median step time; "
        "spread = interquartile range / median of the step times.",
        f"Fraction of ceiling: forward + backward FLOPs ({flops / 1e9:.1f} GFLOP per image, 2 x MACs, "
        "torch.utils.flop_counter) x images/s over the GEMM ceiling of the same precision, timed in the "
        "same rounds as the two loops.",
        f"Peak memory: after the timings, each side alone in a fresh spawned Python process (same imports, same "
        f"batch and weights) runs {MEMORY_STEPS} steps; peak RSS is that process's VmHWM (interpreter, "
        "libraries, model, optimizer state and steps included; the two children run at the same time)"
        + (", peak CUDA memory its torch.cuda.max_memory_allocated." if setup.device_name == "cuda" else "."),
    ]


def result_tables(rows: list[dict], device_type: str) -> list[Table]:
    table = Table(
        "Training images/s",
        [
            "configuration",
            "ours img/s",
            "bare img/s",
            "ours / bare",
            "ours ms/step",
            "bare ms/step",
            "spread ours / bare",
            "steps each",
            "GEMM ceiling GFLOP/s (same rounds)",
            "% of GEMM ceiling (ours)",
        ],
    )
    memory_columns = ["ours peak RSS MiB", "bare peak RSS MiB", "ours / bare RSS", "RSS before the steps ours / bare"]
    if device_type == "cuda":
        memory_columns += ["ours peak CUDA MiB", "bare peak CUDA MiB"]
    memory_table = Table(
        "Training peak memory (each side alone in a fresh process)", ["configuration", *memory_columns]
    )
    for row in rows:
        ours, bare = row["ours"], row["bare"]
        table.add(
            row["configuration"],
            ours["items_per_s"],
            bare["items_per_s"],
            f"{row['ratio']:.3f}",
            ours["median_s"] * 1e3,
            bare["median_s"] * 1e3,
            f"{100 * ours['iqr_over_median']:.1f}% / {100 * bare['iqr_over_median']:.1f}%",
            ours["calls"],
            row["ceiling_gflops"],
            None if row["ceiling_fraction"] is None else f"{100 * row['ceiling_fraction']:.0f}%",
        )
        cuda = [ours["peak_cuda_mb"], bare["peak_cuda_mb"]] if device_type == "cuda" else []
        ratio_rss = f"{ours['peak_rss_mb'] / bare['peak_rss_mb']:.3f}"
        before = f"{ours['rss_before_steps_mb']:,.0f} / {bare['rss_before_steps_mb']:,.0f}"
        memory_table.add(row["configuration"], ours["peak_rss_mb"], bare["peak_rss_mb"], ratio_rss, before, *cuda)
    return [table, memory_table]
