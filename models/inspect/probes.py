"""Measurements inside a ResNet, each through hooks that are removed before the function returns.

Every probe leaves the model as it found it: hooks removed, train/eval mode, BatchNorm running
statistics, `.grad` fields and the global RNG restored. So the training loop (`--log-internals`) and
`python -m models.inspect` can call them on a live model.

Residual flow needs the branch output F(x) and the identity path of each block separately. The blocks
of `models.resnet` end in `drop_path(F(x)) + identity`, and `drop_path` is always a module
(`nn.Identity` when stochastic depth is off), so a forward hook on it sees F(x) without any change to
the blocks or their state_dict keys; the identity is the block's input, or its `downsample` output.
A block that adds no shortcut (a plain network) sets `residual = False`; its ratio is undefined (None).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..resnet import BasicBlock, Bottleneck

STEM = "stem"


@contextlib.contextmanager
def hooks(register: Sequence[Callable[[], torch.utils.hooks.RemovableHandle]]) -> Iterator[None]:
    """Register the given hooks for the duration of the block; always removed afterwards."""
    handles = []
    try:
        for make in register:
            handles.append(make())
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's mode, buffers (BatchNorm statistics), gradients and the RNG afterwards."""
    was_training = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    grads = {p: p.grad for p in model.parameters()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):  # dropout / drop-path draws must not shift training's RNG
            yield
    finally:
        for m, mode in was_training.items():
            m.training = mode
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for p, g in grads.items():
            p.grad = g


def stage_of(name: str) -> str:
    """`layer2.1.conv1` -> `layer2`; everything before the first stage -> `stem`; after it its own name."""
    top = name.split(".", 1)[0]
    if top.startswith("layer"):
        return top
    return STEM if top in ("conv1", "bn1", "relu", "maxpool") else top


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own a trainable parameter (convs, norms, the classifier), in forward order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if not list(m.children()) and any(p.requires_grad for p in m.parameters(recurse=False))
    ]


# -- residual flow ------------------------------------------------------------------------------


@dataclass
class BlockFlow:
    block: str
    branch_norm: float  # ||F(x)||, mean over the batch
    identity_norm: float | None  # ||identity|| (None: the block has no shortcut)

    @property
    def ratio(self) -> float | None:
        if self.identity_norm is None:
            return None
        return self.branch_norm / max(self.identity_norm, 1e-12)


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.detach().float().flatten(1).norm(dim=1)


@torch.no_grad()
def residual_flow(model: nn.Module, x: Tensor) -> list[BlockFlow]:
    """Per block, ||F(x)|| against ||identity|| (batch means), in eval mode."""
    branch: dict[str, Tensor] = {}
    identity: dict[str, Tensor] = {}
    register = []
    for name, block in residual_blocks(model):
        shortcut = getattr(block, "residual", True)

        def on_branch(_m, _inp, out, name=name):
            branch[name] = _per_sample_norm(out)

        register.append(lambda block=block, f=on_branch: block.drop_path.register_forward_hook(f))
        if not shortcut:
            continue
        if block.downsample is None:

            def on_input(_m, inp, name=name):
                identity[name] = _per_sample_norm(inp[0])

            register.append(lambda block=block, f=on_input: block.register_forward_pre_hook(f))
        else:

            def on_shortcut(_m, _inp, out, name=name):
                identity[name] = _per_sample_norm(out)

            register.append(lambda block=block, f=on_shortcut: block.downsample.register_forward_hook(f))
    with preserved(model), hooks(register):
        model.eval()
        model(x)
    return [
        BlockFlow(name, float(branch[name].mean()), float(identity[name].mean()) if name in identity else None)
        for name, _ in residual_blocks(model)
    ]


# -- gradient flow ------------------------------------------------------------------------------


@dataclass
class LayerGradient:
    layer: str
    grad_norm: float  # ||dL/dW|| of the layer's weight (and bias)
    weight_norm: float


