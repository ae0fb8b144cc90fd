"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

The last stage's feature maps A (C x h x w) are weighted by the spatial mean of the class score's
gradient with respect to them, summed over channels and passed through a ReLU; the h x w map is
upsampled to the input and overlaid on the very pixels the network saw (the server's resize and crop,
`EncodedImageTransform.pixels`). A dozen lines, so no captum in the serving image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .probes import hooks, preserved, stage_names


@dataclass
class ClassMap:
    class_index: int
    label: str
    probability: float
    heatmap: np.ndarray  # H x W in [0, 1], the input's resolution


def target_layer(model: nn.Module) -> str:
    """The last stage that holds blocks: its output is the final conv feature map."""
    stages = stage_names(model)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no layer1..layer4 stage to explain")
    return stages[-1]


def grad_cam(
    model: nn.Module, x: Tensor, class_names: Sequence[str], *, top_k: int = 3, layer: str | None = None
) -> list[ClassMap]:
    """Class activation maps of the `top_k` most probable classes of the single image `x` (1 x 3 x H x W)."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"grad_cam explains one image: expected a 1 x 3 x H x W tensor, got {tuple(x.shape)}")
    module = dict(model.named_modules())[layer or target_layer(model)]
    captured: list[Tensor] = []
    with preserved(model), hooks([lambda: module.register_forward_hook(lambda _m, _i, out: captured.append(out))]):
        model.eval()
        with torch.enable_grad():
            logits = model(x)
            probabilities = logits.detach().float().softmax(dim=1)[0]
            top = probabilities.topk(min(top_k, len(class_names))).indices.tolist()
            features = captured[-1]
            maps = []
            for c in top:
                (grad,) = torch.autograd.grad(logits[0, c], features, retain_graph=True)
                weights = grad.float().mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((weights * features.detach().float()).sum(dim=1, keepdim=True))
                cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                peak = float(cam.max())
                heatmap = (cam / peak if peak > 0 else cam).cpu().numpy()
                maps.append(ClassMap(c, class_names[c], float(probabilities[c]), heatmap))
    return maps


def save_overlay(pixels: Tensor, maps: Sequence[ClassMap], path: str | Path, *, title: str = "") -> Path:
    """The image (uint8 3 x H x W, as the network saw it) and one heat-map overlay per class, as a PNG."""
    from .plots import figure, save

    image = pixels.permute(1, 2, 0).cpu().numpy()
    fig, axes = figure(1, len(maps) + 1, size=(3.0, 3.2))
    axes[0].imshow(image)
    axes[0].set_title(title or "input", fontsize=9)
    for ax, m in zip(axes[1:], maps):
        ax.imshow(image)
        ax.imshow(m.heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{m.label}  {m.probability:.1%}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    return save(fig, path)
