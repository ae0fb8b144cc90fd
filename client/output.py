"""How results are shown: a table per image for people, one JSON document for machines.

Remote and `--local` results go through the same functions, so their output is identical in form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

BAR_WIDTH = 20


@dataclass
class ImageResult:
    image: str
    predictions: list[tuple[str, float]] | None = None  # (label, probability), highest first
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.ok:
            return {
                "image": self.image,
                "predictions": [{"label": label, "probability": prob} for label, prob in self.predictions],
            }
        return {"image": self.image, "error": self.error}


def format_table(result: ImageResult) -> str:
    """The image's path, then one line per class: rank, label, probability and a bar."""
    if not result.ok:
        return f"{result.image}\n  error: {result.error}\n"
    width = max([len("class")] + [len(label) for label, _ in result.predictions])
    lines = [result.image, f"  {'rank':>4}  {'class':<{width}}  {'probability':>11}"]
    for rank, (label, prob) in enumerate(result.predictions, start=1):
        bar = "#" * round(prob * BAR_WIDTH)
        lines.append(f"  {rank:>4}  {label:<{width}}  {prob:>11.2%}  {bar}".rstrip())
    return "\n".join(lines) + "\n"


def format_json(results: list[ImageResult], *, source: dict) -> str:
    """One document: where the predictions came from (`source`) and one entry per image, in order."""
    return json.dumps({**source, "results": [r.to_dict() for r in results]}, indent=2)
