"""ResNets written from scratch, with torchvision's module and state_dict key names.

One `ResNet` class covers every family:

* ImageNet ResNet-18/34/50/101/152: 7x7/2 stem + max-pool, four stages of 64-512 channels,
  bottleneck stride on the 3x3 conv ("v1.5", as torchvision and timm).
* CIFAR ResNet-18/34/50/101: the same stages behind a 3x3/1 stem with no max-pool.
* The CIFAR paper's ResNet-20/32/44/56/110: three stages of 16/32/64 channels, shortcut option A
  (parameter-free: subsample and zero-pad channels) or B (1x1 conv + BN projection).
* Wide ResNets (torchvision's wide_resnet50_2/101_2: a bottleneck twice as wide; WRN-28-10 for CIFAR:
  pre-activation basic blocks 10x as wide) and ResNeXt (grouped 3x3 convs, `groups` x `width_per_group`).

`grad_checkpoint = True` recomputes each block's activations in the backward pass instead of keeping
them (less memory for deep nets, one more forward per block; the gradients are the same).

`pre_activation=True` turns any of them into ResNet v2 (BN -> ReLU -> conv inside each block, nothing
after the addition, one final BN + ReLU before pooling). For the write-ups' ablations, `norm="none"`
removes every BatchNorm and `residual=False` makes the paper's plain network (no shortcut, no addition). The ResNet-D tweaks (deep stem, average-pool
downsample) use timm's key names so timm's `resnet50d` weights load too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


NORMS = ("batch", "none")


def make_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm (the default), or nothing for the norm-free ablation."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


class ZeroPadShortcut(nn.Module):
    """Shortcut option A of He et al. (2015), section 4.2: subsample, then zero-pad the new channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(
    in_planes: int, out_planes: int, stride: int, *, kind: str, pre_activation: bool, norm: str = "batch"
) -> nn.Module | None:
    """The shortcut of a block whose input and output shapes differ (None when they match)."""
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if kind == "B":
        if pre_activation:  # the projection sees the block's already normalised input
            return nn.Sequential(conv1x1(in_planes, out_planes, stride))
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), make_norm(norm, out_planes))
    if kind == "D":  # ResNet-D: average-pool, then a stride-1 projection (timm's key layout)
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        layers = [pool, conv1x1(in_planes, out_planes)]
        if not pre_activation:
            layers.append(make_norm(norm, out_planes))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown shortcut kind {kind!r}; expected 'A', 'B' or 'D'")


