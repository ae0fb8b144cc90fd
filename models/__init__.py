"""ResNets written from scratch with torchvision's key names, their weights, preprocessing and labels.

The names below are imported on first use (PEP 562), so a light module such as `models.labels` or
`models.errors` can be used without importing torch. Every registered architecture is also a builder:
`from models import resnet18; resnet18(num_classes=10)`.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

_EXPORTS = {
    "checkpoint": ("Checkpoint", "CheckpointError", "load_checkpoint", "model_from_checkpoint"),
    "labels": ("imagenet_class_names", "top_k_labels"),
    "preprocess": ("EncodedImageTransform", "PreprocessSpec", "eval_resize_crop", "eval_transform", "normalize_batch"),
    "pretrained": ("PretrainedWeights", "load_pretrained"),
    "registry": ("create_model", "get_model_spec", "list_models"),
    "resnet": ("BasicBlock", "Bottleneck", "ResNet"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)
_ARCH_NAME = re.compile(r"(cifar_)?(preact_)?(resnet|resnext|wide_resnet|wrn)\d")  # looked up in the registry


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif _ARCH_NAME.match(name) and name in importlib.import_module(".registry", __name__).list_models():
        value = importlib.import_module(".registry", __name__).model_builder(name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
