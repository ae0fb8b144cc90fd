"""Accuracy of a model on labelled images: top-1/top-5, per-class accuracy, a confusion matrix.

One implementation for every source of predictions: `python -m train --evaluate` (a checkpoint or a
torchvision/timm weight file), `python -m client evaluate --local` (an export artifact) and
`python -m client evaluate --url` (the running server). Each hands over, per image, the ranked class
names it predicted and the true class name, so the three are measured exactly alike.

    report = evaluate_predictions(ranked_names, true_names, class_names, source="resnet20 checkpoint")
    report.write(out_dir)          # evaluation.json and confusion.png
    print(report.summary())
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsutil.atomic import atomic_path, atomic_write_text

TOP_K = 5
LOCAL_CHUNK = 64  # images decoded and run together (one bad image retries its chunk one by one)


class EvaluationError(ValueError):
    """Labels that do not fit the model (unknown class names, no images); the message says which."""


@dataclass
class Collected:
    ranked: list[list[str]] = field(default_factory=list)  # predicted class names, most probable first
    truth: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> why it could not be classified
    fewest_returned: int | None = None  # the shortest top-k list a prediction came back with


@dataclass
class EvaluationReport:
    source: str  # what was evaluated (checkpoint path, export + format, server URL + model)
    data: str  # which images
    class_names: list[str]
    samples: int
    top1: float  # percent
    top5: float  # percent; top-k with k = min(5, classes)
    per_class: dict[str, float | None]  # percent, None for a class with no images
    confusion: list[list[int]]  # [true class][predicted class] counts
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        worst = sorted(((acc, name) for name, acc in self.per_class.items() if acc is not None))[:3]
        worst_text = ", ".join(f"{name} {acc:.1f}%" for acc, name in worst)
        return (
            f"{self.source} on {self.data}: {self.samples} images, top-1 {self.top1:.2f}%, "
            f"top-{min(TOP_K, len(self.class_names))} {self.top5:.2f}%; lowest classes: {worst_text}"
        )

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """`evaluation.json` and `confusion.png` in `out_dir` (both written atomically)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = atomic_write_text(out_dir / "evaluation.json", json.dumps(self.to_dict(), indent=2) + "\n")
        png_path = out_dir / "confusion.png"
        plot_confusion(self, png_path)
        return {"json": json_path, "confusion": png_path}


def evaluate_predictions(
    ranked: Sequence[Sequence[str]], truth: Sequence[str], class_names: Sequence[str], *, source: str, data: str
) -> EvaluationReport:
    """`ranked[i]`: image i's predicted class names, most probable first (at least 1, ideally 5);
    `truth[i]`: its true class name, which must be one of the model's `class_names`."""
    if len(ranked) != len(truth):
        raise EvaluationError(f"{len(ranked)} predictions for {len(truth)} labels")
    if not truth:
        raise EvaluationError(f"{data}: no labelled images to evaluate")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(truth) - set(index))
    if unknown:
        raise EvaluationError(
            f"{data}: classes {unknown[:10]} are not among the model's {len(class_names)} classes "
            f"(e.g. {list(class_names)[:5]}); the folder names must be the model's class names"
        )
    k = min(TOP_K, len(class_names))
    confusion = [[0] * len(class_names) for _ in class_names]
    correct, totals, hitsk = Counter(), Counter(truth), 0
    for names, true_name in zip(ranked, truth):
        top = names[0] if names else None
        if top in index:
            confusion[index[true_name]][index[top]] += 1
        correct[true_name] += top == true_name
        hitsk += true_name in list(names)[:k]
    per_class = {name: 100.0 * correct[name] / totals[name] if totals[name] else None for name in class_names}
    n = len(truth)
    return EvaluationReport(
        source=source,
        data=data,
        class_names=list(class_names),
        samples=n,
        top1=100.0 * sum(correct.values()) / n,
        top5=100.0 * hitsk / n,
        per_class=per_class,
        confusion=confusion,
    )


def plot_confusion(report: EvaluationReport, path: Path) -> None:
    """The confusion matrix as a PNG (row-normalised colours, counts written in the cells when they fit)."""
    import matplotlib  # plots only here; the serving path never imports it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array(report.confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(report.class_names)
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), report.class_names, rotation=90)
        ax.set_yticks(range(n), report.class_names)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set(
        xlabel="predicted", ylabel="true", title=f"{report.source}\ntop-1 {report.top1:.2f}% on {report.samples} images"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def collect_local(
    classifier, paths: Sequence[Path], truth: Sequence[str], read: Callable[[Path], bytes] = Path.read_bytes
) -> Collected:
    """Ranked names of image files from a `Classifier`, a chunk at a time; a chunk with a bad image is retried
    image by image so that only the bad one fails (it is listed in `failed`). `read` gives a file's bytes and
    may refuse one with a ValueError (the client's size cap)."""
    from models.imageio import ImageDecodeError  # the remote client's evaluation needs no torch

    out = Collected()

    def keep(path: Path, true_name: str, prediction: list[tuple[str, float]]) -> None:
        out.ranked.append([name for name, _ in prediction])
        out.truth.append(true_name)

    items = list(zip(paths, truth))
    for start in range(0, len(items), LOCAL_CHUNK):
        chunk = items[start : start + LOCAL_CHUNK]
        readable = []
        for path, true_name in chunk:
            try:
                readable.append((path, true_name, read(path)))
            except ValueError as e:
                out.failed[str(path)] = str(e)
            except OSError as e:
                out.failed[str(path)] = f"cannot read the file: {e.strerror or e}"
        try:
            predictions = classifier.classify([data for _, _, data in readable])
        except ImageDecodeError:
            predictions = None
        for i, (path, true_name, data) in enumerate(readable):
            if predictions is not None:
                keep(path, true_name, predictions[i])
                continue
            try:
                (prediction,) = classifier.classify([data])
                keep(path, true_name, prediction)
            except ImageDecodeError as e:
                out.failed[str(path)] = str(e)
    out.fewest_returned = min((len(r) for r in out.ranked), default=None)
    return out
