"""The work one handler call may take on: sized from a measured per-image cost to fit the server's
response timeout with room to spare, and checked before any pixel is decoded.

Server-neutral (stdlib only, no TorchServe or Triton import): a server's handler prices each request
with `ImageCost.of`, asks `CallBudget.admit` per request of one call, and reports the call's real time
to `Budget.observe`. `plan` derives the server's settings from the same numbers.

Where the numbers come from: `serve package` measures, on the machine it runs on and with a worker's
threads (serve/calibrate.py), `image_s` (one typical photo decoded, preprocessed and classified within a
full batch) and `megapixel_s` (decoding one megapixel of a progressive JPEG in draft mode, the costliest
per pixel of what the decoder takes: libjpeg reads every coefficient even when it scales by 1/8, and a
progressive file in several passes). An image with `source_pixels` in its file is then priced at

    image_s + megapixel_s * source_pixels / 1e6          (seconds)

A call's allowance is `call_s = response_timeout_s / HEADROOM`: the machine may run HEADROOM times slower
than when it was measured (a noisy neighbour on the cores) before a call reaches the timeout at which the
server kills the worker. At run time `Budget.observe` tracks how much slower than the estimate calls
really run (`slowdown`, >= 1, decaying back to 1 when calls run at the measured speed), and the
allowance is spent in slowed-down seconds, so the budget tightens on a slower machine.

Per call, in the order the requests come:
- a request priced above `call_s` even at the measured speed can never be served: 413 (fewer or
  smaller images), like the per-request limits;
- a request that does not fit what is left of the call's allowance, or whose decoded pixels would take
  the call's above `max_call_pixels` (memory), is shed: 503 with `Retry-After: retry_after_s`, before
  any of its work starts. The first request of a call is shed only when the machine runs so slowly
  that it alone would not finish in the allowance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

HEADROOM = 4.0  # a call's estimate is at most 1/HEADROOM of the response timeout
SLOWDOWN_HALF_LIFE_S = 30.0  # a measured slowdown halves its excess over 1 in this long without news
SLOWDOWN_WEIGHT = 0.5  # weight of the newest call's ratio in the running slowdown


class OverBudget(Exception):
    """A request that no call can serve within the timeout (answer 413)."""


class Overloaded(Exception):
    """A request that does not fit this call (answer 503, retry after `retry_after_s`)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ImageCost:
    """Measured seconds: per image (decode of a photo, preprocessing, its share of a batch's forward
    pass) and per megapixel held in an image file (decoding)."""

    image_s: float
    megapixel_s: float

    def of(self, source_pixels: int) -> float:
        """Estimated seconds to serve one image whose file holds `source_pixels` pixels."""
        return self.image_s + self.megapixel_s * source_pixels / 1e6

    def to_dict(self) -> dict[str, float]:
        return {"image_s": self.image_s, "megapixel_s": self.megapixel_s}

    def __str__(self) -> str:
        return f"{self.image_s * 1000:.0f} ms per photo + {self.megapixel_s * 1000:.1f} ms per file megapixel"

    @classmethod
    def from_dict(cls, data: dict) -> ImageCost:
        cost = cls(float(data["image_s"]), float(data["megapixel_s"]))
        if not (cost.image_s > 0 and cost.megapixel_s >= 0 and math.isfinite(cost.image_s + cost.megapixel_s)):
            raise ValueError(f"image cost {data}: image_s must be > 0 and megapixel_s >= 0")
        return cost


@dataclass(frozen=True)
class Plan:
    """A server's settings derived from one timeout and one measured cost."""

    call_s: float  # estimated seconds one call may take at the measured speed
    batch_size: int  # requests per call (TorchServe's batchSize)
    max_images: int  # images per request
    job_queue_size: int  # requests waiting per model: each waits at most HEADROOM - 1 calls
    retry_after_s: int


