"""What the user sees: a progress bar per epoch, one summary line per epoch, `metrics.csv`,
TensorBoard event files and `curves.png` (loss and accuracy, train and val), all from rank 0."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fsutil.atomic import atomic_path, atomic_save_figure

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "ema_val_top1",
    "epoch_seconds",
    "train_img_per_s",
)


class RunReporter:
    """Writes a run's logs; a disabled reporter (ranks > 0) does nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, plots: bool, resume_epoch: int, step: int):
        self.run_dir, self.enabled, self.plots = run_dir, enabled, plots
        self.csv_path = run_dir / "metrics.csv"
        self.rows: list[dict[str, str]] = []
        self.writer = None
        self.bar: tqdm | None = None
        if not enabled:
            return
        if self.csv_path.is_file():  # keep the epochs the resumed checkpoint has seen, drop later ones
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
            self._write_csv()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir), purge_step=step if step else None)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    # progress bar
    def start_epoch(self, epoch: int, epochs: int, total_steps: int, done_steps: int) -> None:
        if self.enabled:
            self._bar_start, self._total, self._epoch_label = done_steps, total_steps, f"epoch {epoch}/{epochs}"
            self._last_tenth = done_steps * 10 // max(total_steps, 1)
            self.bar = tqdm(
                total=total_steps,
                initial=done_steps,
                desc=f"epoch {epoch}/{epochs}",
                unit="step",
                dynamic_ncols=True,
                leave=False,
                file=sys.stderr,
                disable=None,
            )

    def log_steps(self, steps: int, loss: float, img_per_s: float, lr: float, global_step: int) -> None:
        if not self.enabled:
            return
        status = f"loss {loss:.4f}  lr {lr:.4g}  {img_per_s:.0f} img/s"
        if self.bar is not None and not self.bar.disable:
            self.bar.update(self._bar_start + steps - self.bar.n)
            self.bar.set_postfix_str(status, refresh=False)
        else:  # not a terminal (a log file, a batch job): a plain line every tenth of an epoch
            done = self._bar_start + steps
            tenth = done * 10 // max(self._total, 1)
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self.message(f"  {self._epoch_label}  step {done}/{self._total}  {status}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss_step", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
            self.writer.add_scalar("train/img_per_s", img_per_s, global_step)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.rows.append({k: _fmt(row.get(k)) for k in METRIC_FIELDS})
        self._write_csv()
        if self.writer is not None:
            for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "ema_val_top1"):
                if row.get(key) is not None:
                    group, name = key.split("_", 1) if not key.startswith("ema") else ("ema", key[4:])
                    self.writer.add_scalar(f"{group}/{name}", row[key], row["step"])
            self.writer.flush()
        if self.plots:
            write_curves(self.rows, self.run_dir / "curves.png")

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _write_csv(self) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)


def measure_internals(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`--log-internals`: each trainable layer's gradient norm and each block's ||F(x)|| / ||identity||
    on one batch, as TensorBoard tags. The probes restore the network's BN statistics, gradients, mode
    and RNG, so training continues exactly as without them."""
    from models.inspect import gradient_flow, residual_flow

    values = {f"internals/grad_norm/{g.layer}": g.grad_norm for g in gradient_flow(network, x, labels)}
    values.update(
        {f"internals/residual_ratio/{f.block}": f.ratio for f in residual_flow(network, x) if f.ratio is not None}
    )
    return values


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_curves(rows: list[dict[str, str]], path: Path) -> None:
    """Loss, top-1/top-5 (train and val) and the learning rate per epoch, as one PNG (replaced atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]
        return [p[0] for p in points], [p[1] for p in points]

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(*series(key), marker=".", label=label)
    for key, label in (
        ("train_top1", "train top-1"),
        ("val_top1", "val top-1"),
        ("val_top5", "val top-5"),
        ("ema_val_top1", "EMA val top-1"),
    ):
        xs, ys = series(key)
        if xs:
            ax_acc.plot(xs, ys, marker=".", label=label)
    # Log scale: an early spike (BN statistics still settling) would otherwise flatten the rest.
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_lr.plot(*series("lr"), marker=".", label="learning rate (end of epoch)")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
