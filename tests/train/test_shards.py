"""Tar shards (`python -m train.shards`, `--data shards:DIR`): the written format, every sample once per
epoch over ranks and workers, an exact mid-epoch resume, damaged shards reported, and training from
shards as good as from the folder they were written from."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from fsutil.owned import MARKER_NAME, NotOwnedError
from imagedata.digits import write_digits_folder
from imagedata.errors import DataError
from imagedata.shards import MEMBER_NAME, ShardInfo, ShardSamples, ShardSource, read_shard, tar_records
from models import load_checkpoint
from tests.fixtures.trained import run_train, train_command
from train import shards as train_shards
from train.cli import build_parser
from train.config import TrainConfig
from train.data import build_train_loader, start_epoch
from train.shard_reader import STREAMS, ShardBatches, ShardStream, loader_workers
from train.shards import main as shards_main
from train.shards import write_shards
from train.unreadable import UnreadableImages

from .helpers import train_in_process

TO_TENSOR = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(16, antialias=True), v2.ToPureTensor()])


@pytest.fixture(scope="module")
def shard_dir(jpeg_folder, tmp_path_factory) -> Path:
    """The 4-class JPEG folder (48 train, 16 val) as shards of 10 images: 5 train shards, the last of 8."""
    out = tmp_path_factory.mktemp("shards") / "digits-shards"
    assert shards_main(["--from", str(jpeg_folder), "--to", str(out), "--shard-size", "10"]) == 0
    return out


def stream(location: Path, transform=TO_TENSOR) -> ShardStream:
    return ShardStream(ShardSource(str(location)), "train", transform)


def test_writes_webdataset_layout_with_an_index_and_a_marker(shard_dir, jpeg_folder):
    index = json.loads((shard_dir / "index.json").read_text())
    assert index["class_names"] == ["one", "three", "two", "zero"]  # the folder's sorted class folders
    train = index["splits"]["train"]
    assert [s["samples"] for s in train["shards"]] == [10, 10, 10, 10, 8]
    assert train["class_counts"] == [12, 12, 12, 12] and index["splits"]["val"]["samples"] == 16
    assert (shard_dir / MARKER_NAME).is_file()
    with tarfile.open(shard_dir / "train-000000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 20 and all(MEMBER_NAME.match(n) for n in names)
        assert [n.rsplit(".", 1)[1] for n in names[:2]] == ["jpg", "cls"]
        data = tar.extractfile(names[0]).read()
    originals = {p.read_bytes() for p in (jpeg_folder / "train").rglob("*.jpg")}
    assert data in originals  # the encoded file as it was, not re-encoded
    # a classes mix in each shard (written in a seeded random order, not class by class)
    with tarfile.open(shard_dir / "train-000000.tar") as tar:
        labels = {tar.extractfile(n).read() for n in tar.getnames() if n.endswith(".cls")}
    assert len(labels) > 1


def test_webdataset_reads_our_shards(shard_dir):
    wds = pytest.importorskip("webdataset", reason="webdataset is not installed (pip install -e .[dev])")
    samples = list(wds.WebDataset(str(shard_dir / "train-000000.tar"), shardshuffle=False))
    assert len(samples) == 10 and {"jpg", "cls"} <= set(samples[0])


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, jpeg_folder):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="--overwrite"):
        write_shards(str(jpeg_folder), foreign, 10)
    with pytest.raises(NotOwnedError, match="not written by"):
        write_shards(str(jpeg_folder), foreign, 10, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind
    ours = tmp_path / "ours"
    write_shards(str(jpeg_folder), ours, 100, log=lambda _: None)
    write_shards(str(jpeg_folder), ours, 30, overwrite=True, log=lambda _: None)
    assert sorted(p.name for p in ours.glob("train-*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]


def test_cli_data_flag_takes_the_directory():
    args = build_parser().parse_args(["--data", "shards:/data/in-shards", "--arch", "resnet20"])
    assert (args.data, args.data_dir) == ("shards", "/data/in-shards")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "digits:/x"])


def keys_of(batches: ShardBatches, epoch: int) -> list[str]:
    return [record.where for s in range(STREAMS) for record in batches.stream_records(epoch, s)]


@pytest.mark.parametrize("batch_size", [4, 5])
def test_two_ranks_two_workers_see_each_sample_once_per_epoch(shard_dir, batch_size):
    data = stream(shard_dir)
    ranks = [ShardBatches(data, batch_size, rank, 2, seed=3) for rank in range(2)]
    assert ranks[0].steps == ranks[1].steps == 24 // batch_size  # every rank takes the same steps
    for epoch in range(2):
        seen = Counter(key for batches in ranks for key in keys_of(batches, epoch))
        assert set(seen.values()) == {1}  # nobody sees a sample twice
        assert len(seen) == 2 * ranks[0].steps * batch_size  # 48 with batches of 4; 40 (8 left over) with 5
        for batches in ranks:  # the two workers make every batch of the epoch, each exactly once
            made = sorted(j for worker in range(2) for j in batches.batch_indices(worker, 2))
            assert made == list(range(batches.steps))
    orders = [keys_of(ranks[0], epoch) for epoch in range(2)]
    assert orders[0] != orders[1]  # a new order each epoch


def test_loader_batches_do_not_depend_on_workers_and_resume_exactly(shard_dir):
    config = TrainConfig(seed=5, workers=0)
    one = build_train_loader(stream(shard_dir), config, 4, 1, 0, pin_memory=False)
    two = build_train_loader(stream(shard_dir), config.replace(workers=2), 4, 1, 0, pin_memory=False)
    assert len(one) == len(two) == 12 and two.num_workers == 2
    start_epoch(one, 1)
    full = list(one)
    start_epoch(two, 1)
    assert_same_batches(list(two), full)
    resumed = build_train_loader(stream(shard_dir), config.replace(workers=2), 4, 1, 0, pin_memory=False)
    start_epoch(resumed, 1, skip_samples=7 * 4)  # stopped after 7 steps of epoch 2
    assert_same_batches(list(resumed), full[7:])
    assert Counter(int(label) for _, labels, _ in full for label in labels) == Counter({0: 12, 1: 12, 2: 12, 3: 12})


def assert_same_batches(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for (images, labels, skipped), (images_e, labels_e, skipped_e) in zip(got, expected):
        assert torch.equal(images, images_e) and torch.equal(labels, labels_e) and skipped == skipped_e == []


def test_worker_counts_share_the_streams_evenly():
    assert [loader_workers(n) for n in (0, 1, 5, 8, 10, 16, 64)] == [0, 1, 4, 8, 8, 12, 24]


def test_truncated_shard_is_reported_not_fatal(shard_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(shard_dir, damaged)
    tar = damaged / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut inside its 5th or 6th sample
    loader = build_train_loader(stream(damaged), TrainConfig(seed=0, workers=0), 4, 1, 0, pin_memory=False)
    counter = UnreadableImages(cap=100)
    start_epoch(loader, 0)
    images = sum(len(labels) for _, labels in counter.batches(loader))
    assert 4 <= len(counter.skipped) <= 6 and images == 48 - len(counter.skipped)
    assert all(s.path.startswith("train-000001.tar") for s in counter.skipped)
    assert "unreadable shard" in counter.report() and "train-000001.tar" in counter.report()

    val = damaged / "val-000001.tar"
    val.write_bytes(val.read_bytes()[:1000])
    samples = ShardSamples(ShardSource(str(damaged)), "val", None)
    assert len(samples) < 16 and "val-000001.tar" in samples.problems[0]


def test_a_segment_starting_inside_a_shard_reads_only_its_own_samples(shard_dir, tmp_path):
    """Streams start mid-shard: the samples before their start are passed over, not read into memory;
    a shard cut before a segment's start reports every sample of the segment."""
    source = ShardSource(str(shard_dir))
    shard = source.index.shards("train")[1]
    with tarfile.open(shard_dir / shard.name) as tar:
        everything = list(tar_records(tar, shard.name, 10))
    with tarfile.open(shard_dir / shard.name) as tar:
        assert list(tar_records(tar, shard.name, 10, skip=5)) == everything[5:]
    assert list(read_shard(source, shard, 5, 9, 10)) == everything[5:9]

    damaged = tmp_path / "damaged"
    shutil.copytree(shard_dir, damaged)
    with tarfile.open(shard_dir / shard.name) as tar:
        third = tar.getmembers()[6].offset  # the header of sample #3 (two members a sample)
    (damaged / shard.name).write_bytes((shard_dir / shard.name).read_bytes()[:third])
    cut = list(read_shard(ShardSource(str(damaged)), shard, 9, 12, 10))
    assert [r.where for r in cut] == [f"{shard.name} sample #{i}" for i in (9, 10, 11)]
    assert all("the shard ends before sample #9" in r.problem for r in cut)


