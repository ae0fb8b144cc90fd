"""`python -m client --local`: the server's predictions with no server, for the same real images."""

from __future__ import annotations

import json

import pytest

from models.imageio import ImageDecodeError, decode_image

from .conftest import assert_same_predictions


@pytest.mark.parametrize("fmt", [None, "torchscript"], ids=["fastest", "torchscript"])
def test_local_predictions_equal_the_servers(digits_export, torchserve_url, digit_images, run_client, fmt):
    status, out, err = run_client(digit_images, "--url", torchserve_url, "--model", "digits", "--json")
    assert status == 0, err
    served = json.loads(out)["results"]
    status, out, err = run_client(digit_images, "--local", digits_export, "--json", *(["--format", fmt] if fmt else []))
    assert status == 0, err
    local = json.loads(out)
    assert local["export"] == str(digits_export) and local["format"] == (fmt or "onnx")
    assert [r["image"] for r in local["results"]] == [r["image"] for r in served]
    for remote_result, local_result in zip(served, local["results"]):
        assert_same_predictions(local_result["predictions"], remote_result["predictions"])


def test_local_table_matches_remote_layout(digits_export, torchserve_url, digit_images, run_client):
    image = next((digit_images / "4").iterdir())
    remote = run_client(image, "--url", torchserve_url, "--model", "digits", "--top-k", 3)
    local = run_client(image, "--local", digits_export, "--top-k", 3)
    assert remote[0] == local[0] == 0
    # Same rows (path, header, rank, label); probabilities agree to the printed 0.01%.
    assert [line.split()[:2] for line in local[1].splitlines()] == [line.split()[:2] for line in remote[1].splitlines()]


def test_local_bad_image_gets_the_decoder_message(digits_export, tmp_path, run_client):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    status, out, _ = run_client(bad, "--local", digits_export)
    assert status == 1
    try:
        decode_image(b"")
    except ImageDecodeError as e:
        assert f"error: {e}" in out


def test_local_missing_export_is_a_clear_error(tmp_path, digit_images, run_client):
    status, out, err = run_client(digit_images, "--local", tmp_path / "exports" / "nothing")
    assert status == 4 and out == ""
    assert "cannot load the export" in err and "manifest" in err and "Traceback" not in err
