"""Training from tar shards (`imagedata/shards.py`) for `--data shards:DIR`: a streaming training set, from a
local folder or any URL fsspec opens (validation reads the shards by index there).

Training (`ShardStream` + `ShardBatches`). Each epoch the shards are put in a seeded random order and
read as one sequence of N samples. Rank r of W takes the contiguous part [r*M, (r+1)*M), M = N // W
(a part may start or end inside a shard: that shard is read by both neighbours, each keeping its own
samples), and trains on steps = M // B full batches of B; so every rank takes the same number of steps
and each sample is seen at most once per epoch. The N - W * steps * B samples left over (fewer than
W * (B + 1)) are the ones this epoch skips, like the folder loader's dropped last batch; the next
epoch's shard order moves them elsewhere. A rank's part is cut into `STREAMS` contiguous streams; batch
j of the epoch is the next batch of stream j % STREAMS, each stream shuffled through its own seeded
buffer. The loader's workers divide the streams among them (their count must divide `STREAMS`), and
each sample's augmentation is seeded by its place in the epoch: the batches do not depend on how many
workers read them, and a run resumed after k steps skips exactly k batches (records skipped unread
by the decoder), which is the exact resume. The position is `steps_into_epoch` of `last.pt`.

Tar members are read in memory (nothing is extracted), their names validated (`<key>.jpg|png|cls`,
regular files, at most `MAX_MEMBER_BYTES`). A sample that cannot be read (bad member, bad label,
undecodable image, a truncated or corrupt shard: every sample the index promised and the shard did not
deliver) becomes an `UnreadableImage`, dropped from its batch, counted and reported like the folder
reader's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imagedata.decoders import cpu_decoder, cpu_decoder_name, decode_pil
from imagedata.errors import DataError
from imagedata.shards import INDEX_NAME, PIL_ERRORS, Record, ShardInfo, ShardSamples, ShardSource, read_shard, source_of

from .config import TrainConfig
from .gpu_decode import DeviceDecodedBatches, DevicePlan, EncodedCrop, collate_encoded, device_plan
from .unreadable import UnreadableImage, collate_skipping

STREAMS = 24  # streams per rank: 1, 2, 3, 4, 6, 8, 12 or 24 loader workers share them evenly
SHUFFLE_BUFFER = 128  # samples per stream (a rank holds STREAMS x this many encoded images)


def seeded(transform: Callable, image: Any, seed: int) -> Any:
    """`transform(image)` with the CPU generator seeded by `seed`, and its state restored after.
    (torch.manual_seed would also queue CUDA seeding, with a stack trace: milliseconds per image.)"""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(state)


# -- training: the epoch's plan, streams, batches -------------------------------------------------


@dataclass(frozen=True)
class Segment:
    shard: ShardInfo
    start: int
    stop: int


def segments(order: list[ShardInfo], begin: int, end: int) -> list[Segment]:
    """The pieces of shards covering samples [begin, end) of the concatenated `order`."""
    out, offset = [], 0
    for shard in order:
        lo, hi = max(begin, offset), min(end, offset + shard.samples)
        if lo < hi:
            out.append(Segment(shard, lo - offset, hi - offset))
        offset += shard.samples
    return out


def shuffled(records: Iterable[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """A seeded shuffle buffer: each record leaves at a random time within the next `size`."""
    buffer: list[Record] = []
    for record in records:
        buffer.append(record)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """A split of a shard directory as `(uint8 CHW, label)` samples; `ShardBatches` streams it for training.

    Indexing (`stream[i]`, used by export's calibration) reads through a `ShardSamples` built on first use.
    """

    def __init__(
        self,
        source: ShardSource,
        split: str,
        transform: Callable | None,
        decode: Callable[[bytes], Any] = decode_pil,
    ):
        self.source, self.split, self.transform, self.decode = source, split, transform, decode
        self.collate: Callable[[list[Any]], Any] = collate_skipping
        self.channels_last = False  # batches in NHWC memory (collate_skipping; the GPU decode's decode_batch)
        self.shards = source.index.shards(split)
        self.num_classes = len(source.index.class_names)

    def __len__(self) -> int:
        return self.source.index.samples(self.split)

    @cached_property
    def _samples(self) -> ShardSamples:
        return ShardSamples(self.source, self.split, self.transform)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self._samples[index]

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("iterate a ShardStream through ShardBatches (build_shard_train_loader)")

    def decoded(self, data: bytes) -> Any:
        image = self.decode(data)
        return self.transform(image) if self.transform is not None else image

    def records(self, order: list[ShardInfo], begin: int, end: int) -> Iterator[Record]:
        for seg in segments(order, begin, end):
            yield from read_shard(self.source, seg.shard, seg.start, seg.stop, self.num_classes)

    def sample(self, record: Record, seed: int) -> Any:
        """The record decoded and augmented with its own seed, or an `UnreadableImage`."""
        if record.problem is not None:
            return UnreadableImage(record.where, record.problem)
        try:
            image = seeded(self.decoded, record.data, seed)  # `draft` draws its crop while decoding
        except PIL_ERRORS as e:
            return UnreadableImage(record.where, f"{type(e).__name__}: {e}")
        return image, record.label


class ShardBatches(IterableDataset):
    """One rank's batches of a `ShardStream` per epoch (see the module's docstring for the plan)."""

    def __init__(self, stream: ShardStream, batch_size: int, rank: int, world_size: int, seed: int):
        self.stream, self.batch_size, self.seed = stream, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        self.part = len(stream) // world_size  # M: this rank's samples
        self.steps = self.part // batch_size

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def order(self, epoch: int) -> list[ShardInfo]:
        order = list(self.stream.shards)
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def stream_bounds(self, s: int) -> tuple[int, int]:
        """Samples [begin, end) of the epoch's sequence that stream `s` of this rank reads."""
        before = sum(len(range(t, self.steps, STREAMS)) for t in range(s))
        begin = self.rank * self.part + before * self.batch_size
        return begin, begin + len(range(s, self.steps, STREAMS)) * self.batch_size

    def stream_records(self, epoch: int, s: int) -> Iterator[Record]:
        """Stream `s`'s records in its shuffled order, undecoded (what the tests count)."""
        begin, end = self.stream_bounds(s)
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{s}")
        return shuffled(self.stream.records(self.order(epoch), begin, end), SHUFFLE_BUFFER, rng)

    def stream_batches(self, epoch: int, s: int, skip_batches: int) -> Iterator[Any]:
        records = self.stream_records(epoch, s)
        position = skip_batches * self.batch_size
        for _ in range(position):
            next(records)  # skipped unread by the decoder
        while True:
            batch = []
            for record in records:
                seed = hash((self.seed, epoch, self.rank, s, position)) & 0x7FFF_FFFF_FFFF_FFFF
                batch.append(self.stream.sample(record, seed))
                position += 1
                if len(batch) == self.batch_size:
                    break
            if not batch:
                return
            yield self.stream.collate(batch)

    def batch_indices(self, worker: int, workers: int) -> range:
        """The epoch's batches (after the skipped ones) that loader worker `worker` of `workers` makes:
        the DataLoader takes one from each worker in turn, so they arrive in order."""
        if STREAMS % workers:
            raise DataError(f"{workers} loader workers cannot share {STREAMS} shard streams; use a divisor")
        return range(self.skip + worker, self.steps, workers)

    def worker_batches(self, worker: int, workers: int) -> Iterator[Any]:
        epoch, streams = self.epoch, {}
        for j in self.batch_indices(worker, workers):
            s = j % STREAMS
            if s not in streams:
                streams[s] = self.stream_batches(epoch, s, skip_batches=len(range(s, self.skip, STREAMS)))
            yield next(streams[s])

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        return self.worker_batches(info.id, info.num_workers) if info else self.worker_batches(0, 1)


