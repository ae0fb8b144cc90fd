"""The typed training config: one check where the recipe and the flags meet, the same flat mapping on disk."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from models import load_checkpoint
from train.cli import main
from train.config import DEFAULTS, ConfigError, TrainConfig, list_recipes, recipes_dir, resolve_config
from train.run import build_config


def write_recipe(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_an_unknown_recipe_option_is_refused_naming_the_file_a_close_match_and_the_options(tmp_path):
    path = write_recipe(tmp_path, "arch: resnet20\ndata: digits\nlearning_rate: 0.1\nwarmup_epoch: 1\n")
    with pytest.raises(ConfigError) as e:
        resolve_config({}, str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: unknown options learning_rate")
    assert "warmup_epoch (did you mean warmup_epochs?)" in message
    assert "the options are: arch, data, data_dir" in message and "recipe_source" not in message


def test_the_command_line_exits_2_with_the_message(tmp_path, capsys):
    path = write_recipe(tmp_path, "arch: resnet20\ndata: digits\nepochs: ten\n")
    assert main(["--recipe", str(path), "--dry-run"]) == 2
    assert f"error: {path}: epochs 'ten': expected an integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("nesterov: 1", "nesterov 1: expected true or false"),
        ("batch_size: 6.5", "batch_size 6.5: expected an integer"),
        ("lr: fast", "lr 'fast': expected a number"),
        ("milestones: 30", "milestones 30: expected a list of numbers"),
        ("val_split: [0.1]", "val_split [0.1]: expected a number or null"),
        ("optimizer: adam", "optimizer 'adam': expected one of sgd, adamw"),
        ("data: mnist", "data 'mnist': expected one of digits"),
    ],
)
def test_a_wrong_type_or_choice_is_refused_with_the_key_the_value_and_what_was_expected(tmp_path, line, expected):
    path = write_recipe(tmp_path, f"arch: resnet20\ndata: digits\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {expected}")):
        resolve_config({}, str(path))


def test_ints_count_as_floats_and_yaml_exponents_without_a_dot_as_numbers(tmp_path):
    path = write_recipe(tmp_path, "arch: resnet20\ndata: digits\nlr: 1\nweight_decay: 1e-4\nmilestones: [3, 6]\n")
    config = resolve_config({}, str(path))
    assert (config.lr, config.weight_decay, config.milestones) == (1.0, 1e-4, [3.0, 6.0])
    assert type(config.lr) is float


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_resolves_to_the_flat_mapping_of_defaults_recipe_and_flags(name):
    """What the dict-based resolution gave: the defaults, updated by the recipe's options, then the flags."""
    recipe = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text())
    recipe.pop("description")
    flags = {"arch": "resnet50"} if name == "finetune" else {"epochs": 3}
    config = resolve_config(flags, name)
    expected = {**DEFAULTS, **recipe, "recipe": name, "recipe_source": "--recipe", **flags}
    stored = config.to_dict()
    assert stored == expected and list(stored)[: len(DEFAULTS)] == list(DEFAULTS)
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(stored)), "config.yaml") == config


def test_the_defaults_are_the_fields_and_provenance_is_stored_only_when_set():
    plain = TrainConfig().to_dict()
    assert list(plain) == list(DEFAULTS) and plain == DEFAULTS
    assert "recipe" not in DEFAULTS and "forked_from" not in DEFAULTS


def test_a_stored_config_takes_defaults_for_missing_keys_and_refuses_unknown_ones(tmp_path, digits_checkpoint):
    ckpt = load_checkpoint(digits_checkpoint)
    older = {k: v for k, v in ckpt.config.items() if k not in ("decoder", "max_unreadable_images")}
    dataclasses.replace(ckpt, config=older).save(tmp_path / "older.pt")
    config = build_config({"out": str(tmp_path), "name": "fork", "resume": str(tmp_path / "older.pt")})
    assert (config.decoder, config.max_unreadable_images, config.arch) == ("auto", 100, ckpt.config["arch"])

    dataclasses.replace(ckpt, config={**ckpt.config, "colour_jitter": 0.4}).save(tmp_path / "newer.pt")
    with pytest.raises(ConfigError, match=r"newer.pt: its stored config: unknown option colour_jitter; the options"):
        build_config({"out": str(tmp_path), "name": "fork2", "resume": str(tmp_path / "newer.pt")})
