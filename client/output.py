"""How results are shown: a table per image for people, one JSON document for machines.

Remote and `--local` results go through the same functions, so their output is identical in form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

BAR_WIDTH = 20
MAX_LABEL_WIDTH = 60  # a longer label (a server's, not ours) is cut with "..." in the table


@dataclass
class ImageResult:
    image: str
    predictions: list[tuple[str, float]] | None = None  # (label, probability), highest first
    error: str | None = None
    explanation: str | None = None  # --explain: the Grad-CAM overlay's path

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.ok:
            return {
                "image": self.image,
                # null for NaN/infinity from a server: standard JSON has no such numbers
                "predictions": [
                    {"label": label, "probability": prob if math.isfinite(prob) else None}
                    for label, prob in self.predictions
                ],
                **({"explanation": self.explanation} if self.explanation else {}),
            }
        return {"image": self.image, "error": self.error}


def format_table(result: ImageResult) -> str:
    """The image's path, then one line per class: rank, label, probability and a bar."""
    if not result.ok:
        return f"{result.image}\n  error: {result.error}\n"
    labels = [printable_label(label) for label, _ in result.predictions]
    width = max([len("class")] + [len(label) for label in labels])
    lines = [result.image, f"  {'rank':>4}  {'class':<{width}}  {'probability':>11}"]
    for rank, (label, (_, prob)) in enumerate(zip(labels, result.predictions), start=1):
        # Whatever a server sends (NaN, infinity, a value outside [0, 1]) is shown, never fatal.
        bar = "#" * round(min(max(prob, 0.0), 1.0) * BAR_WIDTH) if math.isfinite(prob) else ""
        lines.append(f"  {rank:>4}  {label:<{width}}  {prob:>11.2%}  {bar}".rstrip())
    if result.explanation:
        lines.append(f"  Grad-CAM: {result.explanation}")
    return "\n".join(lines) + "\n"


def printable_label(label: str) -> str:
    """A label on one table line: control characters escaped, at most MAX_LABEL_WIDTH characters."""
    text = label if label.isprintable() else label.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_LABEL_WIDTH else text[: MAX_LABEL_WIDTH - 3] + "..."


def format_json(results: list[ImageResult], *, source: dict) -> str:
    """One document: where the predictions came from (`source`) and one entry per image, in order."""
    return json.dumps({**source, "results": [r.to_dict() for r in results]}, indent=2)
