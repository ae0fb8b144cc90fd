"""Exports are transactional (issue 20): written beside the target and swapped in whole, so a crash or a
failure part-way leaves the previous export usable; another checkpoint's export is replaced only with
--overwrite; folders not made by `python -m export` are never replaced; `--verify` never loads a changed file."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main
from export.manifest import read_manifest
from export.runners import open_runner
from fsutil.owned import MARKER_NAME, is_owned
from models import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
FAST = ["--to", "torchscript", "--parity-samples", "16", "--parity-batch", "8", "--threads", "1"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def exported(digits_export, tmp_path) -> Path:
    export_dir = tmp_path / "exports" / "digits"
    shutil.copytree(digits_export, export_dir)
    return export_dir


def other_checkpoint(digits_checkpoint: Path, tmp_path: Path) -> Path:
    ckpt = load_checkpoint(digits_checkpoint)
    ckpt.metrics = {**ckpt.metrics, "top1": 0.0}  # other bytes, so another sha256: "another checkpoint"
    return ckpt.save(tmp_path / "other" / "best.pt")


def test_an_export_is_marked_and_updated_in_one_swap(exported, digits_checkpoint, capsys):
    assert is_owned(exported, "export")
    code, out, _ = run_cli(capsys, "--checkpoint", digits_checkpoint, "--out", exported, "--name", "digits", *FAST)
    assert code == 0, out
    assert "swapped in whole" in out
    assert [a.format for a in read_manifest(exported).artifacts] == ["torchscript", "onnx"]  # onnx kept
    assert leftovers(exported.parent) == []  # no staging folder, no replaced export left beside it
    open_runner(exported, "onnx", threads=1)  # the kept file still matches its hash


def test_another_checkpoint_needs_overwrite(exported, digits_checkpoint, tmp_path, capsys):
    other = other_checkpoint(digits_checkpoint, tmp_path)
    before = state(exported)
    code, _, err = run_cli(capsys, "--checkpoint", other, "--out", exported, "--name", "digits", *FAST)
    assert code == 2 and "holds the export of another checkpoint" in err and "--overwrite" in err
    assert state(exported) == before

    code, out, _ = run_cli(capsys, "--checkpoint", other, "--out", exported, "--name", "digits", "--overwrite", *FAST)
    assert code == 0, out
    manifest = read_manifest(exported)
    assert manifest.source_checkpoint["path"] == str(other.resolve())
    assert [a.format for a in manifest.artifacts] == ["torchscript"]  # nothing of the old checkpoint's export kept
    assert not (exported / "model.onnx").exists()


def test_a_folder_not_made_by_export_is_never_replaced(digits_checkpoint, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, "--checkpoint", digits_checkpoint, "--out", mine, "--overwrite", *FAST)
    assert code == 2 and f"no {MARKER_NAME} file" in err
    assert state(mine) == {"notes.txt": b"keep"}
    link = tmp_path / "link"
    link.symlink_to(mine)
    code, _, err = run_cli(capsys, "--checkpoint", digits_checkpoint, "--out", link, *FAST)
    assert code == 2 and "is a symlink" in err
    assert state(mine) == {"notes.txt": b"keep"}


def test_a_full_disk_mid_export_leaves_the_previous_export(exported, digits_checkpoint):
    """Files may not grow past 200 KiB (RLIMIT_FSIZE): writing model.ts fails part-way, as on a full disk."""
    before = state(exported)

    def small_file_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 << 10, 200 << 10))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    args = [
        sys.executable,
        "-m",
        "export",
        "--checkpoint",
        str(digits_checkpoint),
        "--out",
        str(exported),
        "--name",
        "digits",
        *FAST,
    ]
    proc = subprocess.run(
        args, env=env, capture_output=True, text=True, cwd=REPO, preexec_fn=small_file_limit, timeout=600
    )
    assert proc.returncode != 0, proc.stdout
    assert state(exported) == before
    assert open_runner(exported, "torchscript", threads=1).format == "torchscript"


def test_kill_9_mid_export_leaves_the_previous_export_usable(exported, digits_checkpoint, tmp_path):
    """`python -m export` killed while it writes: the old manifest and files stand; the next export sweeps
    the dead one's staging folder."""
    before = state(exported)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [
        sys.executable,
        "-m",
        "export",
        "--checkpoint",
        str(digits_checkpoint),
        "--out",
        str(exported),
        "--name",
        "digits",
        "--to",
        "torchscript,onnx",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    for line in proc.stdout:  # kill once an artifact is being written into the staging folder
        if "onnx: writing" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state(exported) == before
    staging = [p for p in exported.parent.iterdir() if p.name.startswith(".digits.") and p.name.endswith(".tmp")]
    assert staging, "the killed export had a staging folder"
    assert open_runner(exported, "torchscript", threads=1).format == "torchscript"

    # the next export (a new process: the dead one's staging folder is older than it) sweeps it
    again = subprocess.run([*args[:-4], *FAST], env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert leftovers(exported.parent) == []


def test_verify_on_a_swapped_artifact_fails_and_leaves_the_manifest(exported, digits_export, capsys):
    manifest_before = (exported / "manifest.json").read_bytes()
    # swap the two artifacts' contents: each file is valid, but neither is what the manifest says
    ts, onnx_file = exported / "model.ts", exported / "model.onnx"
    ts_bytes, onnx_bytes = ts.read_bytes(), onnx_file.read_bytes()
    ts.write_bytes(onnx_bytes)
    onnx_file.write_bytes(ts_bytes)
    code, out, err = run_cli(capsys, "--verify", exported)
    assert code == 1
    assert "model.ts (torchscript), model.onnx (onnx) changed since export" in err
    assert "verifying" not in out  # refused before anything is loaded
    assert (exported / "manifest.json").read_bytes() == manifest_before

    code, _, err = run_cli(capsys, "--to", "onnx", "--accept-changed", "onnx")
    assert code == 2 and "--accept-changed goes with --verify" in err
