"""serve/calibrate.py's check on load: each worker measures the image cost on the machine it runs on and
starts its budget slower when that machine is slower than where the cost was recorded."""

from __future__ import annotations

import logging

import pytest

from classify.classifier import Classifier
from serve.budget import ImageCost
from serve.calibrate import SLOWER_WARNING, budget_here, measure

CALL_S = 15.0
PIXELS = 10**8


@pytest.fixture(scope="module")
def classifier(digits_export) -> Classifier:
    return Classifier.from_export(digits_export, fmt="onnx", threads=1, batch_size=4)


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

    def __call__(self, level: int, message: str) -> None:
        self.records.append((level, message))


def start(classifier: Classifier, recorded: ImageCost | None, measure_again: bool = True):
    log = Log()
    budget = budget_here(
        classifier, 4, call_s=CALL_S, max_call_pixels=PIXELS, recorded=recorded, measure_again=measure_again, log=log
    )
    return budget, log.records


def test_measurement_is_positive_and_finite(classifier):
    cost = measure(classifier, 4)
    assert cost.image_s > 0 and cost.megapixel_s > 0
    assert ImageCost.from_dict(cost.to_dict()) == cost


def test_a_machine_slower_than_recorded_starts_the_budget_slowed_down_and_says_so(classifier):
    """A cost recorded on a (pretend) machine a million times faster: calls start slowed down, and the
    worker's log names the factor and what to do."""
    budget, records = start(classifier, ImageCost(image_s=1e-9, megapixel_s=1e-9))
    assert budget.cost == ImageCost(image_s=1e-9, megapixel_s=1e-9)  # the caps keep the archive's figures
    assert budget.slowdown() > 1000
    [(level, message)] = records
    assert level == logging.WARNING and "slower than where the image cost was measured" in message
    assert "python -m serve package" in message


def test_a_machine_as_fast_as_recorded_keeps_the_budget_as_recorded(classifier):
    """A recorded cost far above what the digits model costs here: no slowdown, an info line."""
    budget, records = start(classifier, ImageCost(image_s=10.0, megapixel_s=1.0))
    assert budget.slowdown() == 1.0
    [(level, message)] = records
    assert level == logging.INFO and "measured here" in message
    assert SLOWER_WARNING > 1


def test_a_given_cost_is_kept_without_measuring(classifier):
    given = ImageCost(image_s=1e-9, megapixel_s=0.0)
    budget, records = start(classifier, given, measure_again=False)
    assert budget.cost == given and budget.slowdown() == 1.0 and records == []


def test_an_archive_without_a_recorded_cost_uses_the_measurement(classifier):
    budget, records = start(classifier, None)
    assert budget.cost.image_s > 0 and budget.cost.image_s < 10  # measured, not a guess
    [(level, message)] = records
    assert level == logging.WARNING and "older archive" in message
