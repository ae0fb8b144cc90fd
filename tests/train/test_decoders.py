"""The training decoders (imagedata/decoders.py) against the PIL reference, on real photos as ImageNet-like
JPEGs: turbo gives the same pixels, draft stays within its stated tolerance, the GPU path within its own."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from benchmarks.photos import photo_jpeg, sample_photos, write_photo_folder
from imagedata import jpeg_region
from imagedata.decoders import (
    DRAFT_TOLERANCE,
    DraftResizedCrop,
    RegionResizedCrop,
    cpu_decoder,
    cpu_decoder_name,
    decode_pil,
    decode_turbo,
)
from imagedata.errors import DataError
from imagedata.kinds import build_dataset
from imagedata.shards import FORMAT, INDEX_NAME, VERSION, ShardSource
from train.config import TrainConfig
from train.data import build_train_loader, build_train_set, start_epoch
from train.gpu_decode import GPU_TOLERANCE
from train.shard_reader import ShardStream, build_shard_train_loader, gpu_decode_plan, seeded
from train.shards import write_shards
from train.unreadable import SkipUnreadable, UnreadableImage


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = random.Random(0)
    return [photo_jpeg(photo, rng) for photo in sample_photos()]


def training_transform(size: int) -> v2.Compose:
    return v2.Compose(
        [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToPureTensor()]
    )


def test_turbo_decodes_the_same_pixels_as_pil(jpegs):
    for data in jpegs:
        assert torch.equal(decode_turbo(data), v2.functional.pil_to_tensor(decode_pil(data)))
    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, format="PNG")
    assert torch.equal(decode_turbo(png.getvalue()), v2.functional.pil_to_tensor(decode_pil(jpegs[0])))


@pytest.mark.parametrize("size", [32, 224])
def test_draft_matches_the_pil_path_within_tolerance(jpegs, size):
    """The same seed draws the same crop box; only the decode scale differs (32px: most crops drafted)."""
    reference = training_transform(size)
    decode, rest = cpu_decoder("draft", reference)
    assert isinstance(decode, DraftResizedCrop) and not any(
        isinstance(op, v2.RandomResizedCrop) for op in rest.transforms
    )
    differences = []
    for seed, data in enumerate(jpegs * 3):
        expected = seeded(lambda d: reference(decode_pil(d)), data, seed)
        got = seeded(lambda d: rest(decode(d)), data, seed)
        assert got.shape == expected.shape == (3, size, size) and got.dtype == torch.uint8
        differences.append((got.float() - expected.float()).abs().mean().item())
    assert max(differences) <= DRAFT_TOLERANCE, differences
    if size == 32:
        assert max(differences) > 0  # some crops really were decoded at reduced scale


def test_turbo_path_equals_the_pil_path_after_augmentation(jpegs):
    reference = training_transform(96)
    decode, rest = cpu_decoder("turbo", reference)
    for seed, data in enumerate(jpegs):
        expected = seeded(lambda d: reference(decode_pil(d)), data, seed)
        assert torch.equal(seeded(lambda d: rest(decode(d)), data, seed), expected)


def test_turbo_reads_every_other_format_as_pil_does(jpegs):
    """BMP, TIFF, grey and 16-bit PNG: not libjpeg-turbo's or an 8-bit RGB libpng decode, so PIL reads them."""
    photo = Image.open(io.BytesIO(jpegs[0]))
    for image, fmt in [(photo, "BMP"), (photo, "TIFF"), (photo.convert("L"), "PNG"), (photo.convert("I;16"), "PNG")]:
        encoded = io.BytesIO()
        image.save(encoded, format=fmt)
        data = encoded.getvalue()
        assert torch.equal(decode_turbo(data), v2.functional.pil_to_tensor(decode_pil(data))), (fmt, image.mode)


def jpeg_variants(jpeg: bytes) -> dict[str, bytes]:
    """The JPEG kinds a training set holds: 4:2:0 and 4:4:4 colour, progressive, grey, CMYK, EXIF-rotated."""
    photo, exif = Image.open(io.BytesIO(jpeg)), Image.Exif()
    exif[0x0112] = 6  # orientation: rotated; neither PIL's convert nor torchvision applies it
    variants = {}
    for label, image, options in [
        ("4:2:0", photo, {}),
        ("4:4:4", photo, {"subsampling": 0}),
        ("progressive", photo, {"progressive": True}),
        ("grey", photo.convert("L"), {}),
        ("cmyk", photo.convert("CMYK"), {}),
        ("exif", photo, {"exif": exif.tobytes()}),
    ]:
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=90, **options)
        variants[label] = encoded.getvalue()
    return variants


@pytest.mark.skipif(not jpeg_region.available(), reason=f"{jpeg_region.REQUIREMENT} is not installed")
def test_a_region_decodes_the_pixels_of_the_whole_decode_there(jpegs):
    regions = jpeg_region.jpeg_regions()
    for label, data in jpeg_variants(jpegs[1]).items():
        whole = v2.functional.pil_to_tensor(decode_pil(data))
        stream = regions.open(data)
        assert (stream.height, stream.width) == whole.shape[1:], label
        for top, left, height, width in [
            (0, 0, *whole.shape[1:]),
            (33, 47, 257, 264),
            (201, 3, 1, 17),
            (7, 480, 300, 20),
        ]:
            region = regions.decode(stream, top, left, height, width)
            assert torch.equal(region, whole[:, top : top + height, left : left + width]), (label, top, left)


