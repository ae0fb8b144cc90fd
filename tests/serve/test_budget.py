"""serve/budget.py: pricing, the per-call allowance, shedding, the slowdown and the derived settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import serve.budget
from serve.budget import HEADROOM, Budget, ImageCost, OverBudget, Overloaded, plan

COST = ImageCost(image_s=0.1, megapixel_s=0.02)
PHOTO = 1_000_000  # pixels in a 1-megapixel file: 0.12 s
BOMB = 64_000_000  # a 64-megapixel progressive JPEG: 1.38 s


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_module_imports_only_the_standard_library():
    """Both servers use it: no TorchServe, Triton, torch or project import."""
    tree = ast.parse(Path(serve.budget.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "time", "dataclasses"}


def test_requests_fill_a_call_then_are_shed_and_an_impossible_one_is_413():
    budget = Budget(call_s=3.0, cost=COST, max_call_pixels=10**9)
    call = budget.start_call()
    assert call.admit([BOMB], 1_000_000) == pytest.approx(1.38)
    call.admit([PHOTO] * 10, 1_000_000)  # 1.2 s: 2.58 s spent
    with pytest.raises(Overloaded) as shed:
        call.admit([PHOTO] * 4, 1_000_000)  # 0.48 s more would pass 3 s
    assert shed.value.retry_after_s == 3
    call.admit([PHOTO] * 3, 1_000_000)  # a smaller one still fits
    with pytest.raises(OverBudget):
        budget.start_call().admit([BOMB] * 3, 3_000_000)  # 4.1 s: no call could serve it


def test_decoded_pixels_per_call_are_bounded_but_the_first_request_always_fits():
    budget = Budget(call_s=100.0, cost=COST, max_call_pixels=5_000_000)
    call = budget.start_call()
    call.admit([PHOTO], 5_000_000)
    with pytest.raises(Overloaded):
        call.admit([PHOTO], 1)


def test_a_slower_machine_tightens_the_budget_and_the_slowdown_decays():
    clock = Clock()
    budget = Budget(call_s=3.0, cost=COST, max_call_pixels=10**9, clock=clock)
    budget.start_call().admit([PHOTO] * 20, 1)  # 2.4 s at the measured speed: fits
    budget.observe(estimated_s=1.0, actual_s=3.0)  # calls now run 3x slower than estimated
    assert budget.slowdown() == pytest.approx(2.0)
    with pytest.raises(Overloaded, match="slower than measured"):
        budget.start_call().admit([PHOTO] * 20, 1)  # 4.8 s at today's speed: shed, not started
    budget.start_call().admit([PHOTO] * 10, 1)  # 2.4 s at today's speed: served
    clock.now += 300  # ten half-lives without news
    assert budget.slowdown() == pytest.approx(1.0, abs=0.01)
    budget.observe(estimated_s=1.0, actual_s=0.5)  # faster than measured never loosens the budget
    assert budget.slowdown() >= 1.0


def test_plan_fits_the_timeout_and_lowers_what_does_not():
    settings = plan(60, ImageCost(image_s=1.0, megapixel_s=0.0), workers=2, batch_size=4, max_images=32)
    assert settings.call_s == 60 / HEADROOM == 15
    assert (settings.batch_size, settings.max_images, settings.retry_after_s) == (4, 15, 15)
    assert settings.job_queue_size == 2 * 4 * (HEADROOM - 1)  # drains in HEADROOM - 1 calls
    slow = plan(60, ImageCost(image_s=5.0, megapixel_s=0.0), workers=1, batch_size=8, max_images=32)
    assert (slow.batch_size, slow.max_images) == (3, 3)
    with pytest.raises(ValueError, match="raise the response timeout to at least 80 s"):
        plan(60, ImageCost(image_s=20.0, megapixel_s=0.0), workers=1, batch_size=4, max_images=32)


def test_a_cost_from_a_file_is_checked():
    assert ImageCost.from_dict(COST.to_dict()) == COST
    for bad in ({"image_s": 0, "megapixel_s": 0}, {"image_s": float("nan"), "megapixel_s": 0}):
        with pytest.raises(ValueError):
            ImageCost.from_dict(bad)
