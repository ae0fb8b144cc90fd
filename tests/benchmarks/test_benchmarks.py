"""Smoke tests: every `python -m benchmarks` command runs at tiny sizes (--quick) and writes a well-formed
markdown table and JSON. No speed is asserted here: speed is what the committed results report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main
from benchmarks.report import CPU_FEATURES, Report, Table, Verdict, cpu_generation, machine_slug
from benchmarks.serving import triton_available
from benchmarks.timing import Budget, concurrent_throughput, interleaved
from benchmarks.training import cpu_emulates_bf16
from hostinfo import cpu_flags, cpuinfo, usable_cores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """Shared by the commands below, so the resnet20 export made by the first is reused by the others."""
    return tmp_path_factory.mktemp("bench-work")


def run_quick(name: str, work_dir: Path, *extra: str, threads: int = 1, timeout: int = 600) -> tuple[str, str, dict]:
    """`python -m benchmarks NAME --quick --threads THREADS`; returns (stdout, markdown file, parsed JSON)."""
    results = work_dir / "results"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        name,
        "--quick",
        "--threads",
        str(threads),
        "--work-dir",
        str(work_dir),
        "--results-dir",
        str(results),
        *extra,
    ]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
    out = results / machine_slug()
    markdown = (out / f"{name}.md").read_text()
    data = json.loads((out / f"{name}.json").read_text())
    return process.stdout, markdown, data


def check_well_formed(stdout: str, markdown: str, data: dict, name: str, threads: int = 1) -> None:
    assert data["name"] == name and data["quick"] is True
    assert data["environment"]["threads"] == threads
    assert data["environment"]["cpu"] and data["environment"]["versions"]["torch"]
    # the extensions the speed depends on are recorded, and the results folder is named by the widest
    features = data["environment"]["cpu_features"]
    assert set(features) <= set(CPU_FEATURES)
    assert ("-avx512-" in data["environment"]["machine"]) == ("avx512f" in features)
    assert markdown.startswith("## ") and f"**{threads} thread(s)**" in markdown
    assert markdown.strip() in stdout  # the table is printed at the end
    for table in data["tables"]:
        assert table["rows"], f"empty table {table['title']!r}"
        header = "| " + " | ".join(table["columns"]) + " |"
        assert header in markdown
        body = markdown.split(header, 1)[1].strip().splitlines()
        assert re.fullmatch(r"\|---(\|---:)*\|", body[0])
        rows = [line for line in body[1:] if line.startswith("| ")][: len(table["rows"])]
        assert all(line.count("|") == len(table["columns"]) + 1 for line in rows)
    for verdict in data["verdicts"]:
        assert verdict["met"] in (True, False, None) and verdict["measured"]


def test_ceiling_writes_fp32_bf16_and_int8_rows(work_dir):
    stdout, markdown, data = run_quick("ceiling", work_dir)
    check_well_formed(stdout, markdown, data, "ceiling")
    ceilings = data["data"]["ceilings"]
    assert {(c["dtype"], c["kernel"], c["threads"]) for c in ceilings} == {
        ("fp32", "torch.matmul", 1),
        ("fp32", "onnxruntime", 1),
        ("bf16", "torch.matmul", 1),
        ("int8", "onnxruntime", 1),
    }
    assert all(c["gflops"] > 0 for c in ceilings)
    # a dtype's ceiling is its fastest kernel
    fp32 = max(c["gflops"] for c in ceilings if c["dtype"] == "fp32")
    assert data["data"]["ceiling_gflops"]["fp32"] == fp32


def test_infer_times_every_cpu_runner_with_its_accuracy_and_opt_in_ablations(work_dir):
    # 2 threads: with one, an ONNX Runtime session has no thread pool, so the idle-threads table has nothing to time
    stdout, markdown, data = run_quick("infer", work_dir, "--ablations", threads=2)
    check_well_formed(stdout, markdown, data, "infer", threads=2)
    rows = data["data"]["rows"]
    assert {r["runner"] for r in rows} >= {
        "eager",
        "eager channels_last",
        "torchscript",
        "onnxruntime",
        "onnxruntime int8",
    }
    assert {r["batch"] for r in rows} == {1, 2}
    # --quick leaves out the AOTInductor runners (each package compiles for tens of seconds) and says so
    assert not {r["runner"] for r in rows} & {"aoti", "aoti bf16"} and any("--runners" in n for n in data["notes"])
    assert all(r["items_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["iqr_over_median"] >= 0 for r in rows)
    assert all(r["vs_eager"] == 1.0 for r in rows if r["runner"] == "eager")
    assert {r["runner"]: r["precision"] for r in rows}["onnxruntime int8"] == "int8"
    # the retired ">= 2x eager" targets are gone; the results name the commit they come from
    assert not data["verdicts"] and data["environment"]["git_commit"]
    # each artifact's labelled accuracy on the digits model (trained and exported by the project's commands)
    top1 = data["data"]["digits_top1"]
    assert set(top1) == {"torchscript", "onnx", "onnx-int8"} and all(0 <= v <= 100 for v in top1.values())
    agreement = data["data"]["digits_top1_agreement_with_eager"]
    assert set(agreement) == set(top1) and all(0 <= v <= 1 for v in agreement.values())
    assert agreement["torchscript"] == 1.0  # fp32: the export's parity gate asks for every decision the same
    png = work_dir / "results" / machine_slug() / "infer_throughput_vs_batch.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "infer_throughput_vs_batch.png" in markdown
    # the idle-threads ablation (sessions built by the benchmark) times every policy, the runners' among them
    idle = {r["idle_threads"]: r for r in data["data"]["idle_threads_ablation"]}
    assert set(idle) == {"spin", "block", "spin within a run"} and idle["spin within a run"]["runner_default"]
    assert all(r["own_call_after_pause_ms"] > 0 and r["eager_right_after_ms"] > 0 for r in idle.values())
    assert idle["spin"]["cpu_ms_after_call"] > idle["spin within a run"]["cpu_ms_after_call"]
    assert {r["threads"] for r in data["data"]["onnx_ablation"]} == {1, 2}
    # the export it measured was made by the project's own `python -m export`, int8 within its cosine gate
    manifest = json.loads((work_dir / "exports" / "resnet20" / "manifest.json").read_text())
    assert {a["format"] for a in manifest["artifacts"]} >= {"torchscript", "onnx", "onnx-int8"}
    assert all(a["parity"]["passed"] for a in manifest["artifacts"])


def test_infer_runner_selection(monkeypatch):
    from benchmarks import infer

    quick, notes = infer.select_runners(None, quick=True)
    assert quick[0] == "eager" and not set(quick) & set(infer.COMPILED_RUNNERS) and notes
    named, _ = infer.select_runners(["aoti", "onnxruntime"], quick=True)
    assert named[:3] == ["eager", "aoti", "onnxruntime"]  # named runners are timed even in --quick; eager leads
    monkeypatch.setattr(infer, "bf16_missing_reason", lambda: "this CPU has neither AVX512-BF16 nor AMX")
    full, notes = infer.select_runners(None, quick=False)
    assert "aoti" in full and "aoti bf16" not in full
    assert any("aoti bf16: not measured: this CPU has neither" in n for n in notes)


def test_aoti_targets_hold_at_every_batch_or_are_missed():
    from benchmarks.infer import aoti_verdicts

    speeds = {"aoti": {1: 10, 8: 10}, "eager channels_last": {1: 9, 8: 11}, "onnxruntime": {1: 12, 8: 12}}
    rows = [
        {"model": "m", "batch": b, "runner": r, "items_per_s": v}
        for r, by_batch in speeds.items()
        for b, v in by_batch.items()
    ]
    channels_last, onnxruntime = aoti_verdicts(rows)
    assert channels_last.met is False and "batch 8: 0.91x" in channels_last.measured  # one batch slower: missed
    assert onnxruntime.met is True and "batch 1: 0.83x" in onnxruntime.measured
    assert aoti_verdicts([r for r in rows if r["runner"] != "aoti"]) == []  # nothing timed, nothing judged


def test_infer_ablations_are_opt_in(work_dir):
    stdout, markdown, data = run_quick("infer", work_dir, "--batches", "1", "--no-accuracy")
    check_well_formed(stdout, markdown, data, "infer")
    assert "idle_threads_ablation" not in data["data"] and "onnx_ablation" not in data["data"]
    assert "digits_top1" not in data["data"]


def test_gpu_run_goes_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "gpu",
        "--device",
        "cpu",
        "--quick",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    data = json.loads((out / "gpu.json").read_text())
    assert data["data"]["train"]["items_per_s"] > 0 and data["data"]["train"]["peak_memory_mb"] > 0
    rows = data["data"]["inference"]
    runners = {"eager fp32", "eager fp16 channels_last", "TorchScript fp16", "AOTInductor fp16"}
    assert {(r["runner"], r["batch"]) for r in rows} == {(name, b) for name in runners for b in (1, 2)}
    assert all(r["items_per_s"] > 0 for r in rows)
    # fp16 computes the fp32 network's function
    assert all(p["min_cosine"] > 0.99 for p in data["data"]["parity"])
    assert data["data"]["builds"]["AOTInductor fp16 compile + load s"] > 0
    for png in ("gpu_inference.png", "gpu_inference_by_batch.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_train_compares_our_step_with_a_bare_loop(work_dir):
    stdout, markdown, data = run_quick("train", work_dir, "--steps", "3")
    check_well_formed(stdout, markdown, data, "train")
    # each median's samples are recorded: at least the configured steps per side
    assert data["data"]["steps"] == 3
    assert all(r[side]["calls"] >= 3 for r in data["data"]["rows"] for side in ("ours", "bare"))
    # each side's peak memory, measured alone in its own process (a CUDA peak only on CUDA)
    for side in (r[s] for r in data["data"]["rows"] for s in ("ours", "bare")):
        assert side["peak_rss_mb"] >= side["rss_before_steps_mb"] > 0 and "peak_cuda_mb" not in side
    assert "### Training peak memory" in markdown
    rows = data["data"]["rows"]
    # bf16 is timed where the CPU has bf16 instructions, and said to be left out where it would be emulated
    emulated = cpu_emulates_bf16()
    assert [r["configuration"] for r in rows] == ["fp32"] + ([] if emulated else ["bf16 autocast"])
    assert ("Not timed by default: bf16 autocast" in markdown) == emulated
    # each configuration's fraction is of its own precision's GEMM, timed in the same rounds as the loops
    assert [set(g) for g in data["data"]["ceiling"]["groups"]] == [{r["precision"]} for r in rows]
    assert all(r["ceiling_fraction"] > 0 and r["ceiling_gflops"] > 0 for r in rows)
    assert all(r["ratio"] > 0 and r["ours"]["calls"] == r["bare"]["calls"] for r in rows)


def test_serve_loads_torchserve_with_locust(work_dir):
    stdout, markdown, data = run_quick("serve", work_dir, timeout=900)
    # Workers get cores // workers threads from the handler, whatever --threads says.
    check_well_formed(stdout, markdown, data, "serve", threads=usable_cores())
    levels = data["data"]["levels"]
    layouts = [layout["workers"] for layout in data["data"]["layouts"]]
    assert layouts == [1, 2]  # --quick: one worker with every core, then two workers
    for workers in layouts:
        key = f"{workers}x{2 // workers}"
        ours = [lv for lv in levels if lv["served_by"] == "ours onnx" and lv["layout"] == key]
        assert [lv["users"] for lv in ours] == [1, 2]
        assert all(lv["raw_images_per_s"] > 0 and lv["served_over_raw"] > 0 for lv in ours)
        # CPU efficiency: the workers' own CPU counters per served image against the raw runner's at that batch
        assert all(lv["worker_cpu_ms_per_image"] > 0 and lv["raw"]["cpu_ms_per_image"] > 0 for lv in ours)
        # Two users spread over two workers make batches of one.
        assert [lv["raw_batch"] for lv in ours] == ([1, 2] if workers == 1 else [1, 1])
    # The raw runner is measured afresh right after each of those levels, so each ratio's sides are adjacent.
    ours = [lv for lv in levels if lv["served_by"] == "ours onnx"]
    raw = data["data"]["raw"]["resnet20"]
    assert [(m["batch"], m["best"]) for m in raw] == [(lv["raw_batch"], lv["raw_images_per_s"]) for lv in ours]
    for level in levels:
        summary = level["summary"]
        assert summary["requests"] > 0 and summary["failures"] == 0, summary
        # The server did the work: its Python workers were busy during the level.
        assert level["cpu_cores"]["workers"] > 0 and level["cpu_cores"]["load generator"] > 0
    assert {s["served_by"] for s in data["data"]["splits"]} == {"ours onnx", "ours onnx-int8"}
    for split in data["data"]["splits"]:
        assert all(split[stage] > 0 for stage in ("decode+preprocess", "inference", "top-k"))
    cold = data["data"]["cold_start"][0]
    assert cold["server_start_to_first_answers_s"] > 0 and set(cold["session_s"]) >= {"onnx", "torchscript"}
    memory = data["data"]["memory"][0]
    # --quick serves our onnx, onnx-int8 and torchscript archives (and the stock one when captum imports) at
    # 1x2 (one worker each) and 2x1 (two each)
    assert memory["worker_rss_mb_idle"] > 0 and memory["workers"] in (9, 12)
    assert "1226x816" in data["data"]["photo"]  # the ~1 MP upscaled photo
    # our handler also served the int8 artifact, in every layout, at the top level
    assert {lv["layout"] for lv in levels if lv["served_by"] == "ours onnx-int8"} == {"1x2", "2x1"}
    # every closed-loop level names its generator and that generator's own CPU
    assert all(lv["generator"].startswith("locust") and lv["generator_cpu_ms_per_request"] > 0 for lv in levels)
    # open loop (Poisson arrivals) at fractions of the closed-loop capacity, with the latency-bounded rate
    open_loop = data["data"]["open_loop"][0]
    assert open_loop["served_by"] == "TorchServe"
    capacity = open_loop["closed_loop_capacity_rps"]
    rates = open_loop["summary"]["rates"]
    assert [r["offered_rps"] for r in rates] == [round(0.5 * capacity, 2), round(capacity, 2)]
    assert all(r["answered"] > 0 and r["generator_cpu_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rates)
    assert open_loop["summary"]["p99_bound_ms"] == data["data"]["p99_bound_ms"] == 100
    assert "latency_vs_load.png" in data["figures"] and "Latency-bounded throughput (p99 <= 100 ms" in markdown
    assert (work_dir / "results" / machine_slug() / "latency_vs_load.png").read_bytes()[:4] == b"\x89PNG"
    # capacity cross-checked with ApacheBench beside locust, each row naming its generator
    generators = {row["generator"].split()[0]: row for row in data["data"]["cross_check"]}
    assert generators["locust"]["requests_per_s"] > 0 and generators["locust"]["generator_cpu_cores"] > 0
    if shutil.which("ab"):
        ab = generators["ApacheBench"]
        assert ab["complete"] > 0 and ab["failed"] == 0 and ab["generator_cpu_ms_per_request"] > 0
    else:
        assert "not measured: ab not installed; `./install.sh --bench-tools`" in generators["ApacheBench"]["missing"]
    check_triton_beside_torchserve(data, markdown)


def check_triton_beside_torchserve(data: dict, markdown: str) -> None:
    """Triton beside TorchServe: the same export and the first layout, at every level, loaded over v2."""
    missing = triton_available()
    if missing is not None:
        assert f"Triton beside TorchServe not run: {missing}" in markdown
        return
    (triton,) = data["data"]["triton"]
    assert triton["layout"] == "1x2" and triton["instances"] == 1 and triton["server_start_to_ready_s"] > 0
    assert [lv["users"] for lv in triton["levels"]] == [1, 2] and triton["backend_rss_mb_idle"] > 0
    for level in triton["levels"]:
        assert level["summary"]["requests"] > 0 and level["summary"]["failures"] == 0, level["summary"]
        assert level["backend_cpu_ms_per_image"] > 0 and level["raw_cpu_ms_per_image"] > 0
        assert level["over_torchserve"] > 0
    assert "TorchServe vs Triton" in markdown
    # and its own open-loop ladder (v2) at fractions of its closed-loop capacity, compared with TorchServe's
    (triton_open_loop,) = [entry for entry in data["data"]["open_loop"] if entry["served_by"] == "Triton"]
    capacity = max(level["summary"]["requests_per_s"] for level in triton["levels"])
    assert triton_open_loop["closed_loop_capacity_rps"] == capacity and triton_open_loop["layout"] == "1x2"
    rates = triton_open_loop["summary"]["rates"]
    assert [r["offered_rps"] for r in rates] == [round(0.5 * capacity, 2), round(capacity, 2)]
    assert all(r["answered"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rates)
    assert triton["max_rate_under_p99_bound"] == triton_open_loop["max_rate_under_p99_bound"]
    assert any("p99-bounded open-loop rate" in v["target"] for v in data["verdicts"])


def test_serve_refuses_a_malformed_layout(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--layouts", "2by4"])
    assert exit_info.value.code == 2
    assert "'2by4' is not WORKERSxBATCH" in capsys.readouterr().err


def test_unknown_architecture_is_a_usage_error(capsys):
    assert main(["infer", "--archs", "resnet7", "--quick"]) == 2
    assert "unknown architecture(s) ['resnet7']" in capsys.readouterr().err


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a CUDA device: the refusal is for machines without one"
)
def test_infer_on_cuda_alone_without_a_cuda_device_says_so(capsys, tmp_path):
    assert main(["infer", "--devices", "cuda", "--quick", "--work-dir", str(tmp_path)]) == 3
    assert "--devices cuda: PyTorch sees no CUDA device on this machine" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before exporting anything


def test_bad_numbers_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--batches", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_interleaved_rounds_time_every_candidate_equally():
    calls: list[str] = []
    samples = interleaved(
        {name: (lambda n=name: calls.append(n)) for name in "abc"},
        Budget(warmup=1, min_rounds=4, max_rounds=4, seconds=0),
        items=8,
    )
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:6] == ["a", "b", "c"] and calls[6:9] == ["b", "c", "a"]  # order rotates per round
    assert all(len(s.seconds) == 4 and s.items == 8 for s in samples.values())


def test_interleaved_before_calls_and_consecutive_calls():
    calls: list[str] = []
    samples = interleaved(
        {name: (lambda n=name: calls.append(n)) for name in "ab"},
        Budget(warmup=0, min_rounds=2, max_rounds=2, seconds=0),
        before={"a": lambda: (calls.append("before a"), time.sleep(0.05))},
    )
    assert calls == ["before a", "a", "b", "b", "before a", "a"]
    assert max(samples["a"].seconds) < 0.05  # the 50 ms before-call is not in a's time
    calls.clear()
    samples = interleaved(
        {name: (lambda n=name: calls.append(n)) for name in "ab"},
        Budget(warmup=0, min_rounds=2, max_rounds=2, seconds=0),
        consecutive=3,
    )
    assert calls == ["a"] * 3 + ["b"] * 6 + ["a"] * 3 and all(len(s.seconds) == 6 for s in samples.values())


def test_interleaved_primes_each_timed_call_with_untimed_calls_of_its_own():
    calls: list[str] = []
    slow = iter([True, True, False, True, True, False])  # per round: two slow untimed calls, then the timed one

    def a():
        calls.append("a")
        time.sleep(0.05 if next(slow) else 0)

    samples = interleaved(
        {"a": a, "b": lambda: calls.append("b")}, Budget(warmup=0, min_rounds=2, max_rounds=2, seconds=0), prime_s=0.08
    )
    # a: untimed calls until 80 ms have passed (two of 50 ms), then the timed one; b: untimed calls for 80 ms, then its own
    assert calls.count("a") == 6 and len(samples["a"].seconds) == 2
    assert max(samples["a"].seconds) < 0.05  # only the fast third call of each round is timed
    assert calls.count("b") >= 4 and len(samples["b"].seconds) == 2
    with pytest.raises(ValueError, match="pass one or the other"):
        interleaved({"a": a}, Budget(), before={"a": a}, prime_s=0.0)


def test_concurrent_throughput_runs_every_call_at_once():
    import threading

    started, calls = threading.Barrier(2, timeout=10), {"a": 0, "b": 0}

    def call(name):
        calls[name] += 1
        if calls[name] == 3:  # the first timed call of each: both must be running at the same time
            started.wait()

    rate = concurrent_throughput([lambda: call("a"), lambda: call("b")], items=4, seconds=0.05, warmup=2)
    assert rate > 0 and calls["a"] >= 3 and calls["b"] >= 3
    assert not started.broken  # run one after the other, the first call would have timed out waiting


def test_report_markdown_and_json_agree(tmp_path):
    report = Report("demo", "Demo", threads=1)
    table = Table("numbers", ["name", "value"])
    table.add("x", 1234.5)
    table.add("y", None)
    report.tables.append(table)
    report.verdicts.append(Verdict("x >= 1000", "1,234", True))
    md_path, json_path = report.write(tmp_path)
    markdown = md_path.read_text()
    assert "| x | 1,234 |" in markdown and "| y | – |" in markdown and "| x >= 1000 | 1,234 | met |" in markdown
    data = json.loads(json_path.read_text())
    assert data["tables"][0]["rows"] == [{"name": "x", "value": 1234.5}, {"name": "y", "value": None}]
    with pytest.raises(ValueError, match="2 columns"):
        table.add("too", "many", "cells")


@pytest.mark.parametrize(
    "vendor, family, model, generation",
    [
        ("AuthenticAMD", 25, 0x01, "zen3"),
        ("AuthenticAMD", 25, 0x11, "zen4"),
        ("AuthenticAMD", 25, 0xA0, "zen4"),
        ("AuthenticAMD", 26, 0x02, "zen5"),
        ("AuthenticAMD", 23, 0x31, "zen2"),
        ("GenuineIntel", 6, 0x8F, None),
    ],
)
def test_amd_generation_comes_from_family_and_model(vendor, family, model, generation):
    # Under KVM all three AMD machines here call themselves "AMD EPYC"; these numbers tell them apart.
    info = {"vendor_id": vendor, "cpu family": str(family), "model": str(model), "model name": "AMD EPYC"}
    assert cpu_generation(info) == generation


def test_cpuinfo_fields_are_this_machines_first_processor():
    info = cpuinfo()
    if not info:
        pytest.skip("no /proc/cpuinfo on this system")
    assert set(info["flags"].split()) == cpu_flags()
    if cpu_generation():
        assert f"-{cpu_generation()}-" in machine_slug()


def test_ceiling_stops_growing_the_size_after_a_fallback_kernels_slow_call(monkeypatch):
    """bf16 without AVX512_BF16 runs at ~1 GFLOP/s: N=3072 would take a minute a call."""
    from benchmarks import ceiling

    budget = Budget(warmup=0, min_rounds=1, max_rounds=1, seconds=0)
    monkeypatch.setattr(ceiling, "SLOW_CALL_S", 0.0)  # every call counts as slow
    slow = ceiling.measure_kernel("fp32", ceiling.TORCH, 1, [128, 64, 256], budget)
    assert [r["size"] for r in slow["sizes"]] == [64] and slow["skipped_sizes"] == [128, 256]
    monkeypatch.setattr(ceiling, "SLOW_CALL_S", 60.0)
    every = ceiling.measure_kernel("int8", ceiling.ONNXRUNTIME, 1, [64, 128], budget)
    assert [r["size"] for r in every["sizes"]] == [64, 128] and every["skipped_sizes"] == []
    assert every["gflops"] == max(r["gflops"] for r in every["sizes"]) > 0


def test_committed_results_need_a_clean_commit(monkeypatch, tmp_path, capsys):
    from benchmarks import cli
    from benchmarks.report import RESULTS_ROOT

    target = RESULTS_ROOT / "never-written"
    monkeypatch.setattr(cli.report_module, "git_commit", lambda: "0123abc+dirty")
    assert main(["ceiling", "--quick", "--results-dir", str(target)]) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    assert not target.exists()
    assert cli.uncommitted_results_source(target, allow_dirty=True) is None
    assert cli.uncommitted_results_source(tmp_path, allow_dirty=False) is None
    monkeypatch.setattr(cli.report_module, "git_commit", lambda: "0123abc")
    assert cli.uncommitted_results_source(target, allow_dirty=False) is None