def gradient_flow(
    model: nn.Module, x: Tensor, labels: Tensor, *, criterion: nn.Module | None = None
) -> list[LayerGradient]:
    """Per trainable layer, the norm of the loss gradient of its parameters on one labelled batch.

    Runs in train mode (batch statistics, as during training); BN statistics, gradients, mode and
    RNG are restored afterwards, so this may be called between two training steps.
    """
    criterion = criterion or nn.CrossEntropyLoss()
    layers = trainable_layers(model)
    params = [[p for p in m.parameters(recurse=False) if p.requires_grad] for _, m in layers]
    with preserved(model), torch.enable_grad():
        model.train()
        loss = criterion(model(x), labels)
        grads = torch.autograd.grad(loss, [p for group in params for p in group], allow_unused=True)
    results, i = [], 0
    for (name, _), group in zip(layers, params):
        g = [grads[i + j] for j in range(len(group))]
        i += len(group)
        grad_norm = torch.stack([t.float().norm() if t is not None else torch.zeros(()) for t in g]).norm()
        weight_norm = torch.stack([p.detach().float().norm() for p in group]).norm()
        results.append(LayerGradient(name, float(grad_norm), float(weight_norm)))
    return results


# -- activations ---------------------------------------------------------------------------------


@dataclass
class StageActivity:
    stage: str
    channels: int  # ReLU output channels seen in this stage (each ReLU call counts its own)
    dead_channels: int  # channels never positive anywhere in the batch
    zero_fraction: float  # fraction of all ReLU outputs that are exactly zero

    @property
    def dead_fraction(self) -> float:
        return self.dead_channels / max(self.channels, 1)


@torch.no_grad()
def relu_activity(model: nn.Module, x: Tensor) -> list[StageActivity]:
    """Dead-ReLU statistics per stage on a batch, in eval mode (every `nn.ReLU` call is counted)."""
    stats: dict[str, list[int]] = {}  # stage -> [channels, dead channels, zero outputs, outputs]

    def make(name: str):
        def on_relu(_m, _inp, out):
            s = stats.setdefault(stage_of(name), [0, 0, 0, 0])
            alive = (out > 0).flatten(2).any(dim=2).any(dim=0) if out.dim() > 2 else (out > 0).any(dim=0)
            s[0] += alive.numel()
            s[1] += int((~alive).sum())
            s[2] += int((out == 0).sum())
            s[3] += out.numel()

        return on_relu

    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with preserved(model), hooks([lambda m=m, n=name: m.register_forward_hook(make(n)) for name, m in relus]):
        model.eval()
        model(x)
    return [StageActivity(stage, c, d, z / max(n, 1)) for stage, (c, d, z, n) in stats.items()]


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """The outputs of the named modules (e.g. `layer1`, `layer2.0.conv1`) for `x`, in eval mode."""
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        tops = [n for n, _ in model.named_children()]
        raise ValueError(f"no module named {unknown} in this {type(model).__name__}; top-level modules: {tops}")
    outputs: dict[str, Tensor] = {}

    def make(name: str):
        def on_output(_m, _inp, out):
            outputs[name] = out.detach().clone()  # clone: an in-place ReLU may overwrite it later

        return on_output

    with preserved(model), hooks([lambda n=n: modules[n].register_forward_hook(make(n)) for n in layers]):
        model.eval()
        model(x)
    return outputs


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The network's first convolution (inside a deep stem too)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def stage_names(model: nn.Module) -> list[str]:
    """The stages that hold blocks (the CIFAR paper's nets have an empty `layer4`)."""
    return [n for n, m in model.named_children() if n.startswith("layer") and not isinstance(m, nn.Identity)]


# -- per-layer table -----------------------------------------------------------------------------


@dataclass
class LayerRow:
    layer: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int  # counted by torch's FlopCounterMode: 2 per multiply-accumulate


@torch.no_grad()
def layer_table(model: nn.Module, x: Tensor) -> list[LayerRow]:
    """Every leaf module with parameters or FLOPs, in forward order, for one image shaped like `x[:1]`."""
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]

    def make(name: str):
        def on_output(_m, _inp, out):
            if name not in shapes:
                order.append(name)
            shapes[name] = tuple(out.shape[1:])

        return on_output

    prefix = type(model).__name__
    with preserved(model), hooks([lambda m=m, n=n: m.register_forward_hook(make(n)) for n, m in leaves]):
        model.eval()
        with FlopCounterMode(display=False) as counter:
            model(x[:1])
    flops = {k.removeprefix(prefix + "."): sum(v.values()) for k, v in counter.get_flop_counts().items()}
    modules = dict(leaves)
    rows = []
    for name in order:
        params = sum(p.numel() for p in modules[name].parameters(recurse=False))
        if params or flops.get(name):
            rows.append(LayerRow(name, type(modules[name]).__name__, shapes[name], params, int(flops.get(name, 0))))
    return rows


def registered_hooks(model: nn.Module) -> int:
    """How many forward/backward hooks the model's modules hold (0 after any probe here)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )
