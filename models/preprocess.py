"""The preprocessing spec: the one source of truth for resize, crop, interpolation, mean and std.

It travels with the checkpoint (`Checkpoint.preprocess`) into the export manifest and the server, and
`eval_resize_crop` + `normalize_batch` are the single implementation that training's validation,
export's parity set, the TorchServe handler and `client --local` all call (per image through
`eval_transform` / `EncodedImageTransform`, or per batch), so they can never disagree.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from .imageio import DEFAULT_MAX_PIXELS, decode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the network's input at evaluation time.

    `resize_size` is the shorter side after resizing, `input_size` the square center crop the
    network sees. Pixels are scaled to [0, 1], then normalised with `mean`/`std` in RGB order.
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"preprocess interpolation {self.interpolation!r} is not one of {sorted(_INTERPOLATIONS)}")
        if self.resize_size < self.input_size:
            raise ValueError(f"preprocess resize_size ({self.resize_size}) must be >= input_size ({self.input_size})")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocess mean and std need three values (R, G, B)")
        if self.channel_order != "RGB" or self.layout != "NCHW":
            raise ValueError("only RGB channel order and NCHW layout are supported")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocess keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def with_input_size(self, input_size: int) -> PreprocessSpec:
        """The same crop ratio at another resolution (e.g. 288 instead of 224)."""
        resize = int(round(input_size / self.crop_pct))
        return dataclasses.replace(self, input_size=input_size, resize_size=max(resize, input_size))


def interpolation_mode(spec: PreprocessSpec) -> InterpolationMode:
    return _INTERPOLATIONS[spec.interpolation]


def eval_resize_crop(spec: PreprocessSpec) -> v2.Compose:
    """PIL image or uint8 tensor -> uint8 CHW tensor, resized and center-cropped (no normalisation).

    Loaders use this so that batches travel as uint8 and are normalised on the device.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(spec.resize_size, interpolation=interpolation_mode(spec), antialias=True),
            v2.CenterCrop(spec.input_size),
        ]
    )


def eval_transform(spec: PreprocessSpec) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float32 CHW tensor: the validation transform.

    `eval_resize_crop` then `normalize_batch`, the same two steps that training's validation loader
    and export's parity set take (there on whole batches), so every path gives identical tensors.
    """
    return v2.Compose([eval_resize_crop(spec), v2.Lambda(functools.partial(normalize_batch, spec=spec))])


class EncodedImageTransform:
    """Encoded image bytes -> the network's input (normalised float32 CHW).

    `decode_image` (JPEG draft mode down to the resize size, pixel limit checked from the header), then
    `eval_resize_crop` and `normalize_batch`: the one path from a file to a tensor for the server
    handler, `client --local`, `train --predict` and the benchmarks. Callers with several images take
    `pixels` per image and `batch` once (one vectorised pass instead of one per image).
    Raises `models.imageio.ImageDecodeError` for bad images.
    """

    def __init__(self, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.resize_crop = eval_resize_crop(spec)

    def decode(self, data: bytes) -> Image.Image:
        """The RGB PIL image, decoded at most at the resize size (JPEG draft mode)."""
        return decode_image(data, max_pixels=self.max_pixels, draft_size=self.spec.resize_size)

    def resized(self, image: Image.Image) -> torch.Tensor:
        """A decoded RGB image -> resized and center-cropped uint8 CHW pixels, not yet normalised."""
        return self.resize_crop(rgb_tensor(image))

    def pixels(self, data: bytes) -> torch.Tensor:
        """`decode`, then `resized`."""
        return self.resized(self.decode(data))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 CHW or NCHW -> the network's float32 input."""
        return normalize_batch(pixels, self.spec)

    def batch(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Several images' `pixels` -> one normalised float32 NCHW batch.

        Each (strided) crop is converted straight into its slot of the float batch: one pass instead of
        `torch.stack`'s uint8 copy and then the float copy.
        """
        batch = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.float32)
        for image, slot in zip(pixels, batch):
            slot.copy_(image)
        return _normalize_(batch, self.spec, UINT8_SCALE)

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.normalize(self.pixels(data))


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> uint8 CHW tensor (a view of HWC pixels, as `v2.ToImage` gives).

    Pillow's bytes copied once into a writable buffer, which is cheaper than `v2.ToImage`'s
    `np.array(image, copy=True)` (equal pixels).
    """
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1)


UINT8_SCALE = 1 / 255


def normalize_batch(batch: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (or [0, 1] float) NCHW batch or CHW image -> normalised float32, on whatever device it lives on."""
    # One copy into a fresh contiguous float tensor: the in-place ops below must not touch the caller's
    # batch, and a single center crop is a strided view of HWC pixels, on which they run slower.
    x = batch.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return _normalize_(x, spec, UINT8_SCALE if batch.dtype == torch.uint8 else 1.0)


def _normalize_(x: torch.Tensor, spec: PreprocessSpec, pixel_scale: float) -> torch.Tensor:
    """In place: (x * pixel_scale - mean) / std, as one multiply and one subtraction per element."""
    scale = torch.tensor([pixel_scale / s for s in spec.std], device=x.device, dtype=x.dtype).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(spec.mean, spec.std)], device=x.device, dtype=x.dtype).view(3, 1, 1)
    return x.mul_(scale).sub_(shift)
