"""`python -m client evaluate`: on the digits, the checkpoint (`train --evaluate`), its ONNX artifact
(`--local`) and the served model (`--url`, a real TorchServe) give the same top-1; bad input gets the
client's exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from serve.server import free_ports
from train.cli import main as train_main

DIGITS_VAL_IMAGES = 360
ONE_IMAGE = 100.0 / DIGITS_VAL_IMAGES  # the parity tolerance: argmax may flip on at most one near-tie


def report_in(out: Path) -> dict:
    report = json.loads((out / "evaluation.json").read_text())
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG"
    return report


def test_checkpoint_onnx_artifact_and_served_model_agree_on_the_digits(
    digits_checkpoint, digits_export, torchserve_url, run_client, tmp_path, capsys
):
    assert train_main(["--evaluate", "--checkpoint", str(digits_checkpoint), "--eval-out", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    status, out, err = run_client(
        "evaluate", "--local", digits_export, "--format", "onnx", "--data", "digits", "--out", tmp_path / "onnx"
    )
    assert status == 0, err
    assert "(onnx on cpu)" in out and "360 images, top-1" in out
    status, out, err = run_client(
        "evaluate", "--url", torchserve_url, "--model", "digits", "--data", "digits", "--out", tmp_path / "served"
    )
    assert status == 0, err
    assert f"model 'digits' at {torchserve_url}" in out and "warning" not in err

    reports = {name: report_in(tmp_path / name) for name in ("ckpt", "onnx", "served")}
    top1 = {name: r["top1"] for name, r in reports.items()}
    assert top1["ckpt"] >= 90.0, top1
    for name in ("onnx", "served"):
        assert reports[name]["samples"] == DIGITS_VAL_IMAGES
        assert reports[name]["class_names"] == [str(i) for i in range(10)]
        assert abs(top1[name] - top1["ckpt"]) <= ONE_IMAGE + 1e-9, top1
        assert abs(reports[name]["top5"] - reports["ckpt"]["top5"]) <= ONE_IMAGE + 1e-9
    # The same images in the same classes: the confusion matrices differ by at most one moved image.
    moved = sum(
        abs(a - b)
        for ra, rb in zip(reports["onnx"]["confusion"], reports["served"]["confusion"])
        for a, b in zip(ra, rb)
    )
    assert moved <= 2, (reports["onnx"]["confusion"], reports["served"]["confusion"])


def test_a_bad_image_fails_alone_and_is_listed(digits_export, digit_images, run_client, tmp_path):
    images = shutil.copytree(digit_images, tmp_path / "images")
    (images / "3" / "broken.png").write_bytes(b"not a png at all")
    status, _, err = run_client("evaluate", "--local", digits_export, "--images", images, "--out", tmp_path / "o")
    assert status == 1 and "1 of 21 images could not be classified" in err
    report = report_in(tmp_path / "o")
    assert report["samples"] == 20
    ((failed_path, why),) = report["extra"]["failed_images"].items()
    assert failed_path.endswith("broken.png") and why


def test_folder_names_that_are_not_the_models_classes(digits_export, digit_images, run_client, tmp_path):
    images = tmp_path / "images"
    for digit, word in (("0", "zero"), ("1", "one")):
        shutil.copytree(digit_images / digit, images / word)
    status, _, err = run_client("evaluate", "--local", digits_export, "--images", images, "--out", tmp_path / "o")
    assert status == 2 and "['one', 'zero']" in err and "class names" in err
    assert not (tmp_path / "o").exists()


def test_bad_command_lines_and_unreachable_or_unknown_servers(torchserve_url, digit_images, run_client, tmp_path):
    status, _, err = run_client("evaluate", "--url", torchserve_url, "--images", digit_images)
    assert status == 2 and "--url needs --model" in err
    status, _, err = run_client("evaluate", "--local", tmp_path / "no-export", "--images", digit_images)
    assert status == 4 and "no-export" in err
    status, _, err = run_client("evaluate", "--url", torchserve_url, "--model", "digits", "--images", tmp_path)
    assert status == 2 and "no labelled images" in err
    (port,) = free_ports(1)
    status, _, err = run_client(
        "evaluate",
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        "digits",
        "--images",
        digit_images,
        "--out",
        tmp_path / "o",
    )
    assert status == 3 and "cannot connect" in err
    status, _, err = run_client(
        "evaluate",
        "--url",
        torchserve_url,
        "--model",
        "no_such_model",
        "--images",
        digit_images,
        "--out",
        tmp_path / "o",
    )
    assert status == 4 and "no_such_model" in err
    assert not (tmp_path / "o").exists()


def test_data_digits_is_the_name_and_digits_still_works_saying_so(capsys):
    """`--data digits` as in `python -m train --evaluate --data digits`; the old `--digits` keeps working."""
    from client.evaluate import build_parser

    assert build_parser().parse_args(["--local", "x", "--data", "digits"]).data == "digits"
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args(["--local", "x", "--digits"]).data == "digits"
    assert "--digits is deprecated; use --data digits" in capsys.readouterr().err
