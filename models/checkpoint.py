"""The checkpoint contract (docs/architecture.md, contract 1): the `Checkpoint` class, atomic writes, validated reads.

On disk a checkpoint is a plain dict that `torch.load(path, weights_only=True)` can read (tensors,
numbers, strings, lists, dicts). In code it is a `Checkpoint`: `train` builds one and saves it;
`export`, `serve`, `client` and `inspect` read it with `load_checkpoint` and rebuild the exact network
with `Checkpoint.build_model` (or `model_from_checkpoint`). `to_dict` / `from_dict` are the only places
that know the key names, and keys this version does not know are kept as they are (`extra`), so files
written by older and newer versions still load and re-save without loss.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fsutil.atomic import atomic_path
from models.errors import first_line

from .preprocess import PreprocessSpec
from .registry import create_model

REQUIRED_KEYS = ("arch", "arch_kwargs", "num_classes", "class_names", "preprocess", "model")
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or not one of ours."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild, deploy and resume one model (see docs/architecture.md, contract 1)."""

    arch: str
    class_names: list[str]
    preprocess: PreprocessSpec
    model: dict[str, torch.Tensor]  # state_dict with torchvision's key names
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # validation numbers of these weights
    # Resuming (absent from checkpoints that were not written by `train`):
    config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    steps_into_epoch: int = 0
    best_top1: float = -1.0
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per training process
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_ema(self) -> bool:
        return self.ema is not None

    @property
    def resumable(self) -> bool:
        return self.config is not None and self.optimizer is not None and self.scheduler is not None

    def deploy_state_dict(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The weights to deploy: the EMA weights when present and asked for, else the raw ones."""
        return self.ema if use_ema and self.ema is not None else self.model

    def build_model(self, use_ema: bool = True, source: str = "checkpoint") -> nn.Module:
        """The exact network of this checkpoint, its weights loaded strictly, in eval mode."""
        model = create_model(self.arch, num_classes=self.num_classes, **self.arch_kwargs)
        load_state_dict_strict(model, self.deploy_state_dict(use_ema), source=source)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: plain containers only (loadable with weights_only=True)."""
        d = dict(self.extra)
        d.update(
            arch=self.arch,
            arch_kwargs=dict(self.arch_kwargs),
            num_classes=self.num_classes,
            class_names=list(self.class_names),
            preprocess=self.preprocess.to_dict(),
            model=self.model,
            metrics=dict(self.metrics),
            epoch=self.epoch,
            step=self.step,
            steps_into_epoch=self.steps_into_epoch,
            best_top1=self.best_top1,
            rng=list(self.rng),
            scaler=dict(self.scaler),
            versions=dict(self.versions),
        )
        for key in ("config", "optimizer", "scheduler"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.ema is not None:
            d.update(ema=self.ema, ema_updates=self.ema_updates)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "checkpoint") -> Checkpoint:
        """Validate an on-disk dict (ours, of any version) and build the Checkpoint; errors name `source`."""
        if not isinstance(d, dict) or "model" not in d:
            raise CheckpointError(
                f"{source}: not a resnet-deploy checkpoint (expected a dict with keys {list(REQUIRED_KEYS)}); "
                "for a bare state_dict or a timm/torchvision weight file use models.load_pretrained, "
                "--pretrained, or --arch ARCH --weights FILE"
            )
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise CheckpointError(f"{source}: checkpoint is missing keys {missing}")
        class_names = d["class_names"]
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
            raise CheckpointError(f"{source}: class_names must be a list of strings")
        if len(class_names) != d["num_classes"]:
            raise CheckpointError(f"{source}: {len(class_names)} class names for num_classes={d['num_classes']}")
        if not isinstance(d["arch"], str) or not isinstance(d["arch_kwargs"], dict):
            raise CheckpointError(f"{source}: arch must be a string and arch_kwargs a dict")
        try:
            preprocess = PreprocessSpec.from_dict(d["preprocess"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: invalid preprocess block ({e})") from None
        known = {f.name for f in dataclasses.fields(cls)} | {"num_classes"}
        values = {
            k: d[k] for k in known - {"extra", "num_classes", "preprocess", "class_names"} if d.get(k) is not None
        }
        return cls(
            **values,
            preprocess=preprocess,
            class_names=list(class_names),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: temporary file beside `path`, fsync, rename, fsync the directory.

        The whole file is serialised in memory first, so a full disk or a crash mid-write never
        touches the previous file.
        """
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        return Path(path)


def read_weights_file(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` on CPU, with errors that name the file and the likely cause."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); was it written completely?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch weights file ({first_line(e)}). The file may be truncated "
            "or corrupt, or hold pickled objects other than tensors and plain containers."
        ) from e


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate one of our checkpoints."""
    return Checkpoint.from_dict(read_weights_file(path), source=str(path))


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)`, but a mismatch lists the missing, unexpected and misshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{source}: weights do not fit this {type(model).__name__}; was it saved from another "
            "architecture?\n" + key_report(missing=missing, unexpected=unexpected, wrong_shape=misshaped)
        )
    model.load_state_dict(state, strict=True)


def key_report(limit: int = 10, **groups: list[str]) -> str:
    lines = []
    for title, keys in groups.items():
        if keys:
            shown = "\n    ".join(keys[:limit])
            more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            lines.append(f"  {title.replace('_', ' ')} ({len(keys)}):\n    {shown}{more}")
    return "\n".join(lines)


def model_from_checkpoint(
    ckpt_or_path: Checkpoint | str | os.PathLike, use_ema: bool = True
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the exact network of a checkpoint in eval mode; returns (model, checkpoint)."""
    if isinstance(ckpt_or_path, Checkpoint):
        return ckpt_or_path.build_model(use_ema), ckpt_or_path
    ckpt = load_checkpoint(ckpt_or_path)
    return ckpt.build_model(use_ema, source=str(ckpt_or_path)), ckpt
