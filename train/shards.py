"""`python -m train.shards --from SOURCE --to DIR`: write a dataset as tar shards (WebDataset's layout).

  python -m train.shards --from data/imagenet --to data/imagenet-shards --shard-size 1000
  python -m train.shards --from cifar10:data/cifar --to data/cifar10-shards
  python -m train --arch resnet50 --data shards:data/imagenet-shards     # train from them

SOURCE is an ImageFolder root with train/ and val/ class folders (the encoded files are copied as they
are: JPEG stays JPEG, PNG stays PNG, other formats are re-encoded as PNG), or `cifar10:DIR` /
`cifar100:DIR` (torchvision's pickled batches, encoded as PNG). Samples go into the shards in a seeded
random order, so each shard mixes the classes. The format is described in `imagedata/shards.py`.

DIR is written as a whole or not at all: into a marked staging folder beside it, renamed into place
at the end. An existing DIR is replaced only with --overwrite and only when this tool made it.
Files that cannot be opened as images are left out and listed. Exit status: 0 written, 1 failed, 2 bad
command line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fsutil.atomic import atomic_write_text, fsync_directory, sha256_file
from fsutil.owned import NotOwnedError, mark_owned, owned_kind, remove_owned_tree
from imagedata.cifar import read_cifar
from imagedata.errors import DataError
from imagedata.folders import _class_folders
from imagedata.shards import FORMAT, INDEX_NAME, LABEL_EXTENSION, OWNER_KIND, SEEK_STEP, VERSION, shard_name

SHUFFLE_SEED = 0  # the order samples are written in; fixed, so the same source gives the same shards
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Item:
    where: str  # the file (or CIFAR index) it comes from, for messages
    label: int
    load: Callable[[], tuple[bytes, str]]  # -> (encoded bytes, extension)


def folder_samples(root: Path, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    return [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / split / name).rglob("*"))
        if path.is_file() and not path.is_symlink() and not path.name.startswith(".")
    ]


def encoded(path: Path) -> tuple[bytes, str]:
    """The file's bytes and extension when it is a JPEG or PNG, else the image re-encoded as PNG."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            return data, "jpg"
        if image.format == "PNG":
            return data, "png"
        return png_bytes(image.convert("RGB")), "png"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_source(source: str, split: str) -> tuple[list[str], list[Item]]:
    """(class names, the split's samples, not yet read); a cifar10:/cifar100: prefix reads CIFAR batches."""
    kind, _, rest = source.partition(":")
    if kind in ("cifar10", "cifar100") and rest:
        images, labels, names = read_cifar(kind, rest, train=split == "train")
        arrays = images.permute(0, 2, 3, 1).numpy()
        return names, [
            Item(f"{kind} {split} #{i}", label, partial(cifar_png, arrays, i)) for i, label in enumerate(labels)
        ]
    root = Path(source)
    train, val = root / "train", root / "val"
    if not (train.is_dir() and val.is_dir()):
        raise DataError(f"{root}: expected train/<class>/<image> and val/<class>/<image> (or cifar10:DIR)")
    classes = _class_folders(train)
    if not classes or classes != _class_folders(val):
        raise DataError(f"{train} and {val} need the same, non-empty set of class folders")
    return classes, [
        Item(str(path), label, partial(encoded, path)) for path, label in folder_samples(root, split, classes)
    ]


def cifar_png(arrays, index: int) -> tuple[bytes, str]:
    return png_bytes(Image.fromarray(arrays[index])), "png"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # reproducible: no owner, no time
    tar.addfile(info, io.BytesIO(data))


def readable(items: list[Item], left_out: list[str]) -> Iterator[tuple[bytes, str, int]]:
    """Each item's (bytes, extension, label), read one at a time; unreadable files go to `left_out`."""
    for item in items:
        try:
            data, ext = item.load()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            left_out.append(f"{item.where} ({type(e).__name__}: {e})")
            continue
        yield data, ext, item.label


def write_split(items: list[Item], split: str, out: Path, shard_size: int, num_classes: int) -> dict:
    """Write `items` (in their final order) as shards of `shard_size` images; the index's split entry."""
    shards, counts, left_out = [], [0] * num_classes, []
    samples = readable(items, left_out)
    written = 0
    while True:
        chunk = list(islice(samples, shard_size))
        if not chunk:
            break
        name, seek_points = shard_name(split, len(shards)), []
        with open(out / name, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (data, ext, label) in enumerate(chunk):
                    if i % SEEK_STEP == 0:
                        seek_points.append(f.tell())  # where the sample's first header starts
                    key = f"{split}{written:08d}"
                    add_member(tar, f"{key}.{ext}", data)
                    add_member(tar, f"{key}.{LABEL_EXTENSION}", str(label).encode("ascii"))
                    counts[label] += 1
                    written += 1
            f.flush()
            os.fsync(f.fileno())
        shards.append(
            {
                "name": name,
                "samples": len(chunk),
                "bytes": (out / name).stat().st_size,
                "sha256": sha256_file(out / name),
                "seek_points": seek_points,
            }
        )
    entry = {"samples": written, "class_counts": counts, "shards": shards}
    if left_out:
        entry["left_out"] = left_out
    return entry


def write_shards(source: str, out: Path, shard_size: int, overwrite: bool = False, log=print) -> dict:
    """Write SOURCE's train and val splits under `out` (atomically, as a whole); returns the index."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    if out.is_symlink():
        raise NotOwnedError(f"{out} is a symlink; write to a real folder")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; pass --overwrite to replace it (only a folder this tool wrote)")
    if out.exists() and owned_kind(out) != OWNER_KIND:  # refused before the work, not after
        raise NotOwnedError(f"{out} was not written by `python -m train.shards`; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        mark_owned(staging, OWNER_KIND)
        index: dict = {"format": FORMAT, "version": VERSION, "source": source, "seek_step": SEEK_STEP, "splits": {}}
        for split in ("train", "val"):
            names, items = read_source(source, split)
            random.Random(f"{SHUFFLE_SEED}:{split}").shuffle(items)
            index["class_names"] = names
            entry = index["splits"][split] = write_split(items, split, staging, shard_size, len(names))
            log(f"{split}: {entry['samples']} images in {len(entry['shards'])} shard(s)")
            if entry.get("left_out"):
                shown = "; ".join(entry["left_out"][:5])
                log(f"warning: left out {len(entry['left_out'])} unreadable file(s) of {split}: {shown}")
        atomic_write_text(staging / INDEX_NAME, json.dumps(index, indent=1) + "\n")
        replace_dir(staging, out)
    except BaseException:
        remove_owned_tree(staging, OWNER_KIND)
        raise
    return index


def replace_dir(staging: Path, out: Path) -> None:
    """Rename `staging` onto `out`; an old `out` (ours) is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=".tmp", dir=out.parent))
        old.rmdir()
        out.rename(old)
    staging.rename(out)
    fsync_directory(out.parent)
    if old is not None:
        remove_owned_tree(old, OWNER_KIND)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--from", dest="source", required=True, help="ImageFolder root (train/, val/) or cifar10:DIR")
    p.add_argument("--to", dest="out", metavar="DIR", required=True, type=Path, help="the shard directory to write")
    p.add_argument(
        "--shard-size", metavar="N", type=int, default=1000, help="images per shard (default 1000, ~110 MB of ImageNet)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace DIR when this tool wrote it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        write_shards(args.source, args.out, args.shard_size, overwrite=args.overwrite)
    except (DataError, NotOwnedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"error: writing {args.out}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
