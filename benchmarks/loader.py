"""`python -m benchmarks loader`: training-input images/s per CPU core, per decoder, from a folder and from shards.

The training input is what `python -m train` feeds an ImageNet network: decode, random-resized crop to
--image-size, horizontal flip, uint8 tensor, batched (normalisation happens later, on the device). The
images are ImageNet-like JPEGs (about 500x375, quality 90) made from scikit-image's sample photos
(benchmarks/photos.py), written once as an ImageFolder tree and as tar shards (`python -m train.shards`).

Rows: each decoder (pil: PIL as torchvision's ImageFolder decodes, the baseline; turbo; draft; region; cuda
where a GPU is present) from the folder and from the shards, with 1 and 2 loader workers, through train's own
loaders (`train.data.build_train_set` and `build_train_loader`, `--data folder` and `--data shards` with
`--decoder`), in channels-last uint8 batches (NHWC memory, what `--channels-last` training takes, as the
ImageNet recipe does; the stack is then a plain copy of the decoders' HWC images). A row's rate counts the
images after each worker's first batch, to the end of the pass, so worker start-up is left out; per core is
that rate over the worker count (each worker is one single-threaded process; the cuda rows count the training
process as one more core). The target is the best CPU decoder per core at >= 1.5x the PIL folder baseline with
the same workers, each decoder and source judged by the lower of its 1- and 2-worker ratios; the report also
gives the cores one GPU training at 3,000 images/s would need, at the baseline and at the best rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from hostinfo import usable_cores
from train.config import TrainConfig
from train.data import build_train_loader, build_train_set, start_epoch
from train.shard_reader import build_shard_train_loader
from train.shards import write_shards

from .errors import positive_int
from .photos import write_photo_folder
from .report import Report, Table, Verdict

TARGET = 1.5  # best decoder's images/s per core over the PIL folder baseline's
GPU_RATE = 3000  # images/s one GPU trains ResNet-50 at (AMP, H100 class)
WORKERS = (1, 2)
CPU_DECODERS = ("pil", "turbo", "draft", "region")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=positive_int, help="training images (default: 1024; --quick: 24)")
    parser.add_argument("--batch-size", type=positive_int, help="images per batch (default: 32; --quick: 8)")
    parser.add_argument("--image-size", type=positive_int, default=224, help="crop size (default: %(default)s)")


def training_transform(size: int) -> v2.Compose:
    """What train.data.train_transform builds for ImageNet data: crop, flip, uint8 tensor."""
    return v2.Compose(
        [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToPureTensor()]
    )


def prepare_data(work: Path, images: int, log) -> tuple[Path, Path]:
    folder, shards = work / "loader-photos", work / "loader-shards"
    marker = work / f"loader-photos-{images}.done"
    if not marker.exists():
        log(f"writing {images} JPEGs under {folder} and their shards under {shards}")
        write_photo_folder(folder, {"train": images, "val": 2})
        write_shards(str(folder), shards, max(images // 8, 1), overwrite=shards.exists(), log=lambda _: None)
        marker.write_text("")
    return folder, shards


def folder_loader(folder: Path, decoder: str, config: TrainConfig, batch: int, size: int):
    config = config.replace(data="folder", data_dir=str(folder), decoder=decoder)
    return build_train_loader(build_train_set(config, training_transform(size)), config, batch, 1, 0, pin_memory=False)


def shard_loader(shards: Path, decoder: str, config: TrainConfig, batch: int, size: int, gpu: bool):
    config = config.replace(data="shards", data_dir=str(shards), decoder=decoder)
    stream = build_train_set(config, training_transform(size))
    decode_device = torch.device("cuda") if gpu else None
    return build_shard_train_loader(stream, config, batch, 1, 0, pin_memory=gpu, decode_device=decode_device)


def images_per_s(loader, workers: int) -> tuple[float, int]:
    """(images/s after each worker's first batch, images counted) over one pass."""
    start_epoch(loader, 0)
    counted, started = 0, None
    for i, (images, _labels, *_) in enumerate(loader):
        if images is not None and images.is_cuda:
            torch.cuda.synchronize()
        if i + 1 == max(workers, 1):
            started = time.perf_counter()
        elif started is not None:
            counted += len(images) if images is not None else 0
    if started is None or counted == 0:
        return 0.0, 0
    return counted / (time.perf_counter() - started), counted


def worst_ratio(rows: list[dict[str, Any]], row: dict[str, Any]) -> float:
    """The lower of `row`'s source and decoder's ratios to the baseline over the worker counts."""
    same = [r["vs_baseline"] or 0.0 for r in rows if (r["source"], r["decoder"]) == (row["source"], row["decoder"])]
    return min(same)


def run(args: argparse.Namespace) -> Report:
    images = args.images or (24 if args.quick else 1024)
    batch = args.batch_size or (8 if args.quick else 32)
    size = args.image_size
    gpu = torch.cuda.is_available()
    folder, shards = prepare_data(Path(args.work_dir), images, args.log)
    report = Report("loader", "Training input: images/s per CPU core by decoder, folder vs shards", 1, quick=args.quick)
    report.method = [__doc__.split("\n\n", 2)[2].replace("\n", " ")]
    report.method.append(
        f"{images} images, batches of {batch}, crop {size}px; {usable_cores()} usable cores on this machine."
    )
    table = Table(
        "Training input (decode + random-resized crop + flip + to-tensor)",
        ["source", "decoder", "workers", "images/s", "images/s per core", "per core vs PIL folder"],
    )
    rows: list[dict[str, Any]] = []
    for workers in WORKERS:
        config = TrainConfig(seed=0, workers=workers, data="folder", channels_last=True)
        variants = [("folder", d, folder_loader, (folder, d, config, batch, size)) for d in CPU_DECODERS]
        variants += [("shards", d, shard_loader, (shards, d, config, batch, size, False)) for d in CPU_DECODERS]
        if gpu:
            variants.append(("shards", "cuda", shard_loader, (shards, "cuda", config, batch, size, True)))
        for source, decoder, make, make_args in variants:
            args.log(f"{source} {decoder} {workers} worker(s)")
            rate, _ = images_per_s(make(*make_args), workers)
            cores = workers + (1 if decoder == "cuda" else 0)
            rows.append(dict(source=source, decoder=decoder, workers=workers, rate=rate, per_core=rate / cores))
    for row in rows:
        base = next(r for r in rows if (r["source"], r["decoder"], r["workers"]) == ("folder", "pil", row["workers"]))
        row["vs_baseline"] = row["per_core"] / base["per_core"] if base["per_core"] else None
        table.add(row["source"], row["decoder"], row["workers"], row["rate"], row["per_core"], row["vs_baseline"])
    report.tables.append(table)
    report.data["rows"] = rows
    baseline = max(r["per_core"] for r in rows if (r["source"], r["decoder"]) == ("folder", "pil"))
    best = max((r for r in rows if r["decoder"] in CPU_DECODERS), key=lambda r: worst_ratio(rows, r))
    cores = Table(
        f"CPU cores one GPU at {GPU_RATE:,} images/s would need",
        ["input", "images/s per core", "cores"],
    )
    cores.add("PIL folder (baseline)", baseline, GPU_RATE / baseline if baseline else None)
    cores.add(
        f"{best['source']} {best['decoder']}",
        best["per_core"],
        GPU_RATE / best["per_core"] if best["per_core"] else None,
    )
    report.tables.append(cores)
    ratio = worst_ratio(rows, best)
    report.verdicts.append(
        Verdict(
            f"best CPU decoder >= {TARGET}x the PIL folder baseline, images/s per core (the lower of its worker rows)",
            f"{ratio:.2f}x ({best['source']} {best['decoder']})" if ratio else "n/a",
            None if args.quick or ratio is None else ratio >= TARGET,
        )
    )
    if not gpu:
        report.notes.append("no CUDA device here: the cuda decoder was not measured")
    return report
