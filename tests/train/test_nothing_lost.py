"""Nothing is lost (issue 20): resume never rewrites a run, deletion only of marked folders, crashes and
full disks during a checkpoint save leave the previous one, untrusted CIFAR pickles run no code, and
unreadable training images are skipped and counted. Real files and, where it matters, real processes."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fsutil.owned import MARKER_NAME, NotOwnedError, is_owned, mark_owned, remove_owned_tree, sweep_stale_temporaries
from imagedata.errors import DataError
from imagedata.kinds import build_dataset
from models import load_checkpoint
from tests.fixtures.datasets import DIGIT_NAMES, digits_subset, write_cifar, write_jpeg_tree
from tests.fixtures.trained import run_train, train_command
from train.cli import main

from .helpers import train_in_process

REPO = Path(__file__).resolve().parents[2]


def cifar_args(cifar_root: Path, epochs: int = 2) -> dict:
    return dict(arch="resnet20", data="cifar10", data_dir=str(cifar_root), epochs=epochs, batch_size=16)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.fixture
def finished_run(tmp_path, cifar_root) -> Path:
    train_in_process(tmp_path / "runs", "orig", **cifar_args(cifar_root, epochs=3))
    return tmp_path / "runs" / "orig"


def test_resume_from_best_refuses_or_forks_and_keeps_the_run(finished_run, tmp_path, capsys):
    before = snapshot(finished_run)
    assert (finished_run / MARKER_NAME).is_file() and "metrics.csv" in before

    assert main(["--resume", str(finished_run / "best.pt"), "--epochs", "4"]) == 2
    assert "--name" in capsys.readouterr().err  # says how to fork

    copy = tmp_path / "elsewhere" / "last.pt"  # `--resume /tmp/last.pt`: never makes its folder a run dir
    copy.parent.mkdir()
    shutil.copy(finished_run / "last.pt", copy)
    assert main(["--resume", str(copy), "--epochs", "4"]) == 2
    assert sorted(p.name for p in copy.parent.iterdir()) == ["last.pt"]

    out = str(tmp_path / "runs")
    code = main(
        [
            "--resume",
            str(finished_run / "best.pt"),
            "--name",
            "fork",
            "--out",
            out,
            "--epochs",
            "4",
            "--no-tensorboard",
            "--no-plots",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    assert snapshot(finished_run) == before  # metrics.csv, last.pt, best.pt byte-identical
    fork = tmp_path / "runs" / "fork"
    config = yaml.safe_load((fork / "config.yaml").read_text())
    best = load_checkpoint(finished_run / "best.pt")
    assert config["forked_from"]["path"] == str((finished_run / "best.pt").resolve())
    assert config["forked_from"]["epoch"] == best.epoch
    assert load_checkpoint(fork / "last.pt").epoch == 4
    rows = (fork / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(e) for e in range(best.epoch + 1, 5)]

    # continuing the fork (its own last.pt) keeps its lineage
    assert main(["--resume", str(fork / "last.pt"), "--epochs", "5", "--no-tensorboard", "--no-plots"]) == 0
    assert yaml.safe_load((fork / "config.yaml").read_text())["forked_from"] == config["forked_from"]
    assert snapshot(finished_run) == before


def test_resume_with_another_batch_size_is_refused(finished_run, capsys):
    before = snapshot(finished_run)
    assert main(["--resume", str(finished_run / "last.pt"), "--batch-size", "8", "--epochs", "4"]) == 2
    assert "batch_size 16 -> 8" in capsys.readouterr().err
    assert snapshot(finished_run) == before


def test_bad_names_and_unmarked_folders_delete_nothing(tmp_path, capsys):
    parent = tmp_path / "precious"
    (parent / "runs").mkdir(parents=True)
    (parent / "keep.txt").write_text("mine")
    common = ["--arch", "resnet20", "--data", "digits", "--epochs", "1", "--overwrite"]
    for name in ("..", str(tmp_path), "a/b", "."):
        assert main([*common, "--out", str(parent / "runs"), "--name", name]) == 2
        assert "one folder name" in capsys.readouterr().err
    assert (parent / "keep.txt").read_text() == "mine"

    unmarked = parent / "runs" / "notarun"  # a folder the run did not make: --overwrite refuses it
    unmarked.mkdir()
    (unmarked / "data.bin").write_bytes(b"x")
    assert main([*common, "--out", str(parent / "runs"), "--name", "notarun"]) == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert (unmarked / "data.bin").is_file()

    link = parent / "runs" / "link"  # nor through a symlink to a marked folder
    link.symlink_to(unmarked)
    (unmarked / MARKER_NAME).write_text('{"kind": "run"}')
    with pytest.raises(NotOwnedError):
        remove_owned_tree(link, "run")
    assert (unmarked / "data.bin").is_file()


def test_overwrite_replaces_a_marked_run(tmp_path, cifar_root):
    train_in_process(tmp_path, "r", **cifar_args(cifar_root, epochs=1))
    (tmp_path / "r" / "stray.txt").write_text("old")
    train_in_process(tmp_path, "r", overwrite=True, **cifar_args(cifar_root, epochs=1))
    assert not (tmp_path / "r" / "stray.txt").exists() and is_owned(tmp_path / "r", "run")


SAVE_LOOP = """
import sys
from models import load_checkpoint
ckpt = load_checkpoint(sys.argv[1])
print("saving", flush=True)
while True:
    ckpt.save(sys.argv[1])
