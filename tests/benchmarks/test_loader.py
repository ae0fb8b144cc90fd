"""`python -m benchmarks loader --quick`: every decoder from the folder and from shards, 1 and 2 workers,
in a well-formed report (no speed asserted: the figures come from a quiet machine)."""

from __future__ import annotations

import torch

from .test_benchmarks import check_well_formed, run_quick


def test_loader_measures_each_decoder_from_folder_and_shards(tmp_path):
    stdout, markdown, data = run_quick("loader", tmp_path)
    check_well_formed(stdout, markdown, data, "loader")
    rows = data["data"]["rows"]
    decoders = ["pil", "turbo", "draft", "region"] + (["cuda"] if torch.cuda.is_available() else [])
    expected = {("folder", d, w) for d in decoders[:4] for w in (1, 2)} | {
        ("shards", d, w) for d in decoders for w in (1, 2)
    }
    assert {(r["source"], r["decoder"], r["workers"]) for r in rows} == expected
    assert all(r["rate"] > 0 and r["per_core"] > 0 for r in rows)
    baseline = [r for r in rows if (r["source"], r["decoder"]) == ("folder", "pil")]
    assert all(r["vs_baseline"] == 1.0 for r in baseline)
    assert "CPU cores one GPU at 3,000 images/s would need" in markdown
    (verdict,) = data["verdicts"]
    assert verdict["met"] is None  # --quick measures nothing
    assert (tmp_path / "loader-shards" / "index.json").is_file()