def loader_workers(requested: int) -> int:
    """The largest worker count <= `requested` that divides STREAMS (0 stays 0: read in-process)."""
    return max((k for k in range(1, STREAMS + 1) if STREAMS % k == 0 and k <= requested), default=0)


def build_shard_train_loader(
    stream: ShardStream,
    config: TrainConfig,
    batch_size: int,
    world_size: int,
    rank: int,
    pin_memory: bool,
    decode_device: torch.device | None = None,
) -> DataLoader | DeviceDecodedBatches:
    """The shard loader; with the `cuda` decoder (or `auto` when training on CUDA, pin_memory) the
    batches come out decoded on `decode_device` (default: the current CUDA device)."""
    plan = gpu_decode_plan(stream, config, pin_memory or decode_device is not None)
    stream.channels_last = config.channels_last
    if plan is None:
        stream.collate = partial(collate_skipping, channels_last=config.channels_last)
    else:
        stream.decode, stream.transform, stream.collate = EncodedCrop(plan, stream.transform), None, collate_encoded
    batches = ShardBatches(stream, batch_size, rank, world_size, config.seed)
    if batches.steps == 0:
        raise DataError(
            f"{len(stream)} training images give no full batch of {batch_size} per process; "
            "lower --batch-size or add data"
        )
    workers = config.workers
    # the folder loader's default (up to 8), rounded down to share the streams evenly
    workers = loader_workers(min(8, max(1, torch.get_num_threads())) if workers is None else int(workers))
    # Not persistent: each epoch's workers get the dataset with that epoch's plan (set_epoch).
    options = dict(prefetch_factor=4) if workers else {}
    loader = DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=pin_memory, **options)
    if plan is None:
        return loader
    return DeviceDecodedBatches(loader, plan, decode_device or torch.device("cuda", torch.cuda.current_device()))


def gpu_decode_plan(stream: ShardStream, config: TrainConfig, on_device: bool) -> DevicePlan | None:
    """The GPU decode plan when `--decoder cuda` (or `auto` training on a device) applies, else None."""
    name = config.decoder
    plan = device_plan(stream.transform) if name in ("auto", "cuda") else None
    if name == "cuda" and (plan is None or not on_device):
        raise DataError(
            "--decoder cuda decodes on the GPU and does the random-resized crop and flip there only: it needs "
            "CUDA and no other training augmentation (drop --auto-augment / --random-erasing, or pick turbo)"
        )
    return plan if on_device else None


def shard_train_stream(config: TrainConfig, transform: Callable | None) -> ShardStream:
    """`--data shards`: the training split, streamed (validation reads it by index: imagedata.shards)."""
    source = source_of(config.to_dict())
    if not source.index.shards("train"):
        raise DataError(f"{source.location}: its {INDEX_NAME} has no train shards")
    decode, transform = cpu_decoder(cpu_decoder_name(config.decoder), transform)
    return ShardStream(source, "train", transform, decode)