@pytest.mark.skipif(not jpeg_region.available(), reason=f"{jpeg_region.REQUIREMENT} is not installed")
def test_region_equals_the_pil_path_after_augmentation(jpegs):
    """The crop is drawn from the header exactly as RandomResizedCrop draws it, then only that region is
    decoded: the same pixels as PIL's whole decode, cropped and resized, for every kind of JPEG."""
    reference = training_transform(96)
    decode, rest = cpu_decoder("region", reference)
    assert isinstance(decode, RegionResizedCrop)
    assert not any(isinstance(op, v2.RandomResizedCrop) for op in rest.transforms)
    images = jpegs + list(jpeg_variants(jpegs[0]).values())
    for seed, data in enumerate(images * 2):
        expected = seeded(lambda d: reference(decode_pil(d)), data, seed)
        assert torch.equal(seeded(lambda d: rest(decode(d)), data, seed), expected), seed


@pytest.mark.skipif(not jpeg_region.available(), reason=f"{jpeg_region.REQUIREMENT} is not installed")
def test_region_leaves_other_formats_and_truncated_jpegs_to_turbo(jpegs):
    reference = training_transform(64)
    decode, rest = cpu_decoder("region", reference)
    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, format="PNG")
    assert jpeg_region.jpeg_regions().open(png.getvalue()) is None
    expected = seeded(lambda d: reference(decode_turbo(d)), png.getvalue(), 3)
    assert torch.equal(seeded(lambda d: rest(decode(d)), png.getvalue(), 3), expected)
    truncated = jpegs[0][: len(jpegs[0]) // 2]
    assert jpeg_region.jpeg_regions().open(truncated) is None  # a whole decode reports it as turbo does
    with pytest.raises(ValueError):
        decode(b"\xff\xd8\xff not really a jpeg \xff\xd9")


@pytest.mark.skipif(not jpeg_region.available(), reason=f"{jpeg_region.REQUIREMENT} is not installed")
def test_region_imports_nvimagecodec_quietly_and_leaves_no_trace(tmp_path):
    """Only its libjpeg-turbo extension is loaded: no errors printed about CUDA codecs absent here, the
    extension path is not left set for child processes, and the private directory is gone."""
    script = (
        "import os, tempfile; from imagedata.jpeg_region import jpeg_regions, EXTENSIONS_PATH_ENV; jpeg_regions(); "
        "print(EXTENSIONS_PATH_ENV in os.environ, sorted(os.listdir(tempfile.gettempdir())))"
    )
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    env.pop(jpeg_region.EXTENSIONS_PATH_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stderr == "" and done.stdout.strip() == "False []"


def test_auto_is_region_where_nvimagecodec_is_installed_and_region_is_refused_without_it(monkeypatch):
    assert cpu_decoder_name("auto") == ("region" if jpeg_region.available() else "turbo")
    assert cpu_decoder_name("cuda") == "turbo"
    monkeypatch.setattr(jpeg_region, "available", lambda: False)
    assert cpu_decoder_name("auto") == "turbo"
    with pytest.raises(ValueError, match="pip install nvidia-nvimgcodec-cu13.*--decoder turbo"):
        cpu_decoder_name("region")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "photos"
    write_photo_folder(root, {"train": 8, "val": 2})
    return root


def folder_samples(folder: Path, decoder: str, size: int = 64) -> list[torch.Tensor]:
    config = TrainConfig(data="folder", data_dir=str(folder), decoder=decoder)
    dataset = build_train_set(config, training_transform(size))
    return [seeded(lambda i: dataset[i][0], i, seed=i) for i in range(len(dataset))]


def test_folder_training_decodes_with_the_chosen_decoder(photo_folder):
    """`--data folder` training reads files through the decoder: turbo, region (and auto, one of them on the
    CPU) the same pixels as PIL after the augmentation, draft within its tolerance; validation keeps PIL."""
    reference = folder_samples(photo_folder, "pil")
    for decoder in ("turbo", "auto", *(("region",) if jpeg_region.available() else ())):
        assert all(torch.equal(a, b) for a, b in zip(folder_samples(photo_folder, decoder), reference, strict=True))
    drafted = folder_samples(photo_folder, "draft")
    assert max((a.float() - b.float()).abs().mean().item() for a, b in zip(drafted, reference)) <= DRAFT_TOLERANCE
    config = {"data": "folder", "data_dir": str(photo_folder), "decoder": "turbo"}
    val, _ = build_dataset(config, "val", None)
    assert isinstance(val[0][0], Image.Image)


@pytest.mark.skipif(not jpeg_region.available(), reason=f"{jpeg_region.REQUIREMENT} is not installed")
def test_region_decodes_in_forked_loader_workers_as_pil_does(photo_folder):
    """Two DataLoader workers (forked after this process has made its own decoder) give PIL's batches, in
    NCHW memory or, with channels_last, the same pixels in NHWC memory."""
    jpeg_region.jpeg_regions()
    batches = {}
    for decoder, channels_last in (("pil", False), ("region", False), ("region", True)):
        config = TrainConfig(
            data="folder", data_dir=str(photo_folder), decoder=decoder, seed=5, workers=2, channels_last=channels_last
        )
        loader = build_train_loader(build_train_set(config, training_transform(48)), config, 4, 1, 0, pin_memory=False)
        start_epoch(loader, 0)
        batches[decoder, channels_last] = [(images, labels) for images, labels, *_ in loader]
    assert len(batches["pil", False]) == 2
    for key in (("region", False), ("region", True)):
        assert len(batches[key]) == 2
        for (images, labels), (images_e, labels_e) in zip(batches[key], batches["pil", False]):
            assert torch.equal(labels, labels_e) and torch.equal(images, images_e)
            assert images.is_contiguous(memory_format=torch.channels_last) == key[1] != images.is_contiguous()


def test_a_corrupt_folder_image_is_skipped_with_its_path_by_every_decoder(photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    broken = sorted((folder / "train").rglob("*.jpg"))[0]
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    for decoder in ("pil", "turbo", "draft", "region"):
        config = TrainConfig(data="folder", data_dir=str(folder), decoder=decoder, seed=0, workers=0)
        dataset = build_train_set(config, training_transform(32))
        index = [path for path, _ in dataset.samples].index(str(broken))
        skipped = SkipUnreadable(dataset)[index]
        assert isinstance(skipped, UnreadableImage) and skipped.path == str(broken), decoder


def test_an_undecodable_image_is_skipped_with_its_reason(tmp_path):
    index = {"format": FORMAT, "version": VERSION, "class_names": ["a"], "splits": {"train": {"shards": []}}}
    index["splits"]["train"]["shards"].append({"name": "train-000000.tar", "samples": 1})
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        for name, data in (("k.jpg", b"\xff\xd8 not really a jpeg"), ("k.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for name in ("pil", "turbo", "draft", "region"):
        decode, rest = cpu_decoder(name, training_transform(32))
        stream = ShardStream(ShardSource(str(tmp_path)), "train", rest, decode)
        (record,) = stream.records(stream.shards, 0, 1)
        skipped = stream.sample(record, seed=1)
        assert isinstance(skipped, UnreadableImage) and skipped.path == "train-000000.tar:k", name


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photo_folder(root / "folder", {"train": 16, "val": 2})
    write_shards(str(root / "folder"), root / "shards", 6, log=lambda _: None)
    return root / "shards"


def photo_batches(shards: Path, decoder: str, device: torch.device | None = None) -> list:
    config = TrainConfig(seed=2, workers=0, decoder=decoder)
    decode, transform = cpu_decoder("turbo", training_transform(64))  # what shard_dataset builds for these
    stream = ShardStream(ShardSource(str(shards)), "train", transform, decode)
    loader = build_shard_train_loader(stream, config, 4, 1, 0, pin_memory=False, decode_device=device)
    start_epoch(loader, 0)
    return list(loader)


def test_the_gpu_pipeline_run_on_the_cpu_crops_and_flips_like_the_cpu_path(photo_shards):
    """The `cuda` decoder's whole path with torchvision's CPU decode_jpeg: the same pixels as turbo's."""
    expected = photo_batches(photo_shards, "turbo")
    got = photo_batches(photo_shards, "cuda", device=torch.device("cpu"))
    assert len(got) == len(expected) == 4
    for (images, labels, _), (images_e, labels_e, _) in zip(got, expected):
        assert torch.equal(labels, labels_e) and torch.equal(images, images_e)


def test_auto_decodes_on_the_cpu_without_cuda_and_cuda_is_refused_where_it_cannot_run(photo_shards):
    stream = ShardStream(ShardSource(str(photo_shards)), "train", training_transform(64))
    assert gpu_decode_plan(stream, TrainConfig(decoder="auto"), on_device=False) is None
    assert gpu_decode_plan(stream, TrainConfig(decoder="auto"), on_device=True) is not None
    with pytest.raises(DataError, match="needs CUDA"):
        gpu_decode_plan(stream, TrainConfig(decoder="cuda"), on_device=False)
    augmented = ShardStream(ShardSource(str(photo_shards)), "train", v2.Compose([v2.RandAugment(), v2.ToPureTensor()]))
    assert gpu_decode_plan(augmented, TrainConfig(decoder="auto"), on_device=True) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the nvJPEG decode cannot run here")
def test_gpu_decode_matches_the_cpu_path_within_tolerance(photo_shards):
    expected = photo_batches(photo_shards, "turbo")
    got = photo_batches(photo_shards, "cuda", device=torch.device("cuda"))
    for (images, labels, _), (images_e, labels_e, _) in zip(got, expected):
        assert images.device.type == "cuda" and torch.equal(labels, labels_e)
        difference = (images.cpu().float() - images_e.float()).abs().mean(dim=(1, 2, 3))
        assert difference.max().item() <= GPU_TOLERANCE, difference
