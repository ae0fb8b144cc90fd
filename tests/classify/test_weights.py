"""`python -m train --evaluate`: a checkpoint measured on its own validation split gives the top-1 that
training recorded; a bare torchvision-format weight file evaluates with --arch, and without it (or
when the file is missing) the error says what to do."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from models import create_model, imagenet_class_names, load_checkpoint
from train.cli import main

DIGITS_VAL_IMAGES = 360  # 20% of scikit-learn's 1797 digits


def read_report(out: Path) -> dict:
    report = json.loads((out / "evaluation.json").read_text())
    with Image.open(out / "confusion.png") as png:
        png.load()
        assert png.format == "PNG" and min(png.size) > 100
    return report


def test_a_checkpoint_gives_its_own_recorded_top1(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--evaluate", "--checkpoint", str(digits_checkpoint), "--eval-out", str(out)]) == 0
    stdout = capsys.readouterr().out
    report = read_report(out)
    recorded = load_checkpoint(digits_checkpoint).metrics["top1"]
    assert math.isclose(report["top1"], recorded, abs_tol=1e-6), (report["top1"], recorded)
    assert report["samples"] == DIGITS_VAL_IMAGES and report["class_names"] == [str(i) for i in range(10)]
    assert sum(map(sum, report["confusion"])) == DIGITS_VAL_IMAGES
    assert report["top5"] >= report["top1"]
    assert f"top-1 {recorded:.2f}%" in stdout and "evaluation.json" in stdout


def test_a_bare_state_dict_evaluates_with_arch(tmp_path, capsys):
    weights = tmp_path / "resnet20.pth"
    torch.manual_seed(0)
    torch.save(create_model("resnet20", num_classes=10).state_dict(), weights)  # as torchvision publishes weights
    out = tmp_path / "eval"
    code = main(
        ["--evaluate", "--checkpoint", str(weights), "--arch", "resnet20", "--data", "digits", "--eval-out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    report = read_report(out)
    assert report["samples"] == DIGITS_VAL_IMAGES and report["class_names"] == [str(i) for i in range(10)]
    assert "resnet20 weights resnet20.pth" in report["source"]
    assert 0.0 <= report["top1"] <= report["top5"] <= 100.0


def test_a_bare_state_dict_without_arch_says_to_pass_it(tmp_path, capsys):
    weights = tmp_path / "resnet20.pth"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), weights)
    code = main(["--evaluate", "--checkpoint", str(weights), "--data", "digits", "--eval-out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "bare weight file" in err and "--arch" in err and str(weights) in err
    assert not (tmp_path / "e").exists()


def test_a_missing_checkpoint_is_named_as_missing(tmp_path, capsys):
    missing = tmp_path / "nothere.pt"
    code = main(["--evaluate", "--checkpoint", str(missing), "--eval-out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 1 and f"{missing}: no such file" in err and "bare weight file" not in err


def test_imagenet_weights_under_any_file_name_predict_class_names(torchvision_resnet18_file, tmp_path, capsys):
    """`--image` (the cheat-sheet's spelling of --predict) on a 1000-class torchvision file named anything."""
    renamed = tmp_path / "resnet18.pth"  # not torchvision's published file name
    renamed.write_bytes(torchvision_resnet18_file.read_bytes())
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(image)
    assert main(["--image", str(image), "--checkpoint", str(renamed), "--arch", "resnet18", "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split("%", 1)[1].strip() for line in lines[1:]]
    assert len(names) == 3 and all(name in imagenet_class_names() for name in names), lines


def test_evaluate_shows_torchvisions_published_accuracy_for_imagenet_weights(torchvision_resnet18_file, capsys):
    import torchvision

    code = main(
        ["--evaluate", "--checkpoint", str(torchvision_resnet18_file), "--arch", "resnet18", "--data", "synthetic"]
        + ["--num-classes", "1000", "--synthetic-size", "8", "--eval-out", str(torchvision_resnet18_file.parent)]
    )
    out = capsys.readouterr().out
    assert code == 0
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]
    assert "resnet18.IMAGENET1K_V1" in out and f"top-1 {published['acc@1']:6.3f}%" in out, out
