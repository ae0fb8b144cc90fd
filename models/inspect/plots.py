"""The inspection pictures (matplotlib, Agg backend: no display needed), each written atomically."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from fsutil.atomic import atomic_save_figure

from .probes import BlockFlow, LayerGradient, StageActivity


def figure(rows: int, cols: int, *, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    return fig, list(axes.flat)


def save(fig, path: str | Path, dpi: int = 80) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=dpi)
    plt.close(fig)
    return path


def _grid(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def plot_feature_maps(maps: Tensor, path: Path, title: str, limit: int = 16) -> Path:
    """The first `limit` channels of one image's feature map (C x H x W), each scaled on its own."""
    channels = maps[:limit].float().cpu().numpy()
    rows, cols = _grid(len(channels))
    fig, axes = figure(rows, cols, size=(1.4, 1.4))
    for ax in axes:
        ax.axis("off")
    for i, (ax, channel) in enumerate(zip(axes, channels)):
        ax.imshow(channel, cmap="viridis")
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(f"{title}: {maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    return save(fig, path)


def plot_filters(weight: Tensor, path: Path, limit: int = 64) -> Path:
    """First-layer filters (out x in x k x k) as small pictures, each min-max scaled on its own."""
    filters = weight[:limit].detach().float().cpu().numpy()
    rows, cols = _grid(len(filters))
    fig, axes = figure(rows, cols, size=(0.9, 0.9))
    for ax in axes:
        ax.axis("off")
    for ax, f in zip(axes, filters):
        f = (f - f.min()) / max(float(f.max() - f.min()), 1e-12)
        ax.imshow(
            f.transpose(1, 2, 0) if f.shape[0] == 3 else f.mean(axis=0),
            cmap=None if f.shape[0] == 3 else "gray",
            interpolation="nearest",
        )
    fig.suptitle(
        f"first conv: {weight.shape[0]} filters of {weight.shape[1]}x{weight.shape[2]}x{weight.shape[3]}", fontsize=9
    )
    return save(fig, path)


def _bars(ax, labels: Sequence[str], values: Sequence[float], color: str) -> None:
    ax.bar(range(len(values)), values, color=color)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6 if len(labels) > 20 else 8)
    ax.grid(axis="y", alpha=0.3)


def plot_residual_flow(flows: Sequence[BlockFlow], path: Path) -> Path:
    fig, (ax,) = figure(1, 1, size=(max(5.0, 0.25 * len(flows)), 3.5))
    values = [f.ratio if f.ratio is not None else np.nan for f in flows]
    _bars(ax, [f.block for f in flows], values, "tab:blue")
    for i, f in enumerate(flows):
        if f.ratio is None:
            ax.text(i, 0, "no shortcut", rotation=90, fontsize=6, ha="center", va="bottom")
    ax.set(ylabel="||F(x)|| / ||identity||", title="residual branch against the identity path, per block")
    return save(fig, path)


def plot_gradient_flow(grads: Sequence[LayerGradient], path: Path) -> Path:
    fig, (ax,) = figure(1, 1, size=(max(6.0, 0.12 * len(grads)), 3.8))
    values = [max(g.grad_norm, 1e-30) for g in grads]
    _bars(ax, [g.layer for g in grads], values, "tab:orange")
    ax.set_yscale("log")
    ax.set(ylabel="||dL/dW|| (log scale)", title="gradient norm per layer, one labelled batch (input -> output)")
    return save(fig, path)


def plot_relu_activity(stages: Sequence[StageActivity], path: Path) -> Path:
    fig, (ax,) = figure(1, 1, size=(5.0, 3.2))
    x = np.arange(len(stages))
    ax.bar(x - 0.2, [100 * s.dead_fraction for s in stages], width=0.4, label="dead channels", color="tab:red")
    ax.bar(x + 0.2, [100 * s.zero_fraction for s in stages], width=0.4, label="zero outputs", color="tab:gray")
    ax.set_xticks(x)
    ax.set_xticklabels([s.stage for s in stages])
    ax.set(ylabel="% of ReLU outputs", ylim=(0, 100), title="ReLU activity per stage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)