def test_seek_points_start_a_segment_at_its_sample_and_wrong_ones_are_refused(jpeg_folder, tmp_path, monkeypatch):
    """With a seek point every 3 samples (the writer's step made small), a segment starting at any sample
    reads what a scan from the shard's start reads; so does an index without seek points (written before
    them). A seek point that is not a member's header makes the segment's samples unreadable, saying so;
    seek points that are not increasing offsets are refused, naming the shard."""
    monkeypatch.setattr(train_shards, "SEEK_STEP", 3)
    out = tmp_path / "shards"
    write_shards(str(jpeg_folder), out, 10, log=lambda _: None)
    source = ShardSource(str(out))
    shard = source.index.shards("train")[0]
    assert shard.seek_step == 3 and len(shard.seek_points) == 4 and shard.seek_points[0] == 0  # samples 0, 3, 6, 9
    with tarfile.open(out / shard.name) as tar:
        everything = list(tar_records(tar, shard.name, 10))
        assert [m.offset for m in tar.getmembers()[::6]] == list(shard.seek_points)
    by_url = ShardSource(f"local://{out}")  # fsspec's seekable file, read as a stream from the seek point
    for start in range(10):
        assert list(read_shard(source, shard, start, 10, 10)) == everything[start:], start
        assert list(read_shard(by_url, shard, start, 10, 10)) == everything[start:], start
    assert list(read_shard(source, ShardInfo(shard.name, shard.samples), 7, 10, 10)) == everything[7:]

    wrong = dataclasses.replace(shard, seek_points=(0, shard.seek_points[1] + 512, *shard.seek_points[2:]))
    unread = list(read_shard(source, wrong, 4, 6, 10))
    assert [r.where for r in unread] == [f"{shard.name} sample #4", f"{shard.name} sample #5"]
    assert all(f"the index's seek point for sample #3 of {shard.name}" in r.problem for r in unread)

    index = json.loads((out / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["seek_points"] = [0, 9000, 4000]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="train-000000.tar: seek_points must be increasing byte offsets"):
        ShardSource(str(out))


def test_hostile_member_names_are_refused_unread(tmp_path, shard_dir):
    hostile = tmp_path / "hostile"
    shutil.copytree(shard_dir, hostile)
    with tarfile.open(hostile / "train-000000.tar", "w") as tar:
        for name, data in (
            ("../escape.jpg", b"x"),
            ("ok.cls", b"0"),
            ("ok.jpg", (shard_dir / "index.json").read_bytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = stream(hostile)
    records = list(data.records(data.shards, 0, 10))
    assert len(records) == 10
    assert "unexpected member name '../escape.jpg'" in records[0].problem
    assert data.sample(records[1], seed=0).reason.startswith("UnidentifiedImageError")  # not an image
    assert "unreadable shard" in records[2].problem  # the index promised 10 samples
    assert not (tmp_path / "escape.jpg").exists()


def test_training_from_shards_matches_the_folder(tmp_path):
    """The real digits (30 train and 10 val images per class) trained from their folder and from shards."""
    folder = tmp_path / "digits"
    write_digits_folder(folder / "train", "train", limit_per_class=30)
    write_digits_folder(folder / "val", "val", limit_per_class=10)
    write_shards(str(folder), tmp_path / "digits-shards", 64, log=lambda _: None)
    common = dict(
        arch="resnet20",
        epochs=6,
        batch_size=32,
        lr=0.1,
        nesterov=True,
        weight_decay=5e-4,
        warmup_epochs=1,
        train_crop="random-crop",
        crop_padding=2,
        hflip=False,
        seed=1,
    )
    from_folder = train_in_process(tmp_path, "folder", data="folder", data_dir=str(folder), **common)
    from_shards = train_in_process(
        tmp_path, "shards", data="shards", data_dir=str(tmp_path / "digits-shards"), **common
    )
    assert from_folder.epochs_done == from_shards.epochs_done == 6
    # 100 validation images: two runs of one recipe differ by a few points (another sample order)
    assert from_shards.best_top1 >= 80.0 and abs(from_shards.best_top1 - from_folder.best_top1) <= 10.0, (
        from_shards.best_top1,
        from_folder.best_top1,
    )


def test_a_url_reads_through_fsspec_like_the_local_path(shard_dir):
    """fsspec's `local://` scheme takes the URL path (streamed tar reads) on real files."""
    config = TrainConfig(seed=4, workers=0)
    remote = ShardStream(ShardSource(f"local://{shard_dir}"), "train", TO_TENSOR)
    assert remote.source.remote
    by_url = build_train_loader(remote, config, 4, 1, 0, pin_memory=False)
    by_path = build_train_loader(stream(shard_dir), config, 4, 1, 0, pin_memory=False)
    start_epoch(by_url, 0)
    start_epoch(by_path, 0)
    assert_same_batches(list(by_url), list(by_path))
    with pytest.raises(DataError, match="index.json|aiohttp"):  # no HTTP backend installed, or nothing listening
        ShardSource("http://127.0.0.1:9/shards")


def test_killed_run_resumes_from_shards_to_identical_weights(tmp_path, cifar_root):
    """SIGTERM inside epoch 2 of a run reading CIFAR shards with 2 loader workers; the resumed run ends
    bit-identical to an uninterrupted one (its position: steps_into_epoch in last.pt)."""
    shards = tmp_path / "cifar-shards"
    write_shards(f"cifar10:{cifar_root}", shards, 16, log=lambda _: None)
    args = ["--arch", "resnet20", "--data", f"shards:{shards}", "--epochs", "3", "--batch-size", "8"]
    args += ["--seed", "7", "--workers", "2", "--log-every", "1", "--decoder", "turbo"]
    full = run_train(train_command(tmp_path, "full", *args))
    assert full.returncode == 0, full.stderr

    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = train_command(tmp_path, "killed", *args)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # somewhere in epoch 2
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, f"{proc.returncode}\n{out}\n{err}"
    interrupted = load_checkpoint(last)
    assert interrupted.epoch == 1 and 0 < interrupted.steps_into_epoch < 10

    resumed = run_train(train_command(tmp_path, "killed", "--resume", str(last)))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(last)
    assert a.step == b.step == 30
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert a.metrics == b.metrics


def test_channels_last_batches_hold_the_same_pixels_in_nhwc_memory(shard_dir):
    plain = build_train_loader(stream(shard_dir), TrainConfig(seed=1, workers=0), 4, 1, 0, pin_memory=False)
    nhwc = build_train_loader(stream(shard_dir), TrainConfig(seed=1, workers=0, channels_last=True), 4, 1, 0, False)
    start_epoch(plain, 0)
    start_epoch(nhwc, 0)
    for (images, _, _), (images_nhwc, _, _) in zip(plain, nhwc):
        assert images_nhwc.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(
            memory_format=torch.channels_last
        )
        assert torch.equal(images, images_nhwc)


def test_unreadable_source_files_are_left_out_and_listed(tmp_path, jpeg_folder, capsys):
    source = tmp_path / "source"
    shutil.copytree(jpeg_folder, source)
    (source / "train" / "zero" / "broken.jpg").write_bytes(b"not an image")
    assert shards_main(["--from", str(source), "--to", str(tmp_path / "out")]) == 0
    train = json.loads((tmp_path / "out" / "index.json").read_text())["splits"]["train"]
    assert train["samples"] == 48 and len(train["left_out"]) == 1 and "broken.jpg" in train["left_out"][0]
    assert "left out 1 unreadable file(s) of train" in capsys.readouterr().out
    assert shards_main(["--from", str(tmp_path / "missing"), "--to", str(tmp_path / "out2")]) == 2
    assert "expected train/<class>/<image>" in capsys.readouterr().err
