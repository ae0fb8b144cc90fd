"""What training adds to the datasets of `imagedata`: augmentation, samplers that resume mid-epoch and
shard over DDP ranks, and loaders that skip unreadable images instead of ending the run.

Batches travel as uint8 and are normalised on the device (`models.normalize_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.transforms import v2

from imagedata.decoders import cpu_decoder_name
from imagedata.errors import DataError
from imagedata.kinds import build_dataset, data_kind
from imagedata.tensors import TensorImages
from models import PreprocessSpec, eval_resize_crop
from models.preprocess import interpolation_mode

from .config import TrainConfig
from .unreadable import SkipUnreadable, collate_skipping


def train_transform(config: TrainConfig, spec: PreprocessSpec) -> v2.Compose:
    """Per-image training augmentation ending in a uint8 CHW tensor of `spec.input_size`."""
    defaults = data_kind(config.data).augment
    crop = config.train_crop or defaults.crop
    hflip = defaults.hflip if config.hflip is None else config.hflip
    size = config.train_size or spec.input_size
    interpolation = interpolation_mode(spec)
    ops: list[Any] = [v2.ToImage()]
    if crop == "random-resized-crop":
        ops.append(v2.RandomResizedCrop(size, interpolation=interpolation, antialias=True))
    elif crop == "random-crop":
        padding = defaults.padding if config.crop_padding is None else config.crop_padding
        ops += [v2.Resize(size, interpolation=interpolation, antialias=True), v2.RandomCrop(size, padding=padding)]
    elif crop == "center":  # no crop augmentation: exactly the evaluation view
        ops.append(eval_resize_crop(spec))
    else:
        raise ValueError(f"train_crop {crop!r}: expected random-resized-crop, random-crop or center")
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    auto = config.auto_augment.lower()
    if auto == "randaugment":
        ops.append(v2.RandAugment(magnitude=config.randaugment_magnitude or 9, interpolation=interpolation))
    elif auto == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif auto == "autoaugment":
        ops.append(v2.AutoAugment(interpolation=interpolation))
    elif auto != "none":
        raise ValueError(f"auto_augment {auto!r}: expected none, randaugment, trivialaugment or autoaugment")
    if config.random_erasing:
        # Erased pixels take the dataset mean, i.e. zero after normalisation.
        fill = [round(m * 255) for m in spec.mean]
        ops.append(v2.RandomErasing(p=config.random_erasing, value=fill))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)


# --------------------------------------------------------------------------------------------------
# Samplers and loaders


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, sharded by rank) that can start mid-epoch.

    `set_epoch(epoch, skip=n)` drops this rank's first n samples: a run resumed after an interruption
    sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler[int]):
    """Rank r of n takes indices r, r+n, ...: every sample exactly once over all ranks, no padding."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader_options(config: TrainConfig, in_memory: bool, pin_memory: bool) -> dict[str, Any]:
    workers = config.workers
    if workers is None:  # decoding files wants workers; in-memory tensors are faster in-process
        workers = 0 if in_memory else min(8, max(1, (torch.get_num_threads() or 1)))
    workers = int(workers)
    options: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory)
    if workers > 0:
        # Persistent workers keep their RNG across epochs, which a resumed run cannot reproduce.
        options.update(persistent_workers=not config.deterministic, prefetch_factor=4)
    return options


def is_in_memory(dataset: Dataset) -> bool:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return isinstance(base, TensorImages)


def build_train_set(config: TrainConfig, transform: Callable) -> Dataset:
    """The training split: read by index, or streamed for the kinds that stream (tar shards)."""
    if data_kind(config.data).streamed:
        from .shard_reader import shard_train_stream  # only shards need it

        return shard_train_stream(config, transform)
    return build_dataset(config.to_dict(), "train", transform, decoder=cpu_decoder_name(config.decoder))[0]


def build_train_loader(
    dataset: Dataset, config: TrainConfig, batch_size: int, world_size: int, rank: int, pin_memory: bool
) -> DataLoader:
    """Shuffled per-process batches of `batch_size`; incomplete last batches are dropped."""
    from .shard_reader import ShardStream, build_shard_train_loader  # only shards need it

    if isinstance(dataset, ShardStream):
        return build_shard_train_loader(dataset, config, batch_size, world_size, rank, pin_memory)
    sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, seed=config.seed)
    batches = BatchSampler(sampler, batch_size, drop_last=True)
    if len(batches) == 0:
        raise DataError(
            f"{len(dataset)} training images give no full batch of {batch_size} per process; "
            "lower --batch-size or add data"
        )
    # The loader draws its workers' base seed from its own generator, reseeded every epoch
    # (`start_epoch`), never from the global RNG: a resumed run must not see one draw more or less.
    generator = torch.Generator()
    in_memory = is_in_memory(dataset)
    if not in_memory:  # files can be unreadable: skip and count them instead of ending the run
        dataset = SkipUnreadable(dataset)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        generator=generator,
        collate_fn=None if in_memory else partial(collate_skipping, channels_last=config.channels_last),
        **_loader_options(config, in_memory, pin_memory),
    )


def start_epoch(loader: DataLoader, epoch: int, skip_samples: int = 0) -> None:
    """Shuffle for `epoch` (from its first sample or `skip_samples` in) and reseed the worker seeds."""
    from .shard_reader import ShardBatches  # only shards need it

    if isinstance(loader.dataset, ShardBatches):
        loader.dataset.set_epoch(epoch, skip_samples // loader.dataset.batch_size)
        return
    sampler: EpochSampler = loader.batch_sampler.sampler
    sampler.set_epoch(epoch, skip=skip_samples)
    loader.generator.manual_seed(sampler.seed * 100_003 + epoch * 1_009 + sampler.rank)


def build_val_loader(
    dataset: Dataset, config: TrainConfig, batch_size: int, world_size: int, rank: int, pin_memory: bool
) -> DataLoader:
    sampler = ShardSampler(len(dataset), world_size, rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        **_loader_options(config, is_in_memory(dataset), pin_memory),
    )
