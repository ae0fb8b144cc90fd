"""The sharded dataset format (one source of truth for the writer, `train.shards`, and the reader,
`train.shard_reader`).

A shard directory holds tar files in WebDataset's layout and one `index.json`:

    DIR/index.json                     {"format": "resnet-deploy-shards", "version": 1, "class_names": [...],
                                        "splits": {"train": {"samples": N, "class_counts": [...],
                                                             "shards": [{"name", "samples", "bytes", "sha256"}]},
                                                   "val": {...}}}
    DIR/train-000000.tar ...           <key>.jpg (or .png) + <key>.cls (the label as ASCII digits), per sample
    DIR/val-000000.tar ...

Samples are written in a seeded random order, so every shard mixes the classes. Any tar reader (or the
`webdataset` package) reads the shards; names inside are flat `<key>.<ext>` and validated on reading.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = "resnet-deploy-shards"
VERSION = 1
INDEX_NAME = "index.json"
OWNER_KIND = "shards"  # the ownership marker's kind (models.osutil.mark_owned)
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = ("jpg", "png")
LABEL_EXTENSION = "cls"
MAX_MEMBER_BYTES = 64 << 20  # one encoded image; larger members are refused unread
SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")
MEMBER_NAME = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(jpg|png|cls)$")


class ShardFormatError(ValueError):
    """An index.json that is not ours or not consistent; the message names the file and the field."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int


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
    splits: dict[str, list[ShardInfo]] = {}
    for split, entry in (raw.get("splits") or {}).items():
        if split not in SPLITS or not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ShardFormatError(f"{source}: split {split!r} is not one of {SPLITS} with a 'shards' list")
        shards = []
        for shard in entry["shards"]:
            name, count = (shard.get("name"), shard.get("samples")) if isinstance(shard, dict) else (None, None)
            if not isinstance(name, str) or not SHARD_NAME.match(name) or not name.startswith(f"{split}-"):
                raise ShardFormatError(f"{source}: shard name {name!r} in {split} is not {split}-NNNNNN.tar")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ShardFormatError(f"{source}: shard {name}: samples must be a non-negative integer")
            shards.append(ShardInfo(name, count))
        splits[split] = shards
    return ShardIndex(class_names=list(names), splits=splits)