"""


def test_kill_9_during_checkpoint_saves_then_resume_auto(tmp_path, cifar_root):
    args = [
        "--arch",
        "resnet20",
        "--data",
        "cifar10",
        "--data-dir",
        str(cifar_root),
        "--batch-size",
        "16",
        "--workers",
        "0",
    ]
    assert run_train(train_command(tmp_path, "r", *args, "--epochs", "1")).returncode == 0
    run_dir, last = tmp_path / "r", tmp_path / "r" / "last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for _ in range(10):  # until a kill lands mid-save and leaves a temporary behind
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(last)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 10
        while not temporaries(run_dir) and time.monotonic() < deadline:
            pass  # kill the moment a save is under way
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if temporaries(run_dir):
            break
    assert temporaries(run_dir), "no kill landed mid-save in 10 tries"
    load_checkpoint(last)  # the rename is atomic: last.pt is always whole

    resumed = run_train(train_command(tmp_path, "r", *args, "--epochs", "2", "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last).epoch == 2
    assert temporaries(run_dir) == []


def test_full_disk_during_save_keeps_the_previous_last_pt(tmp_path, cifar_root):
    args = [
        "--arch",
        "resnet20",
        "--data",
        "cifar10",
        "--data-dir",
        str(cifar_root),
        "--batch-size",
        "16",
        "--workers",
        "0",
    ]
    assert run_train(train_command(tmp_path, "r", *args, "--epochs", "1")).returncode == 0
    last = tmp_path / "r" / "last.pt"
    before = last.read_bytes()

    def small_file_limit() -> None:  # files may not grow past 64 KiB: a checkpoint write fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        train_command(tmp_path, "r", *args, "--epochs", "2", "--resume", "auto"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=small_file_limit,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"could not write {last}" in proc.stderr and "the previous last.pt is intact" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert last.read_bytes() == before
    assert temporaries(last.parent) == []


def test_sweep_keeps_live_temporaries(tmp_path):
    old, new, other = tmp_path / ".last.pt.abc.tmp", tmp_path / ".last.pt.def.tmp", tmp_path / "notes.tmp"
    for p in (old, new, other):
        p.write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    removed = sweep_stale_temporaries(tmp_path, older_than=hour_ago + 60)
    assert removed == [old], (removed, [(p.name, p.stat().st_mtime) for p in tmp_path.iterdir()])
    assert new.exists() and other.exists() and not old.exists()

    staging, foreign = tmp_path / ".export.a1.tmp", tmp_path / ".photos.tmp"  # folders: only marked ones go
    mark_owned(staging, "export")
    (foreign / "keep.jpg").parent.mkdir()
    (foreign / "keep.jpg").write_bytes(b"x")
    (tmp_path / ".export.b2.tmp").mkdir()  # made, but its maker died before marking it
    swept = sorted(sweep_stale_temporaries(tmp_path, older_than=time.time() + 60))
    assert swept == [staging, tmp_path / ".export.b2.tmp", new]
    assert (foreign / "keep.jpg").is_file()


def test_crafted_cifar_pickle_runs_no_code(tmp_path):
    write_cifar(tmp_path, "cifar10")
    witness = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    config = {"data": "cifar10", "data_dir": str(tmp_path), "arch": "resnet20"}
    with pytest.raises(DataError, match=r"data_batch_1.*refused to load (posix|os)\.system"):
        build_dataset(config, "train", None)
    assert not witness.exists()

    batch.write_bytes(pickle.dumps({"data": [1, 2]}, protocol=2)[:20])  # truncated
    with pytest.raises(DataError, match="data_batch_1: not a readable CIFAR batch"):
        build_dataset(config, "train", None)


def test_unreadable_training_images_are_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "photos"
    for split, per_class in (("train", 6), ("val", 2)):
        images, labels = digits_subset(split, per_class, classes=2)
        write_jpeg_tree(root / split, images, labels, DIGIT_NAMES)
    (root / "train" / "zero" / "bad.jpg").write_bytes(b"not a jpeg")
    good = next((root / "train" / "one").glob("*.jpg")).read_bytes()
    (root / "train" / "one" / "cut.jpg").write_bytes(good[: len(good) // 3])
    common = dict(arch="resnet20", data="folder", data_dir=str(root), epochs=1, batch_size=7)

    result = train_in_process(tmp_path / "runs", "ok", **common, workers=1)
    assert result.epochs_done == 1
    out = capsys.readouterr().out
    assert "skipped 2 unreadable training image(s)" in out and "bad.jpg" in out and "cut.jpg" in out

    with pytest.raises(DataError, match="more than --max-unreadable-images 1"):
        train_in_process(tmp_path / "runs", "capped", **common, max_unreadable_images=1)
