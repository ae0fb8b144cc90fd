"""The benchmarks' PNGs (matplotlib, Agg backend): figures are returned and written by `Report.write`."""

from __future__ import annotations

from typing import Any


def new_figure(panels: int, width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return figure, list(axes[0])


def throughput_vs_batch(rows: list[dict[str, Any]], accuracy: dict[str, float | None]):
    """images/s against batch size, one line per runner and one panel per model; each runner's legend
    entry carries its top-1 on the digits model (`accuracy`: runner label -> %), so a faster
    lower-precision runner is never shown without what it costs."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = new_figure(len(models))
    for ax, model in zip(axes, models):
        for runner in dict.fromkeys(r["runner"] for r in rows if r["model"] == model):
            points = sorted(
                (r["batch"], r["items_per_s"]) for r in rows if r["model"] == model and r["runner"] == runner
            )
            top1 = accuracy.get(runner)
            label = f"{runner} (digits top-1 {top1:.1f}%)" if top1 is not None else f"{runner} (accuracy not measured)"
            ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=label)
        ax.set(xscale="log", xlabel="batch size", ylabel="images/s", title=f"{model}: throughput per runner")
        ax.set_xticks(sorted({r["batch"] for r in rows}), labels=[str(b) for b in sorted({r["batch"] for r in rows})])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def latency_vs_load(points: list[dict[str, Any]], bound_ms: float | None = None):
    """p50/p90/p99 latency against offered load (requests/s), one panel per model; `points`: dicts with
    model, offered_rps, p50_ms, p90_ms, p99_ms."""
    models = list(dict.fromkeys(p["model"] for p in points))
    figure, axes = new_figure(max(1, len(models)))
    for ax, model in zip(axes, models):
        mine = sorted((p for p in points if p["model"] == model), key=lambda p: p["offered_rps"])
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            ax.plot([p["offered_rps"] for p in mine], [p[key] for p in mine], marker="o", label=key.split("_")[0])
        if bound_ms is not None:
            ax.axhline(bound_ms, color="grey", linestyle="--", label=f"p99 bound {bound_ms:g} ms")
        ax.set(xlabel="offered load (requests/s, Poisson arrivals)", ylabel="latency ms", yscale="log", title=model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def bars(title: str, values: dict[str, float], ylabel: str):
    """One bar per label (the GPU run's configurations)."""
    figure, (ax,) = new_figure(1, width=max(6.0, 0.9 * len(values)))
    ax.bar(range(len(values)), list(values.values()))
    ax.set_xticks(range(len(values)), labels=list(values), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