def plan(response_timeout_s: float, cost: ImageCost, *, workers: int, batch_size: int, max_images: int) -> Plan:
    """Settings that fit `response_timeout_s`: the asked batch size and images per request, lowered
    where even a call of single-image requests, or one request of `max_images` photos, would not fit
    `call_s`; a queue that drains within the timeout (each call takes `batch_size` requests off it,
    serving or shedding them, in at most `call_s` of slowed-down time). Raises ValueError when not
    even one photo fits."""
    call_s = response_timeout_s / HEADROOM
    per_call = math.floor(call_s / cost.image_s)
    if per_call < 1:
        raise ValueError(
            f"one image takes {cost.image_s:.2f} s here, above the {call_s:.1f} s one call may take "
            f"(the response timeout {response_timeout_s:g} s / {HEADROOM:g}); raise the response timeout "
            f"to at least {math.ceil(cost.image_s * HEADROOM)} s or serve a smaller model"
        )
    batch_size = min(batch_size, per_call)
    queued_calls = max(1, math.floor(HEADROOM) - 1)
    return Plan(
        call_s=call_s,
        batch_size=batch_size,
        max_images=min(max_images, per_call),
        job_queue_size=workers * batch_size * queued_calls,
        retry_after_s=max(1, math.ceil(call_s)),
    )


class Budget:
    """One worker's budget: the allowance of every call, and how much slower than measured calls run."""

    def __init__(self, call_s: float, cost: ImageCost, max_call_pixels: int, clock=time.monotonic) -> None:
        self.call_s, self.cost, self.max_call_pixels, self.clock = call_s, cost, max_call_pixels, clock
        self._slowdown, self._observed_at = 1.0, clock()

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.call_s))

    def slowdown(self) -> float:
        """How many times slower than estimated calls run now (>= 1; back towards 1 without news)."""
        decay = 0.5 ** ((self.clock() - self._observed_at) / SLOWDOWN_HALF_LIFE_S)
        return 1.0 + (self._slowdown - 1.0) * decay

    def observe(self, estimated_s: float, actual_s: float) -> None:
        """A call estimated at `estimated_s` took `actual_s`."""
        if estimated_s <= 0:
            return
        ratio = max(1.0, actual_s / estimated_s)
        self._slowdown = (1 - SLOWDOWN_WEIGHT) * self.slowdown() + SLOWDOWN_WEIGHT * ratio
        self._observed_at = self.clock()

    def start_call(self) -> CallBudget:
        return CallBudget(self)


class CallBudget:
    """What is left of one call's allowance; `admit` each request in order."""

    def __init__(self, budget: Budget) -> None:
        self.budget, self.slowdown = budget, budget.slowdown()
        self.estimated_s, self.pixels, self.requests = 0.0, 0, 0

    def admit(self, source_pixels: list[int], decoded_pixels: int) -> float:
        """Take one request whose images' files hold `source_pixels` and decode to `decoded_pixels` in
        all; returns its estimated seconds. Raises OverBudget or Overloaded (nothing taken)."""
        budget = self.budget
        estimate = sum(budget.cost.of(pixels) for pixels in source_pixels)
        if estimate > budget.call_s:
            raise OverBudget(
                f"its {len(source_pixels)} image(s) would take about {estimate:.1f} s to decode and classify on this "
                f"server, above the {budget.call_s:.1f} s one call may take (its response timeout / {HEADROOM:g}); "
                "send fewer or smaller images per request"
            )
        slowed = (self.estimated_s + estimate) * self.slowdown
        if self.requests and (slowed > budget.call_s or self.pixels + decoded_pixels > budget.max_call_pixels):
            raise Overloaded("the server is busy with other requests; retry shortly", budget.retry_after_s)
        if slowed > budget.call_s:
            raise Overloaded(
                f"the server runs {self.slowdown:.1f}x slower than measured, too slow to finish this request in "
                "time; retry shortly or send fewer images",
                budget.retry_after_s,
            )
        self.estimated_s, self.pixels, self.requests = (
            self.estimated_s + estimate,
            self.pixels + decoded_pixels,
            self.requests + 1,
        )
        return estimate
