"""Timing that survives a shared, noisy machine: warm up, interleave the candidates, take medians.

Each side of a ratio is timed in the same rounds: round r runs candidate A once, B once, C once (in
an order rotated every round), so a neighbour's burst of work slows all candidates alike instead of
whichever one happened to be running.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# What `interleaved(prime_s=)` is given by the benchmarks: 3x how long PyTorch's OpenMP threads spin after an op.
PRIME_S = 0.03


@dataclass(frozen=True)
class Budget:
    """How long to time each group of candidates: at least `min_rounds` rounds and about `seconds` in all
    (never more than `max_rounds`), after `warmup` untimed calls of each."""

    warmup: int = 2
    min_rounds: int = 5
    max_rounds: int = 200
    seconds: float = 20.0


@dataclass
class Samples:
    """Wall-clock seconds of each timed call, each call handling `items` items (images)."""

    seconds: list[float]
    items: int = 1

    @property
    def median_s(self) -> float:
        return float(np.median(self.seconds))

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) * 1e3

    @property
    def items_per_s(self) -> float:
        return self.items / self.median_s

    def to_dict(self) -> dict:
        return {
            "items_per_call": self.items,
            "calls": len(self.seconds),
            "median_s": self.median_s,
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            # spread of the median's samples: interquartile range over the median
            "iqr_over_median": (self.percentile_ms(75) - self.percentile_ms(25)) / (1e3 * self.median_s),
            "items_per_s": self.items_per_s,
        }


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    candidates: dict[str, Callable[[], object]],
    budget: Budget,
    items: int = 1,
    before: dict[str, Callable[[], object]] | None = None,
    consecutive: int = 1,
    prime_s: float | None = None,
) -> dict[str, Samples]:
    """Time every candidate (a no-argument callable that finishes its work before returning) in rotating
    rounds; returns each one's samples. `before[name]`, where given, runs untimed right before each of
    that candidate's calls (what the call is measured after). Each round times `consecutive` calls of a
    candidate in a row, for effects that build up over calls (how the host wakes an idle virtual CPU).

    `prime_s`: before each timed call, untimed calls of the same candidate for at least that many
    seconds (at least one call), so that it is timed as in a stream of its own calls. Right after
    another candidate a call shares the cores with that one's still-spinning threads and starts on
    caches the other evicted: PyTorch's OpenMP pool spins ~10 ms after each parallel op, and on a Zen 4
    an ONNX Runtime resnet18 batch-1 run took 24 ms right after eager PyTorch against 17.5 ms back to
    back; a 3 ms int8 GEMM stayed 2x slower for two calls."""
    names = list(candidates)
    if prime_s is not None:
        if before:
            raise ValueError("interleaved: `prime_s` makes `before` the candidates' own calls; pass one or the other")
        before = {name: primer(candidates[name], prime_s) for name in names}
    before = before or {}
    for name in names:
        for _ in range(budget.warmup):
            before.get(name, lambda: None)()
            candidates[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while rounds < budget.max_rounds and (rounds < budget.min_rounds or time.perf_counter() - started < budget.seconds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(consecutive):
                before.get(name, lambda: None)()
                seconds[name].append(time_call(candidates[name]))
        rounds += 1
    return {name: Samples(values, items) for name, values in seconds.items()}


def primer(fn: Callable[[], object], seconds: float = PRIME_S) -> Callable[[], None]:
    """A `before` call for `fn`: `fn` itself, repeated until `seconds` have passed (at least once)."""
    return functools.partial(_repeat_for, fn, seconds)


def _repeat_for(fn: Callable[[], object], seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < deadline:
        fn()


def concurrent_throughput(calls: list[Callable[[], object]], items: int, seconds: float, warmup: int = 2) -> float:
    """Items per second of all `calls` running at once, each in a loop on its own thread, for about
    `seconds` (at least one call each) after `warmup` untimed calls each. For runtimes that release the
    GIL while they compute (ONNX Runtime, PyTorch ops), this is what that many worker processes do."""
    import threading

    for call in calls:
        for _ in range(warmup):
            call()
    done = [0] * len(calls)
    start = threading.Barrier(len(calls) + 1)
    deadline: list[float] = []

    def loop(index: int) -> None:
        start.wait()
        while True:
            calls[index]()
            done[index] += 1
            if time.perf_counter() >= deadline[0]:
                return

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline.append(began + seconds)
    start.wait()
    for thread in threads:
        thread.join()
    return sum(done) * items / (time.perf_counter() - began)
