"""decode_image on real files of every supported kind, and on the inputs it must refuse.

The image bytes come from the `valid_images` / `invalid_images` fixtures (tests/fixtures/served.py),
the same ones the TorchServe tests send over HTTP.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.imageio import (
    DEFAULT_MAX_FULL_PIXELS,
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    decoded_pixels,
    pixel_counts,
)
from tests.fixtures.served import chelsea, encode, png_claiming_size

CAT_SIZE = (451, 300)


@pytest.mark.parametrize(
    "name",
    ["jpeg", "png", "webp", "bmp", "gif_palette", "jpeg_gray", "png_gray", "jpeg_cmyk", "png_rgba", "png_1x1"],
)
def test_every_valid_kind_decodes_to_rgb(valid_images, name):
    image = decode_image(valid_images[name])
    assert image.mode == "RGB"
    assert image.size == {"png_1x1": (1, 1), "jpeg_gray": (512, 512), "png_gray": (512, 512)}.get(name, CAT_SIZE)


@pytest.mark.parametrize("name", ["png", "webp", "bmp"])
def test_lossless_formats_keep_the_exact_pixels(valid_images, name):
    if name == "webp":  # WebP quality=90 is lossy; compare loosely
        diff = np.abs(np.asarray(decode_image(valid_images[name]), dtype=int) - np.asarray(chelsea(), dtype=int))
        assert diff.mean() < 4
    else:
        np.testing.assert_array_equal(np.asarray(decode_image(valid_images[name])), np.asarray(chelsea()))


def test_cmyk_jpeg_colours_survive(valid_images):
    from_cmyk = np.asarray(decode_image(valid_images["jpeg_cmyk"]), dtype=float)
    from_rgb = np.asarray(decode_image(valid_images["jpeg"]), dtype=float)
    assert np.abs(from_cmyk - from_rgb).mean() < 6  # same cat, same colours, not inverted


def test_grayscale_becomes_three_equal_channels(valid_images):
    pixels = np.asarray(decode_image(valid_images["png_gray"]))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_16bit_png_is_scaled_not_clipped(valid_images):
    pixels = np.asarray(decode_image(valid_images["png_gray16"]))[..., 0]
    assert pixels.size == 64 * 48
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a linear ramp: mid-grey on average, not mostly white


def test_transparent_pixels_become_white(valid_images):
    pixels = np.asarray(decode_image(valid_images["png_rgba"]))
    left, right = pixels[:, : CAT_SIZE[0] // 2], pixels[:, CAT_SIZE[0] // 2 :]
    assert (left == 255).all()
    np.testing.assert_array_equal(right, np.asarray(chelsea())[:, CAT_SIZE[0] // 2 :])


def test_palette_with_transparency_is_composited():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(1, (0, 0, 4, 8))
    image = decode_image(encode(palette, "PNG", transparency=0))
    pixels = np.asarray(image)
    assert (pixels[:, :4] == [255, 0, 0]).all() and (pixels[:, 4:] == 255).all()


def test_animated_gif_gives_its_first_frame(valid_images):
    pixels = np.asarray(decode_image(valid_images["gif_animated"]))
    assert pixels.shape == (30, 40, 3)
    assert (pixels == [255, 0, 0]).all()


def test_exif_orientation_is_applied(valid_images):
    image = decode_image(valid_images["jpeg_exif_rotated"])
    assert image.size == CAT_SIZE[::-1]  # orientation 6: rotate 90 degrees clockwise to display
    upright = np.asarray(chelsea().transpose(Image.Transpose.ROTATE_270), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - upright).mean() < 6


def test_draft_decodes_large_jpegs_at_reduced_scale_but_not_below_the_request():
    big = Image.fromarray(np.asarray(chelsea().resize((451 * 8, 300 * 8))))
    jpeg = encode(big, "JPEG", quality=90)
    assert decode_image(jpeg).size == (3608, 2400)
    for draft_size, expected in [(256, (451, 300)), (300, (451, 300)), (301, (902, 600)), (1200, (1804, 1200))]:
        image = decode_image(jpeg, draft_size=draft_size)
        assert image.size == expected and image.mode == "RGB"
        assert min(image.size) >= draft_size


def test_draft_size_is_ignored_for_other_formats(valid_images):
    assert decode_image(valid_images["png"], draft_size=64).size == CAT_SIZE


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty", "empty image: 0 bytes"),
        ("random_bytes", "not a supported image (JPEG, PNG, WEBP, BMP, GIF); 4096 bytes"),
        ("text", "starting with b'This is a text f'"),
        ("truncated_jpeg", "truncated or corrupt JPEG image (451x300)"),
        ("png_huge_dimensions", "decompression bomb"),
        ("tiff", "not a supported image"),
    ],
)
def test_invalid_inputs_are_refused_with_a_specific_message(invalid_images, name, message):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(invalid_images[name])
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # 10000 x 8000 = 80 MP: above our 64 MP default but below Pillow's own bomb limit, so this is our
    # check; the file is 100 bytes and would fail to decode, so the message proves nothing was decoded.
    bomb = png_claiming_size(10_000, 8_000)
    assert len(bomb) < 200
    expected = r"PNG image is 10000x8000 = 80,000,000 pixels, above the limit of 64,000,000; refused before decoding"
    with pytest.raises(ImageDecodeError, match=expected):
        decode_image(bomb, max_full_pixels=DEFAULT_MAX_PIXELS)
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_formats_that_decode_every_pixel_have_a_lower_ceiling_than_jpeg():
    """An 8000 x 8000 PNG (or lossless WebP: 2.5 kB) costs seconds to decode whatever the model needs;
    a JPEG of that size decodes in draft mode, so it keeps the 64 MP limit."""
    expected = (
        r"PNG image is 8000x8000 = 64,000,000 pixels, above the limit of 16,777,216 for PNG, which decodes "
        r"every pixel \(JPEG may have 64,000,000\); refused before decoding"
    )
    with pytest.raises(ImageDecodeError, match=expected):
        decode_image(png_claiming_size(8000, 8000), draft_size=256)
    webp = encode(Image.new("RGB", (4200, 4200)), "WEBP", lossless=True)
    assert len(webp) < 10_000
    with pytest.raises(ImageDecodeError, match="for WEBP, which decodes every pixel"):
        decode_image(webp)
    assert decoded_pixels(png_claiming_size(4096, 4096)) == DEFAULT_MAX_FULL_PIXELS  # at the limit: accepted


def test_a_48_megapixel_phone_jpeg_decodes_in_draft_mode():
    photo = encode(Image.new("RGB", (8064, 6048), (90, 120, 150)), "JPEG", quality=80)
    assert decoded_pixels(photo) == 8064 * 6048
    assert decoded_pixels(photo, draft_size=256) == 1008 * 756  # 1/8 scale, read from the header
    image = decode_image(photo, draft_size=256)
    assert image.size == (1008, 756) and image.getpixel((500, 400)) == pytest.approx((90, 120, 150), abs=3)
    # What decoding costs follows the file's pixels, not the drafted ones (serve/budget.py prices by it).
    assert pixel_counts(photo, draft_size=256) == (8064 * 6048, 1008 * 756)


def test_decoded_pixels_refuses_what_decode_image_refuses(invalid_images):
    for name in ("empty", "text", "png_huge_dimensions"):
        with pytest.raises(ImageDecodeError):
            decoded_pixels(invalid_images[name])
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        decoded_pixels(invalid_images["png_extreme_aspect"], draft_size=256)


def test_16bit_images_convert_without_a_wide_copy():
    """A 16-bit 4096 x 4096 grayscale PNG: the conversion allocates uint16/uint8 arrays (48 MB), never
    int64 (16 bytes a pixel: 268 MB)."""
    import tracemalloc

    ramp = (np.arange(4096 * 4096, dtype=np.uint32) % 65536).astype(np.uint16).reshape(4096, 4096)
    png = encode(Image.fromarray(ramp), "PNG", compress_level=1)
    tracemalloc.start()
    try:
        image = decode_image(png)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and image.getpixel((4095, 0)) == (15, 15, 15)  # 4095 >> 8
    assert peak < 80 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    wide = Image.fromarray(ramp.astype(np.int32))  # mode "I" (32-bit), as some PNG/TIFF paths give
    assert wide.mode == "I"
    from models.imageio import _to_rgb

    assert _to_rgb(wide).getpixel((4095, 0)) == (15, 15, 15)


def test_max_pixels_is_configurable(valid_images):
    with pytest.raises(ImageDecodeError, match="above the limit of 100,000"):
        decode_image(valid_images["jpeg"], max_pixels=100_000)
    assert decode_image(valid_images["jpeg"], max_pixels=451 * 300).size == CAT_SIZE


def test_truncated_png_is_refused():
    png = encode(chelsea(), "PNG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt PNG image"):
        decode_image(png[: len(png) * 2 // 3])


def test_extreme_aspect_ratio_is_refused_when_the_resize_would_explode():
    strip = encode(Image.new("RGB", (100_000, 1), (0, 0, 0)), "PNG")  # 100k pixels, a few hundred bytes
    assert decode_image(strip).size == (100_000, 1)  # fine on its own
    with pytest.raises(ImageDecodeError, match=r"resizing its shorter side to 256 would make 6,553,600,000 pixels"):
        decode_image(strip, draft_size=256)
    assert decode_image(encode(Image.new("RGB", (4000, 1000)), "PNG"), draft_size=256).size == (4000, 1000)
