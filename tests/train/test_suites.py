"""Ablation suites as data: every suite and `--all` dry-run cleanly, and a digits-scale version of the
cumulative chain (a suite YAML path) runs end to end into one summary with the write-up's numbers beside ours."""

from __future__ import annotations

import re

import pytest
import yaml

from train.config import arch_kwargs, recipes_dir, resolve_config
from train.experiments import Outcome, figure, list_suites, load_suite, main, markdown_summary
from train.run import eval_preprocess

SMOKE = [
    "--data",
    "digits",
    "--arch",
    "resnet20",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--workers",
    "0",
    "--no-tensorboard",
    "--no-plots",
    "--log-every",
    "1000",
]


def test_the_write_ups_suites_are_there():
    assert {"cumulative", "ablations100", "paper"} <= set(list_suites())
    _, source, runs = load_suite("cumulative")
    assert "cumulative" in source
    chain = ["baseline", "+cosine", "+mixup", "+label-smoothing", "+randaugment-warmup-zero-init"]
    assert [r.name for r in runs][:6] == [*chain, "pre-activation"]
    assert runs[0].reported == {"best": 89.2} and runs[4].reported == {"best": 93.8}
    # The chain ends exactly at cifar_modern; the pre-activation row is that recipe with the v2 network.
    assert (runs[4].recipe, runs[4].flags) == ("cifar_modern", [])
    assert (runs[5].recipe, runs[5].flags, runs[5].reported) == (
        "cifar_modern",
        ["--arch", "cifar_preact_resnet18"],
        {"best": 94.1},
    )
    _, _, runs = load_suite("ablations100")
    no_bn = next(r for r in runs if r.name == "no-batchnorm")
    assert "--norm" in no_bn.flags and no_bn.reported == {"best": 87.0, "final": 86.7}
    _, _, runs = load_suite("paper")
    assert any("--plain" in r.flags for r in runs)
    # The summary shows the figures as published (91.25% = 100 - 8.75% error), not rounded to 91.2.
    assert "| - / 91.25 |" in markdown_summary("paper", "", [Outcome(runs[0], "r", [])], [])


@pytest.mark.parametrize("suite", sorted(list_suites()))
def test_each_suite_dry_runs_and_writes_nothing(suite, tmp_path, capsys):
    assert main(["--suite", suite, "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    _, _, runs = load_suite(suite)
    for i, run in enumerate(runs, start=1):
        assert f"--name exp-{suite}-{i:02d}-" in out
        assert f"{run.name}: " in out
    assert "cannot run as given" not in out
    assert not any(tmp_path.iterdir())


def test_all_recipes_dry_run(tmp_path, capsys):
    code = main(["--all", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cannot run as given" not in out and not any(tmp_path.iterdir())


def test_a_digits_scale_cumulative_chain_runs_into_its_summary(tmp_path, capsys):
    suite = tmp_path / "chain.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "description": "the first three steps of the cumulative chain, digits scale",
                "source": "the CIFAR write-up's cumulative table",
                "runs": [
                    {"name": "baseline", "recipe": "cifar_baseline", "reported": {"best": 89.2}},
                    {
                        "name": "+cosine",
                        "recipe": "cifar_baseline",
                        "flags": ["--scheduler", "cosine"],
                        "reported": {"best": 90.5},
                    },
                    {
                        "name": "+mixup",
                        "recipe": "cifar_baseline",
                        "flags": ["--scheduler", "cosine", "--mixup", "0.2"],
                        "reported": {"best": 92.3},
                    },
                ],
            }
        )
    )
    out = tmp_path / "runs"
    code = main(["--suite", str(suite), "--out", str(out), *SMOKE])
    assert code == 0, capsys.readouterr()
    summary = (out / "experiments-chain.md").read_text()
    assert "Reported figures: the CIFAR write-up's cumulative table" in summary
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in summary.splitlines()
        if re.match(r"\| (baseline|\+cosine|\+mixup) ", line)
    }
    assert list(rows) == ["baseline", "+cosine", "+mixup"]
    for name, reported in (("baseline", "89.2"), ("+cosine", "90.5"), ("+mixup", "92.3")):
        _, status, epochs, best, final, train, reported_cell, writeup_cell, seconds = rows[name]
        assert (status, epochs, reported_cell, writeup_cell) == ("ok", "1", f"{reported} / -", "-")
        assert all(0.0 <= float(v) <= 100.0 for v in (best, final, train)) and float(seconds) > 0
    assert rows["+mixup"][0] == "`cifar_baseline --scheduler cosine --mixup 0.2`"
    # Same recipe, different flags: distinct runs, each with its own resolved config.
    configs = [
        yaml.safe_load((out / f"exp-chain-{i:02d}-{n}" / "config.yaml").read_text())
        for i, n in ((1, "baseline"), (2, "cosine"), (3, "mixup"))
    ]
    assert [c["scheduler"] for c in configs] == ["multistep", "cosine", "cosine"]
    assert [c["mixup"] for c in configs] == [0.0, 0.0, 0.2]
    assert all(c["arch"] == "resnet20" and c["data"] == "digits" for c in configs)


def test_paper_exact_puts_the_write_ups_own_runs_beside_the_papers():
    _, source, runs = load_suite("paper_exact")
    assert {r.recipe for r in runs} == {"paper_exact"}
    assert [r.writeup for r in runs[:3]] == [89.48, 90.58, 90.52]
    assert runs[2].reported == {"final": 92.83} and "7.17" in source and "7.46" in source
    summary = markdown_summary("paper_exact", source, [Outcome(r, r.name, []) for r in runs], [])
    assert "| - / 91.25 | 89.48 |" in summary and "| - / 93.57 | - |" in summary
    config = resolve_config({"arch": "resnet32"}, "paper_exact")
    assert (config.shortcut, config.mean, config.std) == ("B", [0.5] * 3, [0.5] * 3)
    assert eval_preprocess(config, None).mean == (0.5, 0.5, 0.5) and arch_kwargs(config) == {"shortcut": "B"}


def test_figures_keep_their_published_decimals():
    assert [figure(v) for v in (93.0, 91.25, 87, 90.5, None)] == ["93.0", "91.25", "87.0", "90.5", "-"]


def test_dry_run_lines_show_the_ablation_options_and_precision(capsys):
    flags = ["--plain", "--shortcut", "B", "--norm", "none"]
    assert main(["--configs", "cifar_paper", "--dry-run", *flags]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.strip().startswith("resnet20 --plain --shortcut B --norm none on cifar10") and line.endswith(", fp32")


def test_every_recipe_cites_its_sources():
    for path in sorted(recipes_dir().glob("*.yaml")):
        assert "# Source" in path.read_text(), f"{path.name} does not say where its values come from"
