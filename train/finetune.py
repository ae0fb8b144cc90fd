"""Fine-tuning helpers: freeze the backbone (or the stages up to one), and keep frozen BN in eval mode."""

from __future__ import annotations

from torch import nn

from models.resnet import head_parameter_names

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_STEM_MODULES = ("conv1", "bn1")


def freeze(model: nn.Module, *, backbone: bool = False, until: str | None = None) -> list[str]:
    """Stop gradients for the backbone (everything but the classifier) or for the stem and the stages
    up to and including `until` ("stem", "layer1" .. "layer4"). Returns the frozen parameter names.

    Call it before wrapping the model in DDP: DDP records which parameters need gradients when built.
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"--freeze-until {until!r}: expected one of {', '.join(STAGES)}")
    if backbone:
        head = set(head_parameter_names(model))
        frozen = [name for name, _ in model.named_parameters() if name not in head]
    elif until is not None:
        prefixes = _STEM_MODULES + STAGES[1 : STAGES.index(until) + 1]
        frozen = [name for name, _ in model.named_parameters() if name.split(".")[0] in prefixes]
    else:
        return []
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen


def frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose affine parameters are all frozen: their running statistics stay fixed too."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in m.parameters())
        and any(True for _ in m.parameters())
    ]


def set_train_mode(model: nn.Module, frozen_norms: list[nn.Module]) -> None:
    """`model.train()`, except frozen BN layers, which stay in eval mode (fixed statistics)."""
    model.train()
    for m in frozen_norms:
        m.eval()
