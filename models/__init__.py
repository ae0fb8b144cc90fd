"""ResNets written from scratch with torchvision's key names, their weights, preprocessing and labels."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_from_checkpoint
from .labels import imagenet_class_names, top_k_labels
from .preprocess import EncodedImageTransform, PreprocessSpec, eval_resize_crop, eval_transform, normalize_batch
from .pretrained import PretrainedWeights, load_pretrained
from .registry import create_model, get_model_spec, list_models
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "BasicBlock", "Bottleneck", "Checkpoint", "CheckpointError", "EncodedImageTransform", "PreprocessSpec", "PretrainedWeights", "ResNet",
    "create_model", "eval_resize_crop", "eval_transform", "get_model_spec",
    "imagenet_class_names", "list_models", "load_checkpoint", "load_pretrained", "model_from_checkpoint",
    "normalize_batch", "top_k_labels",
]  # fmt: skip
