"""See inside a ResNet: feature maps, first-layer filters, residual flow, gradient flow, dead ReLUs,
a per-layer table, the autograd graph and Grad-CAM (`python -m models.inspect --help`).

Layering: this package lives in `models` and imports nothing of ours outside it, so `train`
(`--log-internals`) and `client` (`--explain`) can use its probes. Its command line therefore reads a
labelled batch only from image files (an ImageFolder tree through the server's preprocessing), never
through `imagedata`'s datasets; `imagedata.digits.write_digits_folder` writes the digits as such a tree.
"""

from .gradcam import ClassMap, grad_cam, save_overlay, target_layer
from .probes import (
    BlockFlow,
    LayerGradient,
    LayerRow,
    StageActivity,
    feature_maps,
    gradient_flow,
    layer_table,
    registered_hooks,
    relu_activity,
    residual_flow,
)
from .report import InspectionInputs, InspectionResult, inspect_model

__all__ = [
    "BlockFlow",
    "ClassMap",
    "InspectionInputs",
    "InspectionResult",
    "LayerGradient",
    "LayerRow",
    "StageActivity",
    "feature_maps",
    "grad_cam",
    "gradient_flow",
    "inspect_model",
    "layer_table",
    "registered_hooks",
    "relu_activity",
    "residual_flow",
    "save_overlay",
    "target_layer",
]
