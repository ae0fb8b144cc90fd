"""Image decoders for the training input: encoded bytes -> what the training transform starts from.

  pil     PIL, converted to RGB (what torchvision's ImageFolder does; the reference)
  turbo   torchvision.io.decode_image (libjpeg-turbo for JPEG, libpng for PNG) straight to a uint8 tensor,
          no PIL image in between; the same pixels as `pil` (libjpeg-turbo both, same settings: tested);
          other formats (BMP, TIFF, GIF, WebP, 16-bit PNG) go through PIL, so every file reads as with `pil`
  draft   the random-resized crop fused into the decode: the crop is drawn from the image's header size
          (the same draw as v2.RandomResizedCrop), then a JPEG is decoded at 1/2, 1/4 or 1/8 scale
          (libjpeg's DCT scaling, PIL's draft mode) as far as the crop stays at least twice the output,
          then resized. It pays for large photos; an ImageNet-size image (~500x375)
          cropped to 224 is almost never large enough, so there it decodes like `turbo`.
          Within DRAFT_TOLERANCE of `pil` (mean absolute difference, 0-255 levels: tested)
  region  the random-resized crop fused into the decode too: the crop is drawn from the header size, and
          only that region of a JPEG is decoded (imagedata/jpeg_region.py: libjpeg-turbo's cropped decode
          through nvImageCodec), then resized. The same pixels as `turbo` and `pil` (tested); other
          formats and JPEGs it cannot decode go through `turbo`
  cuda    a batch of JPEGs decoded on the GPU (torchvision.io.decode_jpeg(device="cuda")), then cropped,
          resized and flipped there (train/gpu_decode.py); picked by `auto` when training on CUDA

All give uint8 images; normalisation happens on the device (`models.normalize_batch`). `auto` is `region`
on the CPU where nvImageCodec is installed, else `turbo` (and `cuda` for shards when training on a GPU).
Folder and shard training both decode this way; validation, parity and calibration sets keep `pil`, the
serving path's decoder.
torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec (a DeprecationWarning);
they work on every torchvision this project supports (0.26 with torch 2.11 to 0.29).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from . import jpeg_region

DECODERS = ("auto", "pil", "turbo", "draft", "region", "cuda")
DRAFT_SCALES = (8, 4, 2)
DRAFT_MARGIN = 2  # the drafted crop stays at least twice the output, so the final antialiased resize still smooths
TURBO_FORMATS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG: what libjpeg-turbo and libpng decode here
DRAFT_TOLERANCE = 4.0  # mean |draft - pil| in 0-255 levels per image (the tests see up to 3.5 at 32px outputs)


def decode_pil(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_turbo(data: bytes) -> torch.Tensor:
    """uint8 CHW (its memory is HWC, as decoded: the uint8 resize kernels' fast layout)."""
    if not data.startswith(TURBO_FORMATS):
        return v2.functional.pil_to_tensor(decode_pil(data))
    try:
        pixels = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:  # torchvision's decoders raise RuntimeError on bad data
        raise ValueError(f"not a decodable image ({e})") from None
    return pixels if pixels.dtype == torch.uint8 else v2.functional.pil_to_tensor(decode_pil(data))


def read_bytes(path: str) -> bytes:
    """An ImageFolder loader that leaves decoding to the transform (`DecodeAndTransform`)."""
    with open(path, "rb") as file:
        return file.read()


class DecodeAndTransform:
    """A file's bytes -> a training decoder -> the rest of the training transform (picklable, for workers)."""

    def __init__(self, name: str, transform: v2.Compose | None):
        self.decode, self.transform = cpu_decoder(name, transform)

    def __call__(self, data: bytes) -> Any:
        image = self.decode(data)
        return image if self.transform is None else self.transform(image)


def cpu_decoder_name(name: str | None) -> str:
    """The decoder CPU loader workers run for a `--decoder` choice: `auto` decodes with `region` where
    nvImageCodec is installed, else `turbo`; `cuda` with `turbo` (train/gpu_decode.py takes shard JPEG
    batches to the GPU when it applies). `region` without nvImageCodec is refused, saying what to install."""
    name = name or "auto"
    if name not in DECODERS:
        raise ValueError(f"decoder {name!r}: expected one of {', '.join(DECODERS)}")
    if name == "auto":
        return "region" if jpeg_region.available() else "turbo"
    if name == "region" and not jpeg_region.available():
        raise ValueError(jpeg_region.MISSING)
    return "turbo" if name == "cuda" else name


def header_size(image: Image.Image) -> tuple[int, int]:
    return image.size[1], image.size[0]  # (height, width), read from the header only


def draw_box(crop: v2.RandomResizedCrop, height: int, width: int) -> dict[str, int]:
    """`crop`'s box (top, left, height, width) for an image of that size: the same draw, from the same RNG,
    as `crop` makes on the decoded image."""
    return crop.make_params([tv_tensors.Image(torch.empty(0, height, width, dtype=torch.uint8))])


class DraftResizedCrop:
    """bytes -> `crop` (a v2.RandomResizedCrop) of the image as uint8 CHW, decoding JPEGs at reduced scale
    when the crop allows."""

    def __init__(self, crop: v2.RandomResizedCrop):
        self.crop = crop

    def __call__(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            height, width = header_size(image)
            box = draw_box(self.crop, height, width)
            out_h, out_w = self.crop.size
            room = min(box["height"] / out_h, box["width"] / out_w)
            scale = next((s for s in DRAFT_SCALES if room >= DRAFT_MARGIN * s), 1)
            if image.format == "JPEG" and scale > 1:
                image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
            pixels = v2.functional.pil_to_tensor(image.convert("RGB"))
        fy, fx = pixels.shape[1] / height, pixels.shape[2] / width  # 1 unless drafted
        top, left = round(box["top"] * fy), round(box["left"] * fx)
        h = max(1, min(round(box["height"] * fy), pixels.shape[1] - top))
        w = max(1, min(round(box["width"] * fx), pixels.shape[2] - left))
        return v2.functional.resized_crop(
            pixels, top, left, h, w, list(self.crop.size), interpolation=self.crop.interpolation, antialias=True
        )


class RegionResizedCrop:
    """bytes -> `crop` (a v2.RandomResizedCrop) of the image as uint8 CHW, decoding only the crop box of a
    JPEG; what `jpeg_region` leaves (other formats, a truncated JPEG) is decoded whole by `turbo`, then
    cropped. Made per process on first use: nvImageCodec's decoder does not cross a fork or a pickle."""

    def __init__(self, crop: v2.RandomResizedCrop):
        self.crop = crop

    def __call__(self, data: bytes) -> torch.Tensor:
        regions = jpeg_region.jpeg_regions()
        stream = regions.open(data)
        if stream is not None:
            box = draw_box(self.crop, stream.height, stream.width)
            pixels = regions.decode(stream, box["top"], box["left"], box["height"], box["width"])
            if pixels is not None:
                return v2.functional.resize(
                    pixels, list(self.crop.size), interpolation=self.crop.interpolation, antialias=True
                )
        return self.crop(decode_turbo(data))


FUSED_CROPS = {"draft": DraftResizedCrop, "region": RegionResizedCrop}  # decoders that draw the crop themselves


def cpu_decoder(name: str, transform: v2.Compose | None) -> tuple[Callable[[bytes], Any], Callable | None]:
    """(decode, the transform to run after it) for a CPU decoder name; `draft` and `region` take over the
    transform's random-resized crop (its first op after ToImage), or fall back to `turbo` when there is none."""
    if name == "pil":
        return decode_pil, transform
    crop = random_resized_crop(transform)
    if name in FUSED_CROPS and crop is not None:
        rest = [op for op in transform.transforms if op is not crop]
        return FUSED_CROPS[name](crop), v2.Compose(rest)
    if name == "turbo" or name in FUSED_CROPS:
        return decode_turbo, transform
    raise ValueError(f"decoder {name!r}: expected one of {', '.join(DECODERS)}")


def random_resized_crop(transform: v2.Compose | None) -> v2.RandomResizedCrop | None:
    """The transform's RandomResizedCrop when it is the first op that draws random numbers."""
    ops = list(transform.transforms) if isinstance(transform, v2.Compose) else []
    ops = [op for op in ops if not isinstance(op, v2.ToImage)]
    return ops[0] if ops and isinstance(ops[0], v2.RandomResizedCrop) else None
