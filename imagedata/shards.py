"""Tar shards in WebDataset's layout (`python -m train.shards` writes them): the format, where a shard
directory is (a local folder or any URL fsspec opens), its samples read from tar members without
extracting anything, and the split read by index.

The sharded dataset format (one source of truth for the writer, `train.shards`, and the reader,
`train.shard_reader`).

A shard directory holds tar files in WebDataset's layout and one `index.json`:

    DIR/index.json                     {"format": "resnet-deploy-shards", "version": 1, "class_names": [...],
                                        "seek_step": 64,
                                        "splits": {"train": {"samples": N, "class_counts": [...],
                                                             "shards": [{"name", "samples", "bytes", "sha256",
                                                                         "seek_points"}]},
                                                   "val": {...}}}
    DIR/train-000000.tar ...           <key>.jpg (or .png) + <key>.cls (the label as ASCII digits), per sample
    DIR/val-000000.tar ...

`seek_points` (optional: indexes written before them have none) are the byte offsets in the tar of samples
0, seek_step, 2 x seek_step, ...: a reader that starts inside a shard (each training stream does) seeks to
the point before its first sample instead of reading every header up to it. Samples are written in a
seeded random order, so every shard mixes the classes. Any tar reader (or the
`webdataset` package) reads the shards; names inside are flat `<key>.<ext>` and validated on reading.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from torch.utils.data import Dataset

from .decoders import decode_pil
from .errors import DataError

FORMAT = "resnet-deploy-shards"
VERSION = 1
INDEX_NAME = "index.json"
OWNER_KIND = "shards"  # the ownership marker's kind (fsutil.owned.mark_owned)
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = ("jpg", "png")
LABEL_EXTENSION = "cls"
MAX_MEMBER_BYTES = 64 << 20  # one encoded image; larger members are refused unread
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")
MEMBER_NAME = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(jpg|png|cls)$")
SEEK_STEP = 64  # samples between two seek points (the writer's; the reader takes the index's)


class ShardFormatError(ValueError):
    """An index.json that is not ours or not consistent; the message names the file and the field."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    seek_points: tuple[int, ...] = ()  # byte offsets of samples 0, step, 2 x step, ... (none: read from the start)
    seek_step: int = SEEK_STEP

    def seek_point(self, sample: int) -> tuple[int, int]:
        """(byte offset to start reading at, samples to pass over from there) to reach `sample`."""
        point = min(sample // self.seek_step, len(self.seek_points) - 1) if self.seek_points else -1
        return (self.seek_points[point], sample - point * self.seek_step) if point >= 0 else (0, sample)


@dataclass(frozen=True)
class ShardIndex:
    class_names: list[str]
    splits: dict[str, list[ShardInfo]]

    def shards(self, split: str) -> list[ShardInfo]:
        return self.splits.get(split, [])

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))


