"""`inspect_model`: run every probe on a model and write the pictures, `report.md` and `inspection.json`."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsutil.atomic import atomic_write_text

from ..preprocess import PreprocessSpec, normalize_batch
from . import plots
from .gradcam import grad_cam, save_overlay
from .probes import feature_maps, first_conv, gradient_flow, layer_table, relu_activity, residual_flow, stage_names

GRAPH_HINT = "install Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz) and `pip install torchviz`"


@dataclass
class InspectionInputs:
    """What to look at: named images (uint8 3 x H x W after the eval resize and crop) and a labelled batch."""

    images: list[tuple[str, Tensor]]
    batch: Tensor  # uint8 N x 3 x H x W for the gradient / ReLU / residual probes
    labels: Tensor | None = None  # None: the model's own predictions stand in as labels
    batch_description: str = ""


@dataclass
class InspectionResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"


def _write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def render_graph(model: nn.Module, x: Tensor, out_dir: Path) -> tuple[Path | None, str]:
    """The autograd graph as a PNG through torchviz + Graphviz; (None, why) when either is missing."""
    if shutil.which("dot") is None:
        return None, f"Graphviz's `dot` is not on PATH: {GRAPH_HINT}"
    try:
        import torchviz
    except ImportError:
        return None, f"torchviz is not installed: {GRAPH_HINT}"
    with torch.enable_grad():
        logits = model.eval()(x[:1])
        dot = torchviz.make_dot(logits, params=dict(model.named_parameters()))
    dot.format = "png"
    rendered = Path(dot.render(str(out_dir / "graph"), cleanup=True))
    return rendered, ""


def inspect_model(
    model: nn.Module,
    class_names: Sequence[str],
    preprocess: PreprocessSpec,
    inputs: InspectionInputs,
    out_dir: str | os.PathLike,
    *,
    title: str = "model",
    layers: Sequence[str] | None = None,
    gradcam_top_k: int = 0,
    graph: bool = True,
) -> InspectionResult:
    """Every probe of `models.inspect.probes` on `model`; writes PNGs, report.md and inspection.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = InspectionResult(out)
    device = next(model.parameters()).device
    batch = normalize_batch(inputs.batch.to(device), preprocess)
    images = [(name, normalize_batch(pixels.to(device), preprocess)[None]) for name, pixels in inputs.images]
    with torch.no_grad():
        predicted = model.eval()(batch).argmax(dim=1)
    labels = inputs.labels.to(device) if inputs.labels is not None else predicted

    params = sum(p.numel() for p in model.parameters())
    rows = layer_table(model, batch)
    total_flops = sum(r.flops for r in rows)
    md: list[str] = [
        f"# Inside {title}",
        "",
        f"{type(model).__name__} with {params:,} parameters, {total_flops / 1e9:.3f} GFLOPs per "
        f"{preprocess.input_size}x{preprocess.input_size} image ({total_flops / 2e9:.3f} GMACs), "
        f"{len(class_names)} classes.",
        "",
        f"Labelled batch: {len(batch)} images, {inputs.batch_description or 'labels given'}"
        + ("" if inputs.labels is not None else "; the model's own predictions serve as labels")
        + ".",
        "",
    ]
    if images:
        md += _predictions_section(model, images, class_names)
    if gradcam_top_k and images:
        md += _gradcam_section(model, images, inputs, class_names, gradcam_top_k, result)
    if images:
        md += _feature_maps_section(model, images, layers, result)
    path = plots.plot_filters(first_conv(model).weight, out / "filters_conv1.png")
    result.files.append(path)
    md += ["## First-layer filters", "", f"![first conv filters]({path.name})", ""]
    flows = residual_flow(model, batch)
    md += _residual_flow_section(flows, result)
    grads = gradient_flow(model, batch, labels)
    md += _gradient_flow_section(grads, result)
    activity = relu_activity(model, batch)
    md += _relu_section(activity, result)
    md += _graph_section(model, batch, graph, result)
    md += ["## Layers", "", "| layer | type | output shape | parameters | FLOPs |", "|---|---|---|---:|---:|"]
    md += [
        f"| {r.layer} | {r.kind} | {'x'.join(map(str, r.output_shape))} | {r.params:,} | {r.flops:,} |" for r in rows
    ]
    md += [f"| **total** | | | {params:,} | {total_flops:,} |", ""]

    result.summary = {
        "title": title,
        "params": params,
        "flops": total_flops,
        "batch_size": len(batch),
        "residual_flow": [dict(asdict(f), ratio=f.ratio) for f in flows],
        "gradient_flow": [asdict(g) for g in grads],
        "relu_activity": [dict(asdict(s), dead_fraction=s.dead_fraction) for s in activity],
        "layers": [asdict(r) for r in rows],
        "files": [p.name for p in result.files],
    }
    result.files.append(_write_text(out / "report.md", "\n".join(md)))
    result.files.append(_write_text(out / "inspection.json", json.dumps(result.summary, indent=1) + "\n"))
    return result


