"""Decode one region of a JPEG on the CPU: nvImageCodec's libjpeg-turbo backend, which decodes a region
with libjpeg-turbo 3's cropped decode (rows below the region are not decoded; columns outside it are only
entropy-decoded, with no inverse DCT, upsampling or colour conversion). The pixels are those of a whole
libjpeg-turbo decode cut to the region (tested), so PIL's too: Pillow decodes with libjpeg-turbo.

nvImageCodec loads every codec extension it ships when it is imported, and on a machine without CUDA's
nvJPEG, nvTIFF and nvJPEG2000 each of them prints an error. Only the libjpeg-turbo extension is used here,
so the package is imported with its extension path pointed at a private directory that links that one
library (removed again once loaded). One decoder per process (DataLoader workers fork), one CPU thread.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

PACKAGE = "nvidia.nvimgcodec"
REQUIREMENT = "nvidia-nvimgcodec-cu13"  # pyproject's `train` extra (Linux x86_64 and aarch64 wheels)
EXTENSION = "libjpeg_turbo_ext"
EXTENSIONS_PATH_ENV = "NVIMGCODEC_EXTENSIONS_PATH"
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
MISSING = (
    f"the `region` decoder needs nvImageCodec's CPU JPEG decoder: pip install {REQUIREMENT} "
    "(part of resnet-deploy[train] on Linux x86_64 and aarch64), or choose --decoder turbo"
)

_loaded: dict[int, JpegRegions] = {}  # by process id: a forked worker makes its own


def available() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


def jpeg_regions() -> JpegRegions:
    """This process's region decoder (ModuleNotFoundError, naming the package, where it is not installed)."""
    pid = os.getpid()
    if pid not in _loaded:
        _loaded.clear()
        _loaded[pid] = JpegRegions(*_import_with_only_libjpeg_turbo())
    return _loaded[pid]


def _import_with_only_libjpeg_turbo() -> tuple[Any, Any]:
    if not available():
        raise ModuleNotFoundError(MISSING)
    extensions = Path(importlib.util.find_spec(PACKAGE).origin).parent / "extensions"
    libraries = sorted(extensions.glob(f"{EXTENSION}.so*"))
    if not libraries:
        raise ModuleNotFoundError(f"{REQUIREMENT} has no {EXTENSION} under {extensions}: reinstall it")
    previous = os.environ.get(EXTENSIONS_PATH_ENV)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-nvimgcodec-") as private:
        (Path(private) / libraries[-1].name).symlink_to(libraries[-1])
        os.environ[EXTENSIONS_PATH_ENV] = private
        try:
            nvimgcodec = importlib.import_module(PACKAGE)
            cpu = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY
            decoder = nvimgcodec.Decoder(
                device_id=cpu, max_num_cpu_threads=1, backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)]
            )
        finally:
            if previous is None:
                os.environ.pop(EXTENSIONS_PATH_ENV, None)
            else:
                os.environ[EXTENSIONS_PATH_ENV] = previous
    return nvimgcodec, decoder


class JpegRegions:
    def __init__(self, nvimgcodec: Any, decoder: Any):
        self.nvimgcodec, self.decoder = nvimgcodec, decoder
        # As PIL and torchvision decode: EXIF orientation not applied, every colour model (grey, CMYK) to RGB.
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)

    def open(self, data: bytes) -> Any | None:
        """The JPEG's code stream (its `height` and `width` read from the header), or None for what this
        decoder leaves to others: not a JPEG, or one that does not end with its end marker (a truncated
        file, which a whole decode reports; nvImageCodec prints its own errors for those)."""
        if not (data.startswith(JPEG_START) and data.endswith(JPEG_END)):
            return None
        try:
            stream = self.nvimgcodec.CodeStream(data)
            return stream if stream.height > 0 else None  # the header is parsed on first use
        except RuntimeError:  # a header it cannot parse
            return None

    def decode(self, stream: Any, top: int, left: int, height: int, width: int) -> torch.Tensor | None:
        """uint8 CHW (HWC in memory, as torchvision decodes) of the region, or None if it cannot be decoded."""
        region = self.nvimgcodec.Region(top, left, top + height, left + width)
        image = self.decoder.decode(stream.get_sub_code_stream(region=region), params=self.params)
        if image is None:
            return None
        return torch.from_numpy(np.asarray(image.cpu())).permute(2, 0, 1)
