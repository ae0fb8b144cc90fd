"""`python -m train.experiments`: dry runs, and a real two-recipe ablation with its markdown summary."""

from __future__ import annotations

from train.experiments import main


def test_dry_run_lists_every_recipe_without_running(tmp_path, capsys):
    assert main(["--all", "--dry-run", "--arch", "resnet20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--recipe imagenet_original" in out and "resnet20 on imagenet: 90 epochs" in out
    assert not any(tmp_path.iterdir())


def test_two_recipes_run_in_turn_and_are_summarised(tmp_path, cifar_root, capsys):
    code = main(
        [
            "--configs",
            "cifar_baseline",
            "cifar_modern",
            "--out",
            str(tmp_path),
            "--arch",
            "resnet20",
            "--data-dir",
            str(cifar_root),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--no-tensorboard",
            "--no-plots",
        ]
    )
    assert code == 0, capsys.readouterr()
    summary = (tmp_path / "experiments-recipes.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| cifar_")]
    assert len(rows) == 2 and all("| ok | 1 |" in row for row in rows)
    assert (tmp_path / "exp-recipes-02-cifar_modern" / "best.pt").is_file()


def test_unknown_recipe(capsys):
    assert main(["--configs", "nope"]) == 2
    err = capsys.readouterr().err
    assert "recipe 'nope' not found" in err and "known recipes: " in err and "cifar_paper" in err