def _predictions_section(model: nn.Module, images, class_names: Sequence[str]) -> list[str]:
    md = ["## Predictions", "", "| image | top classes |", "|---|---|"]
    with torch.no_grad():
        for name, x in images:
            p = model(x).float().softmax(dim=1)[0]
            top = p.topk(min(3, len(class_names)))
            shown = ", ".join(f"{class_names[i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
            md.append(f"| {name} | {shown} |")
    return [*md, ""]


def _gradcam_section(model: nn.Module, images, inputs: InspectionInputs, class_names, top_k: int, result) -> list[str]:
    md = [
        "## Grad-CAM",
        "",
        f"Class activation maps of the top {top_k} classes on the "
        f"`{stage_names(model)[-1]}` output, over the image as the network saw it.",
        "",
    ]
    for (name, x), (_, pixels) in zip(images, inputs.images):
        maps = grad_cam(model, x, class_names, top_k=top_k)
        path = save_overlay(pixels, maps, result.out_dir / f"gradcam_{_safe(Path(name).stem)}.png", title=name)
        result.files.append(path)
        md += [f"![Grad-CAM of {name}]({path.name})", ""]
    return md


def _feature_maps_section(model: nn.Module, images, layers: Sequence[str] | None, result) -> list[str]:
    layers = list(layers) if layers else ["maxpool", *stage_names(model)]
    maps = feature_maps(model, images[0][1], layers)
    md = [
        "## Feature maps",
        "",
        f"The first channels of each layer's output for {images[0][0]} "
        "(`maxpool` is the stem's output, an identity in CIFAR stems).",
        "",
    ]
    for layer in layers:
        if maps[layer].dim() != 4:
            continue
        path = plots.plot_feature_maps(maps[layer][0], result.out_dir / f"features_{_safe(layer)}.png", layer)
        result.files.append(path)
        md += [f"![feature maps of {layer}]({path.name})", ""]
    return md


def _residual_flow_section(flows, result) -> list[str]:
    path = plots.plot_residual_flow(flows, result.out_dir / "residual_flow.png")
    result.files.append(path)
    md = [
        "## Residual flow",
        "",
        "Per block, the residual branch's output norm against the identity path's "
        "(batch means). Near 0: the block is close to the identity; above 1: the branch dominates.",
        "",
        f"![residual flow]({path.name})",
        "",
        "| block | ‖F(x)‖ | ‖identity‖ | ratio |",
        "|---|---:|---:|---:|",
    ]
    for f in flows:
        ident = f"{f.identity_norm:.4g}" if f.identity_norm is not None else "no shortcut"
        ratio = f"{f.ratio:.4f}" if f.ratio is not None else "undefined"
        md.append(f"| {f.block} | {f.branch_norm:.4g} | {ident} | {ratio} |")
    return [*md, ""]


def _gradient_flow_section(grads, result) -> list[str]:
    path = plots.plot_gradient_flow(grads, result.out_dir / "gradient_flow.png")
    result.files.append(path)
    norms = [g.grad_norm for g in grads]
    vanished = [g.layer for g in grads if g.grad_norm == 0]
    broken = [g.layer for g in grads if not math.isfinite(g.grad_norm)]
    return [
        "## Gradient flow",
        "",
        "Cross-entropy gradient per layer on the labelled batch, in train mode (BN statistics restored afterwards).",
        "",
        f"![gradient flow]({path.name})",
        "",
        f"Smallest {min(norms):.3g}, median {statistics.median(norms):.3g}, largest {max(norms):.3g}; "
        f"{len(vanished)} layers with a zero gradient{': ' + ', '.join(vanished) if vanished else ''}; "
        f"{len(broken)} non-finite{': ' + ', '.join(broken) if broken else ''}.",
        "",
    ]


def _relu_section(activity, result) -> list[str]:
    path = plots.plot_relu_activity(activity, result.out_dir / "relu_activity.png")
    result.files.append(path)
    md = [
        "## Dead ReLUs",
        "",
        "A channel is dead when no image of the batch makes it positive anywhere.",
        "",
        f"![ReLU activity]({path.name})",
        "",
        "| stage | channels | dead | zero outputs |",
        "|---|---:|---:|---:|",
    ]
    md += [f"| {s.stage} | {s.channels} | {s.dead_fraction:.1%} | {s.zero_fraction:.1%} |" for s in activity]
    return [*md, ""]


def _graph_section(model: nn.Module, batch: torch.Tensor, graph: bool, result) -> list[str]:
    if not graph:
        return ["## Graph", "", "Not asked for.", ""]
    path, why = render_graph(model, batch, result.out_dir)
    if path is None:
        return ["## Graph", "", f"Skipped: {why}.", ""]
    result.files.append(path)
    return ["## Graph", "", f"![autograd graph]({path.name})", ""]
