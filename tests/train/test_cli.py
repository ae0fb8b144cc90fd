"""The command line: recipes, overrides, clear errors with meaningful exit codes, --predict."""

from __future__ import annotations

import pytest
import yaml

from imagedata.digits import write_digits_folder
from train.cli import main
from train.config import DEFAULTS, list_recipes, load_recipe, resolve_config

QUIET = ["--no-tensorboard", "--no-plots", "--workers", "0"]


def test_list_recipes(capsys):
    assert main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    for name in (
        "imagenet_original",
        "imagenet_modern",
        "cifar_standard",
        "cifar_paper",
        "cifar_modern",
        "cifar_baseline",
        "finetune",
        "digits",
    ):
        assert name in out


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_resolves(name):
    recipe = load_recipe(name)
    assert set(recipe) <= set(DEFAULTS)
    config = resolve_config({"arch": "resnet50"} if name == "finetune" else {}, name)
    assert config.recipe == name


def test_flags_override_the_recipe_and_the_config_is_written(tmp_path, cifar_root, capsys):
    code = main(
        [
            "--recipe",
            "cifar_paper",
            "--data-dir",
            str(cifar_root),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "0.05",
            "--out",
            str(tmp_path),
            "--name",
            "p",
            *QUIET,
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    assert config["lr"] == 0.05 and config["epochs"] == 1  # flags
    assert config["milestones"] == [80, 120] and config["weight_decay"] == 1e-4  # recipe
    assert config["arch"] == "resnet20" and config["recipe"] == "cifar_paper"
    assert "epoch 1/1" in capsys.readouterr().out


def test_missing_data_dir_names_the_path_and_layout(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    code = main(
        ["--arch", "resnet20", "--data", "imagenet", "--data-dir", str(missing), "--out", str(tmp_path), *QUIET]
    )
    err = capsys.readouterr().err
    assert code == 1 and str(missing) in err and "train/<wnid>" in err and "Traceback" not in err


def test_unknown_arch_suggests_names(tmp_path, capsys):
    code = main(["--arch", "resnet51", "--data", "digits", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown architecture 'resnet51'" in err and "resnet50" in err


def test_incompatible_checkpoint(tmp_path, jpeg_folder, torchvision_resnet18_file, capsys):
    code = main(
        [
            "--arch",
            "resnet20",
            "--data",
            "folder",
            "--data-dir",
            str(jpeg_folder),
            "--out",
            str(tmp_path),
            "--pretrained",
            str(torchvision_resnet18_file),
            *QUIET,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "do not fit" in err and str(torchvision_resnet18_file) in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["--resume", str(tmp_path / "junk.pt")]) == 1
    assert "cannot be read" in capsys.readouterr().err


def test_existing_run_dir_is_refused(tmp_path, capsys):
    (tmp_path / "resnet20-digits").mkdir()
    (tmp_path / "resnet20-digits" / "last.pt").write_bytes(b"x")
    code = main(["--arch", "resnet20", "--data", "digits", "--out", str(tmp_path), *QUIET])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_predict_prints_top_k_class_names(tmp_path, digits_checkpoint, capsys):
    folder = write_digits_folder(tmp_path / "digits", split="val", limit_per_class=1)
    images = [str(next((folder / str(d)).glob("*.png"))) for d in (3, 7)]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["--predict", *images, "--checkpoint", str(digits_checkpoint), "--topk", "3"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == images[0] and out[1].split()[-1] == "3" and len(out) == 8
    assert out[4] == images[1] and out[5].split()[-1] == "7"
    assert main(["--predict", str(tmp_path / "broken.png"), "--checkpoint", str(digits_checkpoint)]) == 1
    assert "broken.png" in capsys.readouterr().err