def parse_index(text: str, source: str) -> ShardIndex:
    """Validate an index.json (untrusted: shard names must be plain names, counts non-negative integers)."""
    try:
        raw: Any = json.loads(text)
    except ValueError as e:
        raise ShardFormatError(f"{source}: not JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ShardFormatError(f"{source}: not a {FORMAT} index (write one with `python -m train.shards`)")
    if raw.get("version") != VERSION:
        raise ShardFormatError(f"{source}: index version {raw.get('version')!r}; this version reads {VERSION}")
    names = raw.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ShardFormatError(f"{source}: class_names must be a non-empty list of strings")
    step = raw.get("seek_step", SEEK_STEP)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ShardFormatError(f"{source}: seek_step must be a positive integer")
    splits: dict[str, list[ShardInfo]] = {}
    for split, entry in (raw.get("splits") or {}).items():
        if split not in SPLITS or not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ShardFormatError(f"{source}: split {split!r} is not one of {SPLITS} with a 'shards' list")
        splits[split] = [parse_shard(shard, split, step, source) for shard in entry["shards"]]
    return ShardIndex(class_names=list(names), splits=splits)


def parse_shard(shard: Any, split: str, step: int, source: str) -> ShardInfo:
    name, count = (shard.get("name"), shard.get("samples")) if isinstance(shard, dict) else (None, None)
    if not isinstance(name, str) or not SHARD_NAME.match(name) or not name.startswith(f"{split}-"):
        raise ShardFormatError(f"{source}: shard name {name!r} in {split} is not {split}-NNNNNN.tar")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ShardFormatError(f"{source}: shard {name}: samples must be a non-negative integer")
    points = shard.get("seek_points", [])
    if not (
        isinstance(points, list)
        and len(points) <= -(-count // step)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in points)
        and all(a < b for a, b in zip([-1, *points], points))
    ):
        raise ShardFormatError(
            f"{source}: shard {name}: seek_points must be increasing byte offsets, one per {step} samples at most"
        )
    return ShardInfo(name, count, tuple(points), step)


DATA_PREFIX = "shards:"
PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# -- where the shards are -------------------------------------------------------------------------


class ShardSource:
    """A shard directory: a local path, or a URL (http(s)://, s3://, ...) opened through fsspec."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        self.remote = "://" in location and not location.startswith("file://")
        text = self._read_index()
        try:
            self.index: ShardIndex = parse_index(text, f"{self.location}/{INDEX_NAME}")
        except ShardFormatError as e:
            raise DataError(str(e)) from None

    def _read_index(self) -> str:
        try:
            with self.open(INDEX_NAME) as f:
                return f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"{self.location}: no readable {INDEX_NAME} ({type(e).__name__}: {e}); "
                "write the shards with `python -m train.shards --from FOLDER --to DIR`"
            ) from None

    def open(self, name: str) -> BinaryIO:
        """Open one file of the directory (`name` is a validated plain name, never a path)."""
        if not self.remote:
            return open(Path(self.location.removeprefix("file://")) / name, "rb")
        try:
            import fsspec  # only remote shards need it
        except ImportError:
            raise DataError(f"{self.location}: reading shards from a URL needs fsspec (pip install fsspec)") from None
        try:
            return fsspec.open(f"{self.location}/{name}", "rb").open()
        except ImportError as e:  # the scheme's backend: aiohttp for http(s), s3fs for s3, gcsfs for gs
            raise DataError(f"{self.location}: {e}") from None

    def __repr__(self) -> str:
        return f"ShardSource({self.location!r})"


def source_of(config: dict[str, Any]) -> ShardSource:
    location = config.get("data_dir")
    if not location:
        raise DataError("--data shards needs the shard directory: --data shards:DIR (or --data-dir DIR)")
    return ShardSource(str(location))


# -- tar members to samples -----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One sample as stored: encoded image bytes and label, or why it could not be read."""

    where: str  # shard:key, for messages
    data: bytes = b""
    label: int = -1
    problem: str | None = None


def _record(where: str, parts: dict[str, bytes], problem: str | None, num_classes: int) -> Record:
    if problem is not None:
        return Record(where, problem=problem)
    images = [ext for ext in IMAGE_EXTENSIONS if ext in parts]
    if len(images) != 1 or LABEL_EXTENSION not in parts:
        return Record(where, problem=f"expected one image (.jpg/.png) and one .cls member, got {sorted(parts)}")
    text = parts[LABEL_EXTENSION].decode("ascii", "replace").strip()
    if not text.isdigit() or int(text) >= num_classes:
        return Record(where, problem=f"label {text[:20]!r} is not a class number below {num_classes}")
    return Record(where, parts[images[0]], int(text))


def tar_records(tar: tarfile.TarFile, shard: str, num_classes: int, skip: int = 0) -> Iterator[Record]:
    """The samples of an open tar, in order, from sample `skip` on: consecutive members sharing a key make
    one sample. The members of the samples skipped are passed over unread (a local tar seeks past them)."""
    key, parts, problem, index = None, {}, None, 0
    for member in tar:
        match = MEMBER_NAME.match(member.name)
        member_key = match.group(1) if match else member.name
        if key is not None and member_key != key:
            if index >= skip:
                yield _record(f"{shard}:{key}", parts, problem, num_classes)
            index, parts, problem = index + 1, {}, None
        key = member_key
        if index < skip:
            continue
        if not match:
            problem = f"unexpected member name {member.name[:80]!r} (expected <key>.jpg, .png or .cls)"
        elif not member.isreg():
            problem = f"{member.name} is not a regular file"
        elif member.size > MAX_MEMBER_BYTES:
            problem = f"{member.name} is {member.size} bytes (more than {MAX_MEMBER_BYTES})"
        else:
            parts[match.group(2)] = tar.extractfile(member).read()
    if key is not None and index >= skip:
        yield _record(f"{shard}:{key}", parts, problem, num_classes)


def seek_to_header(f: BinaryIO, offset: int, what: str) -> None:
    """Position `f` at `offset`, where a tar member's header must start (a tar reader opened on `f` then
    begins there); tarfile.ReadError, naming `what`, if none does."""
    f.seek(offset)
    try:
        tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        raise tarfile.ReadError(f"no tar header at byte {offset}, {what}: write the shards again") from None
    f.seek(offset)


def read_shard(source: ShardSource, shard: ShardInfo, start: int, stop: int, num_classes: int) -> Iterator[Record]:
    """Exactly `stop - start` records: the shard's samples [start, stop), and for each one the shard
    failed to deliver (truncated, corrupt, unreachable) a record saying so."""
    position, problem = start, None
    try:
        with source.open(shard.name) as f:
            offset, skip = shard.seek_point(start) if f.seekable() else (0, start)
            if offset:
                seek_to_header(f, offset, f"the index's seek point for sample #{start - skip} of {shard.name}")
            # a local shard is read seeking over the members it skips; a remote one as a stream
            with tarfile.open(fileobj=f, mode="r|" if source.remote else "r:") as tar:
                for record in tar_records(tar, shard.name, num_classes, skip=skip):
                    if position >= stop:
                        break
                    yield record
                    position += 1
    except (tarfile.TarError, OSError, EOFError) as e:
        problem = f"{type(e).__name__}: {e}"
    reason = problem or f"the shard ends before sample #{position} of the {shard.samples} samples its index lists"
    for missing in range(position, stop):
        yield Record(f"{shard.name} sample #{missing}", problem=f"unreadable shard ({reason})")


# -- validation (and indexing): samples located by a scan of the shards ----------------------------


@dataclass(frozen=True)
class Located:
    shard: str
    where: str
    offset: int
    size: int
    label: int


class ShardSamples(Dataset):
    """A split read by index: the shards' member offsets are scanned once (lazily), then each sample is
    one seek and read. A truncated or corrupt shard keeps the samples before the damage, with a warning."""

    def __init__(self, source: ShardSource, split: str, transform: Callable | None, decode=decode_pil):
        self.source, self.split, self.transform, self.decode = source, split, transform, decode
        self.problems: list[str] = []

    @cached_property
    def located(self) -> list[Located]:
        out: list[Located] = []
        num_classes = len(self.source.index.class_names)
        for shard in self.source.index.shards(self.split):
            found = 0
            try:
                with self.source.open(shard.name) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    scanned = self._scan(tar, shard.name, num_classes)
                out += scanned
                found = len(scanned)
            except (tarfile.TarError, OSError, EOFError) as e:
                self.problems.append(f"{shard.name}: {type(e).__name__}: {e}")
                continue
            if found != shard.samples:
                self.problems.append(f"{shard.name}: {found} readable samples, the index lists {shard.samples}")
        if self.problems:
            print(f"warning: {self.split} shards: {'; '.join(self.problems[:5])}", file=sys.stderr)
        return out

    @staticmethod
    def _scan(tar: tarfile.TarFile, shard: str, num_classes: int) -> list[Located]:
        """Located images of a seekable tar; a sample with a bad member or label is left out."""
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in tar.getmembers():
            match = MEMBER_NAME.match(member.name)
            if match and member.isreg() and member.size <= MAX_MEMBER_BYTES:
                groups.setdefault(match.group(1), {})[match.group(2)] = member
        out = []
        for key, members in groups.items():
            image = [members[ext] for ext in IMAGE_EXTENSIONS if ext in members]
            if len(image) != 1 or LABEL_EXTENSION not in members:
                continue
            text = tar.extractfile(members[LABEL_EXTENSION]).read().decode("ascii", "replace").strip()
            if text.isdigit() and int(text) < num_classes:
                out.append(Located(shard, f"{shard}:{key}", image[0].offset_data, image[0].size, int(text)))
        return out

    def __len__(self) -> int:
        return len(self.located)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.located[index]
        with self.source.open(item.shard) as f:
            f.seek(item.offset)
            data = f.read(item.size)
        image = self.decode(data)
        if self.transform is not None:
            image = self.transform(image)
        return image, item.label


def shard_dataset(config: dict[str, Any], split: str, transform: Callable | None) -> tuple[Dataset, list[str]]:
    """`--data shards:DIR` read by index (validation, parity, calibration); training streams it instead
    (train/shard_reader.py)."""
    source = source_of(config)
    if not source.index.shards(split):
        raise DataError(f"{source.location}: its {INDEX_NAME} has no {split} shards")
    return ShardSamples(source, split, transform), list(source.index.class_names)