class BasicBlock(nn.Module):
    """Two 3x3 convs. Post-activation (v1) unless `pre_activation` (v2)."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        pre_activation: bool = False,
        drop_path: float = 0.0,
        norm: str = "batch",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock has no groups or width_per_group: widen it through `widths`")
        self.pre_activation = pre_activation
        self.residual = residual  # False: a plain block, F(x) alone (models.inspect reads this)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = make_norm(norm, in_planes if pre_activation else planes)  # v2 normalises the input
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def last_norm_or_conv(self) -> nn.Module:
        """The layer whose zero init makes the residual branch output zero."""
        return self.conv2 if self.pre_activation or isinstance(self.bn2, nn.Identity) else self.bn2

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_activation:
            out = self.relu(self.bn1(x))
            identity = x if self.downsample is None else self.downsample(out)
            out = self.conv1(out)
            out = self.conv2(self.relu(self.bn2(out)))
            out = self.drop_path(out)
            return out + identity if self.residual else out

        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.drop_path(out)
        return self.relu(out + identity if self.residual else out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, "v1.5"), 1x1 expand by 4.

    The inner width is `planes * base_width / 64 * groups` (torchvision's rule): ResNeXt-50 32x4d has
    32 groups of 4 channels at base 64, wide_resnet50_2 has base 128.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        pre_activation: bool = False,
        drop_path: float = 0.0,
        norm: str = "batch",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        width = int(planes * (base_width / 64.0)) * groups
        self.pre_activation = pre_activation
        self.residual = residual  # False: a plain block, F(x) alone (models.inspect reads this)
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = make_norm(norm, in_planes if pre_activation else width)  # v2 normalises the input
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = conv1x1(width, out_planes)
        self.bn3 = make_norm(norm, width if pre_activation else out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def last_norm_or_conv(self) -> nn.Module:
        return self.conv3 if self.pre_activation or isinstance(self.bn3, nn.Identity) else self.bn3

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_activation:
            out = self.relu(self.bn1(x))
            identity = x if self.downsample is None else self.downsample(out)
            out = self.conv1(out)
            out = self.conv2(self.relu(self.bn2(out)))
            out = self.conv3(self.relu(self.bn3(out)))
            out = self.drop_path(out)
            return out + identity if self.residual else out

        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.drop_path(out)
        return self.relu(out + identity if self.residual else out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A residual network.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        widths: base channels per stage (ImageNet: 64..512; the CIFAR paper: 16, 32, 64).
        num_classes: size of the classifier.
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "deep" (ResNet-D: three 3x3 convs + max-pool)
            or "cifar" (one 3x3/1 conv, no pooling).
        shortcut: "B" (1x1 conv + BN projection, torchvision), "A" (parameter-free zero padding)
            or "D" (ResNet-D: average pool + 1x1 conv + BN).
        pre_activation: ResNet v2 blocks and a final BN + ReLU.
        zero_init_residual: zero the last BN gamma (v1) or last conv (v2) of every residual branch,
            so that each block starts as the identity.
        drop_path_rate: stochastic depth; block i of n drops its branch with rate * i / (n - 1).
        dropout: dropout probability before the classifier.
        norm: "batch" (BatchNorm everywhere) or "none" (no normalisation: the norm-free ablation).
        residual: False builds the plain network of the same depth (no shortcuts, no additions).
        groups, width_per_group: ResNeXt's cardinality and channels per group (bottleneck only).
        stem_width: channels of the stem (default: widths[0]; WRN-28-10 has a 16-channel stem).
        grad_checkpoint: recompute each block in the backward pass instead of storing its activations.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        stem: str = "imagenet",
        shortcut: str = "B",
        pre_activation: bool = False,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
        in_chans: int = 3,
        norm: str = "batch",
        residual: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        stem_width: int | None = None,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not 1 <= len(layers) <= 4:
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)}: 1 to 4 stages, one width each")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pre_activation = pre_activation
        self.num_classes = num_classes
        self.grad_checkpoint = grad_checkpoint
        stem_width = stem_width or widths[0]

        stem_norm = not pre_activation or stem != "cifar"  # a v2 CIFAR net starts with a bare conv
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem == "deep":
            half = stem_width // 2
            self.conv1 = nn.Sequential(
                conv3x3(in_chans, half, stride=2),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                conv3x3(half, half),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                conv3x3(half, stem_width),
            )
        elif stem == "cifar":
            self.conv1 = conv3x3(in_chans, stem_width)
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet', 'deep' or 'cifar'")
        self.bn1 = make_norm(norm, stem_width) if stem_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True) if stem_norm else nn.Identity()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem != "cifar" else nn.Identity()

        total_blocks = sum(layers)
        block_index = 0
        in_planes = stem_width
        for stage, (num_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for i in range(num_blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                out_planes = width * block.expansion
                rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(
                    block(
                        in_planes,
                        width,
                        stride=stride,
                        shortcut=make_shortcut(
                            in_planes, out_planes, stride, kind=shortcut, pre_activation=pre_activation, norm=norm
                        )
                        if residual
                        else None,
                        pre_activation=pre_activation,
                        drop_path=rate,
                        norm=norm,
                        residual=residual,
                        groups=groups,
                        base_width=width_per_group,
                    )
                )
                in_planes = out_planes
                block_index += 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        # The CIFAR paper's nets have three stages; a parameter-free layer4 keeps forward() scriptable.
        for stage in range(len(layers) + 1, 5):
            self.add_module(f"layer{stage}", nn.Identity())
        self.num_features = in_planes

        self.final_bn = make_norm(norm, in_planes) if pre_activation else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_planes, num_classes)

        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """He (fan_out) init for convs, BN at gamma=1/beta=0; the Linear keeps PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                # A plain block has no shortcut to carry the signal: zeroing its output would zero the network.
                if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                    nn.init.zeros_(m.last_norm_or_conv().weight)

    def residual_blocks(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (BasicBlock, Bottleneck))]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        # Checkpointing pays only when a backward pass follows; a frozen stem (no grad) trains as usual.
        if not torch.jit.is_scripting() and self.grad_checkpoint and self.training and x.requires_grad:
            x = self._checkpointed_stages(x)
        else:
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.pre_activation:
            x = torch.relu(self.final_bn(x))
        return x

    @torch.jit.unused
    def _checkpointed_stages(self, x: Tensor) -> Tensor:
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage.children() if isinstance(stage, nn.Sequential) else ():
                x = checkpoint(_run_once_updating_norm_stats(block), x, use_reentrant=True)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _run_once_updating_norm_stats(block: nn.Module):
    """`block` as a function whose recomputation (in the backward pass) leaves BatchNorm's running
    statistics as the first call left them, so a checkpointed step updates them once, as a plain one does."""
    calls = 0

    def run(x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(x)
        with _norm_stats_kept(block):
            return block(x)

    return run


@contextmanager
def _norm_stats_kept(module: nn.Module) -> Iterator[None]:
    """BatchNorm updates copies of its buffers, then gets its own back untouched (the recomputed graph
    keeps the copies: changing the originals in place would invalidate what autograd saved)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    originals = [dict(m._buffers) for m in norms]
    for m in norms:
        for name, buffer in m._buffers.items():
            if buffer is not None:
                m._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for m, buffers in zip(norms, originals):
            m._buffers.update(buffers)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters (what a fine-tune re-initialises)."""
    return [f"fc.{name}" for name, _ in model.fc.named_parameters()]
