"""Accuracy parity: does an artifact compute what the eager PyTorch model computes?

Each artifact's logits are compared with eager PyTorch's on a parity set of real images (the
checkpoint's own validation data, or `--parity-data DIR`), at batch 1 and at a larger batch, since
kernels, padding and fusions differ with the batch size. Random inputs are the last resort: a
classifier's logits on noise say little about its logits on images.

The top-1 agreement rate is judged on the whole set at the larger batch. Batch 1 runs only the first
`BATCH1_SAMPLES` images (one forward pass each), too few to measure a rate: 99% of 32 allows no flip,
so one near-tie among them would decide the gate. There the artifact's decisions must instead match its
own larger-batch decisions on the same images (a batch-size-dependent kernel bug shows up as a
mismatch), while its logits are still held to the cosine and allclose bounds against eager PyTorch.

Reduced-precision artifacts (int8, bf16, fp16) pass a second gate before anything picks them by default:
their labelled top-1 accuracy may be at most `max_top1_drop` below eager fp32's, measured on at least
`min_labelled` labelled images. Checked on random inputs or too few labelled images, such an artifact
can still pass parity (and be served when named), but its `default_use` says it is not qualified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models import Checkpoint, PreprocessSpec, eval_resize_crop, normalize_batch
from models.errors import first_line

from .manifest import ExportError
from .runners import Runner

DEFAULT_PARITY_SAMPLES = 512  # >= REDUCED_PRECISION_MIN_LABELLED, so the accuracy gate can be judged
BATCH1_SAMPLES = 32  # batch 1 runs one forward pass per image; 32 of them cover the batch-1 kernels


@dataclass(frozen=True)
class Thresholds:
    """The gate an artifact must pass. None disables a check."""

    min_top1_agreement: float
    rtol: float | None = None  # allclose(candidate, reference, rtol, atol) on every logit
    atol: float | None = None
    min_cosine: float | None = None  # worst per-image cosine similarity of the logit vectors
    # Reduced precision: labelled top-1 at most this far (a fraction) below eager fp32's, judged on at
    # least `min_labelled` labelled images; fewer, or random inputs, and it is not fit for default use.
    max_top1_drop: float | None = None
    min_labelled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# fp32 artifacts: the same arithmetic up to summation order. atol is 1e-4, not 1e-5: logits near 0 get
# no help from rtol, and reordered fp32 sums (ONNX Runtime, TorchScript + MKLDNN) differ by a few 1e-5
# there on ImageNet-sized models; a real bug moves logits by 1e-2 and more, so the gate stays sharp.
FP32_THRESHOLDS = Thresholds(min_top1_agreement=1.0, rtol=1e-3, atol=1e-4)
# What reduced precision may cost before it is used without being asked for: half a point of top-1,
# on enough labelled images (300) that half a point is more than one or two images' luck.
REDUCED_PRECISION_MAX_TOP1_DROP = 0.005
REDUCED_PRECISION_MIN_LABELLED = 300
# FP16 engines and bf16/fp16 packages: Polygraphy's style of gate, on the decision and on the direction
# of the logit vector, plus the accuracy gate.
FP16_THRESHOLDS = Thresholds(
    min_top1_agreement=0.99,
    min_cosine=0.997,
    max_top1_drop=REDUCED_PRECISION_MAX_TOP1_DROP,
    min_labelled=REDUCED_PRECISION_MIN_LABELLED,
)
# INT8 artifacts: quantization moves logits by a few percent, so the cosine bound is looser than FP16's;
# the decision gate is not: 99% agreement over the parity set and the accuracy gate, so
# an int8 model that flips one prediction in twenty is not served unless someone chose it. A barely
# trained model, all near-ties, fails it.
INT8_THRESHOLDS = Thresholds(
    min_top1_agreement=0.99,
    min_cosine=0.98,
    max_top1_drop=REDUCED_PRECISION_MAX_TOP1_DROP,
    min_labelled=REDUCED_PRECISION_MIN_LABELLED,
)


@dataclass
class ParitySet:
    images: torch.Tensor  # float32 NCHW, normalised exactly as the model expects
    labels: torch.Tensor | None  # int64 class indices when the data has them
    description: str  # goes into the manifest: where the images came from
    random: bool = False


def evenly_spaced(total: int, count: int) -> list[int]:
    """Up to `count` indices spread over the whole dataset (datasets are often sorted by class)."""
    if total <= count:
        return list(range(total))
    return torch.linspace(0, total - 1, count).round().long().unique().tolist()


def stack_dataset(dataset: Any, count: int, preprocess: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in evenly_spaced(len(dataset), count)]
    if not items:
        raise ExportError("the parity data set is empty")
    images = torch.stack([torch.as_tensor(image) for image, _ in items])
    labels = torch.tensor([int(label) for _, label in items])
    return normalize_batch(images, preprocess), labels


def validation_parity_set(ckpt: Checkpoint, count: int) -> ParitySet:
    """The checkpoint's own validation images, rebuilt from its training config."""
    from imagedata.kinds import build_validation_set  # only this path reads datasets

    config = ckpt.config or {}
    dataset = build_validation_set(config, ckpt.preprocess)
    images, labels = stack_dataset(dataset, count, ckpt.preprocess)
    where = config.get("data_dir") or "built in"
    return ParitySet(images, labels, f"validation split of {config.get('data')!r} ({where}): {len(images)} images")


def folder_dataset(root: str | Path, preprocess: PreprocessSpec, flag: str) -> Any:
    """An ImageFolder tree (root/<class>/<image>) of any images PIL reads, as resized and cropped uint8."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{flag} {root}: no such directory (expected an ImageFolder tree root/<class>/<image>)")
    try:
        return ImageFolder(str(root), transform=eval_resize_crop(preprocess))
    except (FileNotFoundError, OSError) as e:
        raise ExportError(f"{flag} {root}: {e} (expected an ImageFolder tree root/<class>/<image>)") from e


def folder_parity_set(root: str | Path, preprocess: PreprocessSpec, count: int) -> ParitySet:
    images, labels = stack_dataset(folder_dataset(root, preprocess, "--parity-data"), count, preprocess)
    return ParitySet(images, labels, f"image folder {root}: {len(images)} images")


def random_parity_set(preprocess: PreprocessSpec, count: int, seed: int = 0) -> ParitySet:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, 3, preprocess.input_size, preprocess.input_size), generator=generator)
    images = normalize_batch(pixels.to(torch.uint8), preprocess)
    return ParitySet(images, None, f"RANDOM pixels (seed {seed}): {count} images", random=True)


def load_parity_set(
    ckpt: Checkpoint,
    parity_data: str | Path | None = None,
    count: int = DEFAULT_PARITY_SAMPLES,
    log: Callable[[str], None] = print,
) -> ParitySet:
    """--parity-data when given, else the checkpoint's validation data, else random pixels (said loudly)."""
    if parity_data is not None:
        return folder_parity_set(parity_data, ckpt.preprocess, count)
    try:
        return validation_parity_set(ckpt, count)
    except (ImportError, FileNotFoundError, ValueError, KeyError, NotImplementedError) as e:
        log(f"cannot load the checkpoint's validation data ({first_line(e)})")
    parity_set = random_parity_set(ckpt.preprocess, count)
    log(
        "WARNING: parity is checked on RANDOM inputs, which prove little for a classifier; "
        "pass --parity-data DIR (an ImageFolder of real images) for a meaningful check"
    )
    return parity_set


def run_in_batches(runner: Runner, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([runner.predict(chunk) for chunk in images.split(batch_size)])


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, thresholds: Thresholds) -> dict[str, Any]:
    reference, candidate = reference.double(), candidate.double()
    diff = (candidate - reference).abs()
    metrics = {
        "samples": reference.shape[0],
        "top1_agreement": (candidate.argmax(1) == reference.argmax(1)).double().mean().item(),
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "min_cosine": F.cosine_similarity(candidate, reference, dim=1).min().item(),
    }
    if thresholds.rtol is not None and thresholds.atol is not None:
        # How far each logit is from the allclose bound; <= 1 everywhere means allclose holds.
        bound = thresholds.atol + thresholds.rtol * reference.abs()
        metrics["allclose"] = bool(torch.allclose(candidate, reference, rtol=thresholds.rtol, atol=thresholds.atol))
        metrics["max_diff_over_tolerance"] = (diff / bound).max().item()
    return metrics


def gate_failures(metrics: dict[str, Any], thresholds: Thresholds, decisions: str = "top1_agreement") -> list[str]:
    """`decisions`: the metric the top-1 threshold applies to (`top1_agreement`, with the reference, or
    `top1_same_as_larger_batch`, with the artifact's own larger-batch decisions: see the module's doc)."""
    failures = []
    if metrics[decisions] < thresholds.min_top1_agreement:
        what = "top-1 agreement" if decisions == "top1_agreement" else "top-1 agreement with its own larger batch"
        failures.append(f"{what} {metrics[decisions]:.2%} < {thresholds.min_top1_agreement:.2%}")
    if "allclose" in metrics and not metrics["allclose"]:
        failures.append(
            f"logits not allclose(rtol={thresholds.rtol:g}, atol={thresholds.atol:g}): max |diff| "
            f"{metrics['max_abs_diff']:.3g}, worst logit at {metrics['max_diff_over_tolerance']:.3g}x its tolerance"
        )
    if thresholds.min_cosine is not None and metrics["min_cosine"] < thresholds.min_cosine:
        failures.append(f"cosine similarity {metrics['min_cosine']:.5f} < {thresholds.min_cosine}")
    return failures


