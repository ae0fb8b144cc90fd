"""Ablation suites as data: every suite and `--all` dry-run cleanly, and a digits-scale version of the
cumulative chain (a suite YAML path) runs end to end into one summary with the write-up's numbers beside ours."""

from __future__ import annotations

import re

import pytest
import yaml

from train.experiments import Outcome, list_suites, load_suite, main, markdown_summary

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
    assert [r.name for r in runs][:5] == ["baseline", "+cosine", "+mixup", "+label-smoothing", "+pre-activation"]
    assert runs[0].reported == {"best": 89.2} and runs[4].reported == {"best": 93.8}
    _, _, runs = load_suite("ablations100")
    no_bn = next(r for r in runs if r.name == "no-batchnorm")
    assert "--norm" in no_bn.flags and no_bn.reported == {"best": 87.0, "final": 86.7}
    _, _, runs = load_suite("paper")
    assert any("--plain" in r.flags for r in runs) and any("B" in r.flags for r in runs)
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
        _, status, epochs, best, final, train, reported_cell, seconds = rows[name]
        assert (status, epochs, reported_cell) == ("ok", "1", f"{reported} / -")
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
