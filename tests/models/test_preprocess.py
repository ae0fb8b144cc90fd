"""The shared inference input path and top-k labels."""

import io

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import v2

from models import EncodedImageTransform, PreprocessSpec, eval_transform, top_k_labels
from models.imageio import ImageDecodeError


def test_encoded_image_transform_is_decode_then_the_validation_transform():
    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, "PNG")  # lossless, so draft mode cannot differ
    spec = PreprocessSpec(input_size=64, resize_size=72)
    x = EncodedImageTransform(spec)(buffer.getvalue())
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, eval_transform(spec)(Image.fromarray(skdata.chelsea())))
    pixels = EncodedImageTransform(spec).pixels(buffer.getvalue())
    reference = v2.Normalize(spec.mean, spec.std)(v2.ToDtype(torch.float32, scale=True)(pixels))
    torch.testing.assert_close(x, reference, rtol=0, atol=1e-6)  # torchvision's (x / 255 - mean) / std
    with pytest.raises(ImageDecodeError):
        EncodedImageTransform(spec)(b"not an image")
    with pytest.raises(ImageDecodeError):
        EncodedImageTransform(spec).pixels(b"not an image")
    with pytest.raises(ImageDecodeError):
        EncodedImageTransform(spec, max_pixels=1000)(buffer.getvalue())  # 451x300 > 1000 pixels


def test_a_batch_normalised_at_once_equals_each_image_normalised_alone():
    """The handler normalises the stacked uint8 pixels of a batch; that must be exactly the per-image input."""
    to_input = EncodedImageTransform(PreprocessSpec(input_size=64, resize_size=72))
    encoded = []
    for name in ("chelsea", "coffee", "astronaut"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skdata, name)()).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    crops = [to_input.pixels(data) for data in encoded]
    pixels = torch.stack(crops)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 64, 64)
    batch = to_input.batch(crops)
    assert torch.equal(batch, to_input.normalize(pixels))
    alone = [to_input(data) for data in encoded]
    assert torch.equal(batch, torch.stack(alone))
    # A crop can be a strided view of HWC pixels; the network's input is contiguous NCHW all the same.
    assert all(x.is_contiguous() for x in alone) and batch.is_contiguous()
    floats = pixels.float() / 255
    untouched = floats.clone()
    torch.testing.assert_close(to_input.normalize(floats), batch)  # [0, 1] floats normalise the same way
    assert torch.equal(floats, untouched)  # and the caller's float batch is not overwritten


def test_top_k_labels_is_ordered_and_capped_at_the_class_count():
    probabilities = torch.tensor([0.1, 0.6, 0.3])
    assert top_k_labels(probabilities, ["a", "b", "c"], 2) == [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    assert [name for name, _ in top_k_labels(probabilities, ["a", "b", "c"], 10)] == ["b", "c", "a"]
