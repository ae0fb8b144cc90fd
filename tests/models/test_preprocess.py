"""The shared inference input path and top-k labels."""

import io

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from models import EncodedImageTransform, PreprocessSpec, eval_transform, top_k_labels
from models.imageio import ImageDecodeError


def test_encoded_image_transform_is_decode_then_the_validation_transform():
    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, "PNG")  # lossless, so draft mode cannot differ
    spec = PreprocessSpec(input_size=64, resize_size=72)
    x = EncodedImageTransform(spec)(buffer.getvalue())
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x, eval_transform(spec)(Image.fromarray(skdata.chelsea())))
    with pytest.raises(ImageDecodeError):
        EncodedImageTransform(spec)(b"not an image")
    with pytest.raises(ImageDecodeError):
        EncodedImageTransform(spec, max_pixels=1000)(buffer.getvalue())  # 451x300 > 1000 pixels


def test_top_k_labels_is_ordered_and_capped_at_the_class_count():
    probabilities = torch.tensor([0.1, 0.6, 0.3])
    assert top_k_labels(probabilities, ["a", "b", "c"], 2) == [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    assert [name for name, _ in top_k_labels(probabilities, ["a", "b", "c"], 10)] == ["b", "c", "a"]