def check_parity(
    reference: Runner,
    candidate: Runner,
    parity_set: ParitySet,
    thresholds: Thresholds,
    batch_size: int,
    reference_cache: dict[tuple[int, int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The manifest's `parity` block: metrics at batch 1 and at `batch_size`, worst case first
    (`top1_agreement` there is the whole set's, the rate the gate judges).

    `reference_cache` (one dict per reference runner and parity set) keeps the eager logits between
    artifacts, so the reference runs once per batch size, not once per artifact.
    """
    reference_cache = {} if reference_cache is None else reference_cache
    runs, decisions = {}, {}
    for size, images in ((1, parity_set.images[:BATCH1_SAMPLES]), (batch_size, parity_set.images)):
        key = (size, len(images))
        if key not in reference_cache:
            reference_cache[key] = run_in_batches(reference, images, size)
        expected = reference_cache[key]
        actual = run_in_batches(candidate, images, size)
        decisions[size] = actual.argmax(1)
        runs[str(size)] = compare_logits(expected, actual, thresholds)
        if parity_set.labels is not None:
            labels = parity_set.labels[: len(images)]
            runs[str(size)]["reference_top1"] = (expected.argmax(1) == labels).double().mean().item()
            runs[str(size)]["artifact_top1"] = (actual.argmax(1) == labels).double().mean().item()
    failures = [f"batch {batch_size}: {failure}" for failure in gate_failures(runs[str(batch_size)], thresholds)]
    if batch_size != 1:
        batch1 = runs["1"]
        same = decisions[1] == decisions[batch_size][: len(decisions[1])]
        batch1["top1_same_as_larger_batch"] = same.double().mean().item()
        failures[:0] = [f"batch 1: {f}" for f in gate_failures(batch1, thresholds, "top1_same_as_larger_batch")]
    default_use = accuracy_gate(runs[str(batch_size)], parity_set, thresholds)
    if default_use.get("top1_drop") is not None and default_use["top1_drop"] > thresholds.max_top1_drop:
        failures.append(default_use["reason"])
    default_use["qualified"] = default_use["qualified"] and not failures
    return {
        "passed": not failures,
        "failures": failures,
        "metrics": {**worst_case(list(runs.values())), "by_batch_size": runs},
        "default_use": default_use,
        "thresholds": thresholds.to_dict(),
        "data": parity_set.description,
        "device": candidate.device,
    }


def accuracy_gate(run: dict[str, Any], parity_set: ParitySet, thresholds: Thresholds) -> dict[str, Any]:
    """The `default_use` block: whether the artifact may be picked without being asked for, and why.

    fp32 gates (no `max_top1_drop`) qualify with parity. Reduced precision qualifies only on enough
    labelled images, with top-1 at most `max_top1_drop` below eager fp32's on all of them.
    """
    if thresholds.max_top1_drop is None:
        return {"qualified": True, "reason": "fp32: parity is the gate"}
    if parity_set.random or parity_set.labels is None or "artifact_top1" not in run:
        return {
            "qualified": False,
            "top1_drop": None,
            "reason": "checked without labelled images (random inputs "
            "prove nothing about accuracy); pass --parity-data DIR of labelled images to qualify it",
        }
    drop = run["reference_top1"] - run["artifact_top1"]
    measured = {
        "labelled_samples": run["samples"],
        "reference_top1": run["reference_top1"],
        "artifact_top1": run["artifact_top1"],
        "top1_drop": drop,
    }
    if drop > thresholds.max_top1_drop:
        reason = (
            f"labelled top-1 {run['artifact_top1']:.2%} is {drop * 100:.2f} points below fp32's "
            f"{run['reference_top1']:.2%} (at most {thresholds.max_top1_drop * 100:g} allowed)"
        )
        return {**measured, "qualified": False, "reason": reason}
    if run["samples"] < thresholds.min_labelled:
        return {
            **measured,
            "qualified": False,
            "reason": f"only {run['samples']} labelled images, "
            f"{thresholds.min_labelled} are needed to judge its accuracy cost; pass --parity-data DIR "
            f"with more, or --parity-samples {thresholds.min_labelled}",
        }
    return {
        **measured,
        "qualified": True,
        "reason": f"top-1 {run['artifact_top1']:.2%} against fp32's {run['reference_top1']:.2%} on "
        f"{run['samples']} labelled images",
    }


def worst_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst logit metrics over the runs; `top1_agreement` is the last (whole set's) run's."""
    worst = {
        "top1_agreement": runs[-1]["top1_agreement"],
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "mean_abs_diff": max(r["mean_abs_diff"] for r in runs),
        "min_cosine": min(r["min_cosine"] for r in runs),
    }
    if all("allclose" in r for r in runs):
        worst["allclose"] = all(r["allclose"] for r in runs)
    return worst
