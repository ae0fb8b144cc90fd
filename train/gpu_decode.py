"""The `cuda` decoder: loader workers only read the JPEG headers and draw each image's crop and flip; the
training process decodes the whole batch on the GPU (`torchvision.io.decode_jpeg(device="cuda")`, one
batched nvJPEG call) and crops, resizes and flips there, giving the uint8 NCHW batch on the device.

It covers the standard training input (random-resized crop, optional horizontal flip); the crop and flip
are drawn exactly as v2.RandomResizedCrop and v2.RandomHorizontalFlip draw them, from the same seeded RNG,
so with the same seed it crops what the CPU path crops. Images that are not JPEG (PNG) take the CPU path
in the worker and travel as pixels. `auto` picks it when training on CUDA with such a transform.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from imagedata.decoders import decode_turbo, draw_box, header_size

from .unreadable import UnreadableImage

JPEG_MAGIC = b"\xff\xd8"
GPU_TOLERANCE = (
    2.0  # mean |cuda - turbo| in 0-255 levels per image (nvJPEG vs libjpeg-turbo IDCT); checked where CUDA is
)
PLAIN_OPS = (v2.ToImage, v2.ToPureTensor)


@dataclass(frozen=True)
class DevicePlan:
    """What the device does after decoding: the crop, and the flip probability (0: no flip)."""

    crop: v2.RandomResizedCrop
    flip_p: float


def device_plan(transform: v2.Compose | None) -> DevicePlan | None:
    """The plan when `transform` is exactly [ToImage,] RandomResizedCrop[, RandomHorizontalFlip][, ToPureTensor]."""
    ops = [op for op in getattr(transform, "transforms", []) if not isinstance(op, PLAIN_OPS)]
    if not ops or not isinstance(ops[0], v2.RandomResizedCrop) or len(ops) > 2:
        return None
    if len(ops) == 2 and not isinstance(ops[1], v2.RandomHorizontalFlip):
        return None
    return DevicePlan(ops[0], float(ops[1].p) if len(ops) == 2 else 0.0)


@dataclass(frozen=True)
class Encoded:
    data: torch.Tensor  # the JPEG file's bytes, uint8 1-D
    box: tuple[int, int, int, int]  # top, left, height, width in the full image
    flip: bool


class EncodedCrop:
    """Worker side: bytes -> `Encoded` (a JPEG: header read, crop and flip drawn), or the finished pixels."""

    def __init__(self, plan: DevicePlan, cpu_transform: v2.Compose):
        self.plan, self.cpu_transform = plan, cpu_transform

    def __call__(self, data: bytes) -> Encoded | torch.Tensor:
        if not data.startswith(JPEG_MAGIC):
            return self.cpu_transform(decode_turbo(data))
        with Image.open(io.BytesIO(data)) as image:
            height, width = header_size(image)
        box = draw_box(self.plan.crop, height, width)
        flip = self.plan.flip_p > 0 and bool(torch.rand(1) < self.plan.flip_p)  # v2's draw: skipped when >= p
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return Encoded(encoded, (box["top"], box["left"], box["height"], box["width"]), flip)


def collate_encoded(samples: list[Any]) -> tuple[list[Any] | None, torch.Tensor | None, list[UnreadableImage]]:
    """(the batch's Encoded images or pixels, labels, unreadable) for `decode_batch` in the training process."""
    kept = [s for s in samples if not isinstance(s, UnreadableImage)]
    skipped = [s for s in samples if isinstance(s, UnreadableImage)]
    if not kept:
        return None, None, skipped
    return [image for image, _ in kept], torch.tensor([label for _, label in kept]), skipped


def decode_batch(
    items: list[Encoded | torch.Tensor], plan: DevicePlan, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """uint8 NCHW on `device` (NHWC memory if asked): the JPEGs decoded in one batched call, cropped,
    resized and flipped there."""
    jpegs = [item for item in items if isinstance(item, Encoded)]
    decoded = iter(decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else [])
    out = torch.empty((len(items), 3, *plan.crop.size), dtype=torch.uint8, device=device)
    out = out.contiguous(memory_format=torch.channels_last) if channels_last else out
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            out[i] = item.to(device, non_blocking=True)
            continue
        pixels = v2.functional.resized_crop(
            next(decoded), *item.box, list(plan.crop.size), interpolation=plan.crop.interpolation, antialias=True
        )
        out[i] = pixels.flip(-1) if item.flip else pixels
    return out


class DeviceDecodedBatches:
    """A shard loader whose batches are decoded on `device` as they come out (`len`, `dataset` as the loader's)."""

    def __init__(self, loader: torch.utils.data.DataLoader, plan: DevicePlan, device: torch.device):
        self.loader, self.plan, self.device = loader, plan, device
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, list[UnreadableImage]]]:
        for items, labels, skipped in self.loader:
            channels_last = self.dataset.stream.channels_last
            images = decode_batch(items, self.plan, self.device, channels_last) if items else None
            yield images, labels, skipped
