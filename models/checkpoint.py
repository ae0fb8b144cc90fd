"""The checkpoint contract (shared/DESIGN.md, contract 1): atomic writes, validated reads.

A checkpoint is a plain dict that `torch.load(path, weights_only=True)` can read. `train` writes it;
`export`, `serve` and `client` rebuild the exact network from it with `model_from_checkpoint`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .preprocess import PreprocessSpec
from .registry import create_model

REQUIRED_KEYS = ("arch", "arch_kwargs", "num_classes", "class_names", "preprocess", "model")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or not one of ours."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: temporary file in the same directory, fsync, rename, fsync the directory.

    A crash at any moment leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


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
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch weights file ({first_line}). The file may be truncated "
            "or corrupt, or hold pickled objects other than tensors and plain containers."
        ) from e


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one of our checkpoints."""
    ckpt = read_weights_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"{path}: not a resnet-deploy checkpoint (expected a dict with keys {list(REQUIRED_KEYS)}); "
            "for a bare state_dict or a timm/torchvision weight file use models.load_pretrained or --pretrained"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing keys {missing}")
    if len(ckpt["class_names"]) != ckpt["num_classes"]:
        raise CheckpointError(
            f"{path}: {len(ckpt['class_names'])} class names for num_classes={ckpt['num_classes']}"
        )
    return ckpt


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


def checkpoint_state_dict(ckpt: dict[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights to deploy: the EMA weights when present and asked for, else the raw ones."""
    return ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]


def model_from_checkpoint(
    ckpt_or_path: dict[str, Any] | str | os.PathLike, use_ema: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exact network of a checkpoint in eval mode; returns (model, checkpoint)."""
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else load_checkpoint(ckpt_or_path)
    where = "checkpoint" if isinstance(ckpt_or_path, dict) else str(ckpt_or_path)
    model = create_model(ckpt["arch"], num_classes=ckpt["num_classes"], **ckpt.get("arch_kwargs", {}))
    load_state_dict_strict(model, checkpoint_state_dict(ckpt, use_ema), source=where)
    return model.eval(), ckpt


def checkpoint_preprocess(ckpt: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_dict(ckpt["preprocess"])
