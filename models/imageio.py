"""Image bytes -> RGB PIL image, safely: the one decoder the server handler and `client --local` share.

What it accepts: JPEG (and MPO, the multi-picture JPEG that phones write), PNG, WebP, BMP and GIF
(the first frame of an animation); any of their modes: grayscale, palette, RGBA, CMYK, 16-bit. The
EXIF orientation tag is applied, so a portrait photo taken with a rotated phone is seen upright.

Transparency is composited onto white rather than dropped: the colour stored under fully
transparent pixels is arbitrary (often black, sometimes garbage), while white is what a viewer shows
and is the same every time.

What it refuses, with an `ImageDecodeError` whose message says what was wrong:
- zero bytes, and data that is not one of the formats above;
- images with more than `max_pixels` pixels, judged from the header before any pixel is decoded
  (a 100 kB PNG can claim 100000 x 100000 pixels and take 30 GB to decode: a decompression bomb);
  formats that can only decode at full size (PNG, WebP, GIF, BMP) have the lower `max_full_pixels`
  ceiling, because every one of their pixels is decoded whatever size the model needs (a 2.5 kB
  lossless WebP of 8000 x 8000 pixels costs seconds), while a JPEG decodes at reduced scale;
- with `draft_size`, images so elongated that resizing their shorter side to `draft_size` would make
  more than `max_pixels` pixels (the same bomb, delivered by the resize);
- truncated or corrupt files (Pillow's `LOAD_TRUNCATED_IMAGES` is left off, so a truncated JPEG is an
  error instead of a half-grey picture).

`draft_size` makes large JPEGs decode fast: libjpeg can decode at 1/2, 1/4 or 1/8 scale directly from
the DCT coefficients, and Pillow's draft mode picks the smallest scale whose result still has a
shorter side of at least `draft_size` (pass the preprocessing `resize_size`). A 12-megapixel photo
then decodes at about a sixteenth of the cost.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's JPEG opener also returns MPO images (multi-picture JPEGs, as phones write them).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

# 64 megapixels: above any phone or DSLR photo today (48 MP = 8064 x 6048), below Pillow's own
# bomb threshold (~89 MP), and at most ~200 MB of RGB pixels per image. A JPEG that large decodes in
# draft mode at a fraction of that.
DEFAULT_MAX_PIXELS = 64_000_000
# Formats decoded at full size whatever the model needs: 4096 x 4096 holds screenshots and ordinary
# lossless photos and keeps one image's decode well under a second.
DEFAULT_MAX_FULL_PIXELS = 4096 * 4096
DRAFT_FORMATS = ("JPEG", "MPO")  # libjpeg decodes at 1/2, 1/4 or 1/8 scale

BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not an image we can (or will) decode; the message says why."""


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_full_pixels: int = DEFAULT_MAX_FULL_PIXELS,
) -> Image.Image:
    """Decode image bytes into an RGB PIL image, refusing what should not be decoded (see module doc).

    `draft_size`: the shorter side the caller will resize to; JPEGs are decoded at the smallest
    power-of-two reduction that keeps both sides at least that large, and images whose resize would
    exceed `max_pixels` are refused. None decodes at full size. `max_full_pixels` caps the formats
    that always decode at full size (never above `max_pixels`).
    """
    image = open_image(data, max_pixels=max_pixels, draft_size=draft_size, max_full_pixels=max_full_pixels)
    fmt, (width, height) = image.format, image.size
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # not a copy of every upright image's pixels
        return _to_rgb(image)
    except Exception as e:
        # Pillow reports damaged data as OSError, SyntaxError, ValueError, EOFError, zlib or struct
        # errors depending on the format; whichever it is, the request's image is what is broken.
        raise ImageDecodeError(
            f"truncated or corrupt {fmt} image ({width}x{height}): {type(e).__name__}: {e}"
        ) from None


def decoded_pixels(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_full_pixels: int = DEFAULT_MAX_FULL_PIXELS,
) -> int:
    """How many pixels `decode_image` with the same arguments would decode, from the header alone
    (JPEG: after the draft-mode reduction); raises `ImageDecodeError` for what it would refuse.
    Lets a caller bound the work of a whole request before decoding any of it."""
    width, height = open_image(data, max_pixels=max_pixels, draft_size=draft_size, max_full_pixels=max_full_pixels).size
    return width * height


def pixel_counts(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_full_pixels: int = DEFAULT_MAX_FULL_PIXELS,
) -> tuple[int, int]:
    """(pixels the file holds, pixels `decode_image` decodes), from the header alone; raises
    `ImageDecodeError` for what it would refuse. The first prices the decoding (libjpeg reads every
    coefficient even when it scales by 1/8, a progressive file in several passes), the second bounds memory."""
    decoded = decoded_pixels(data, max_pixels=max_pixels, draft_size=draft_size, max_full_pixels=max_full_pixels)
    width, height = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS).size  # already read once: cannot fail
    return width * height, decoded


def open_image(data: bytes, *, max_pixels: int, draft_size: int | None, max_full_pixels: int) -> Image.Image:
    """The image opened lazily (header read, no pixel decoded), checked against the limits and, for a
    JPEG with `draft_size`, set to decode at reduced scale (its `size` is then the decoded size)."""
    if not data:
        raise ImageDecodeError("empty image: 0 bytes received")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a supported image ({', '.join(SUPPORTED_FORMATS)}); {len(data)} bytes starting with {data[:16]!r}"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own, far larger, limit
        raise ImageDecodeError(f"image too large to decode: {e}") from None
    except Exception as e:  # a header so broken that the format plugin itself fails
        raise ImageDecodeError(f"corrupt image header: {type(e).__name__}: {e}") from None

    fmt, (width, height) = image.format, image.size
    limit = max_pixels if fmt in DRAFT_FORMATS else min(max_pixels, max_full_pixels)
    if width * height > limit:
        which = "" if limit == max_pixels else f" for {fmt}, which decodes every pixel (JPEG may have {max_pixels:,})"
        raise ImageDecodeError(
            f"{fmt} image is {width}x{height} = {width * height:,} pixels, above the limit of {limit:,}{which}; "
            "refused before decoding (decompression bomb guard)"
        )
    if draft_size is not None:
        # A 1 x 1,000,000 strip is few pixels, but resizing its shorter side to 256 makes 256 x 256 million.
        short, long = sorted((width, height))
        resized = draft_size * math.ceil(draft_size * long / short)
        if resized > max_pixels:
            raise ImageDecodeError(
                f"{fmt} image is {width}x{height}: resizing its shorter side to {draft_size} would make {resized:,} "
                f"pixels, above the limit of {max_pixels:,}; refused for its extreme aspect ratio"
            )
        if fmt in DRAFT_FORMATS:
            try:
                image.draft("RGB", (draft_size, draft_size))
            except Exception as e:
                raise ImageDecodeError(f"corrupt {fmt} header ({width}x{height}): {type(e).__name__}: {e}") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # 16-bit grayscale: Pillow's convert() clips at 255 instead of scaling, so scale it here, in
        # uint16 (2 bytes a pixel; no wider temporary).
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))  # 2-D uint8 -> mode "L"
    elif image.mode == "I":
        pixels = np.array(image, dtype=np.int32)  # 32-bit grayscale: one writable copy, clipped in place
        np.clip(pixels, 0, 65535, out=pixels)
        np.right_shift(pixels, 8, out=pixels)
        image = Image.fromarray(pixels.astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image
