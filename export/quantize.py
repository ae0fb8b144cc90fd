"""INT8 ONNX: ONNX Runtime's static post-training quantization of the exported fp32 ONNX file.

Weights are quantized per output channel (int8, symmetric, in 7 bits: see below) and activations per
tensor (uint8), with activation ranges calibrated on real images of the training split (or
`--calibration-data DIR`), not on the validation images the parity gate then judges it on.

Activation ranges are the 99.999th percentile of each tensor's calibration histogram, not its min/max
(the percentile calibration TensorRT and most CNN quantization guides use): one outlier activation no
longer stretches a range and coarsens the steps of every other value. On seven digits resnet20
checkpoints (ONNX Runtime 1.32, 256 training images), min/max flipped 2 or 3 of the 360 validation
decisions of fp32 ONNX, the 99.999th percentile 1 on each; entropy calibration was no better than
min/max, the 99.99th percentile no better than the 99.999th, and 1024 calibration images did not
change the percentile's result.

The graph is QDQ (QuantizeLinear/DequantizeLinear pairs around each Conv and Gemm): ONNX Runtime's
CPU provider fuses each pair into an int8 kernel, and any ONNX runtime can still read it.

Why 7-bit weights (`reduce_range`): on x86 CPUs without VNNI (AVX2, and AVX-512 before Cascade Lake
or Zen 4), ONNX Runtime's u8 x s8 kernels add pairs of products in int16 (`vpmaddubsw`), which
saturates with full-range weights: on an AVX2 CPU the digits model's logit cosine fell below the
parity gate. With weights in [-64, 64] a pair (at most 2 x 255 x 64) always fits, so the artifact
computes the same numbers on every x86 server, VNNI or not, at about the same speed.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsutil.atomic import atomic_path
from hostinfo import cpu_flags
from models import Checkpoint, eval_resize_crop
from models.errors import first_line

from .manifest import ExportError
from .parity import folder_dataset, stack_dataset

DEFAULT_CALIBRATION_SAMPLES = 256
CALIBRATION_PERCENTILE = 99.999  # of each activation's histogram over the calibration images
CALIBRATION_BATCH = 8


class CalibrationUnavailable(ExportError):
    """No calibration images: neither --calibration-data nor the checkpoint's training data can be read."""


@dataclass
class CalibrationSet:
    images: torch.Tensor  # float32 NCHW, normalised exactly as the model expects
    description: str


def load_calibration_set(ckpt: Checkpoint, calibration_data: str | Path | None, count: int) -> CalibrationSet:
    """`calibration_data` (an ImageFolder tree) when given, else the checkpoint's training split.

    Raises CalibrationUnavailable, naming what to pass, when neither can be read: calibrating on
    random pixels would set every activation range wrong.
    """
    preprocess = ckpt.preprocess
    if calibration_data is not None:
        try:
            dataset = folder_dataset(calibration_data, preprocess, "--calibration-data")
        except ExportError as e:
            raise CalibrationUnavailable(str(e)) from e
        images, _ = stack_dataset(dataset, count, preprocess)
        return CalibrationSet(images, f"image folder {calibration_data}: {len(images)} images")
    from imagedata.kinds import build_dataset  # only this path reads datasets

    config = ckpt.config or {}
    try:
        dataset, _ = build_dataset(config, "train", eval_resize_crop(preprocess))
    except (ImportError, FileNotFoundError, ValueError, KeyError, NotImplementedError) as e:
        raise CalibrationUnavailable(
            f"onnx-int8 needs calibration images and the checkpoint's training data cannot be read "
            f"({first_line(e)}); pass --calibration-data DIR (an ImageFolder tree root/<class>/<image> of "
            "images like the ones the model will serve, ideally not the --parity-data images)"
        ) from e
    images, _ = stack_dataset(dataset, count, preprocess)
    where = config.get("data_dir") or "built in"
    return CalibrationSet(images, f"training split of {config.get('data')!r} ({where}): {len(images)} images")


class BatchReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a tensor of images."""

    def __init__(self, input_name: str, images: torch.Tensor, batch_size: int = CALIBRATION_BATCH) -> None:
        self.input_name = input_name
        self.batches = iter(images.split(batch_size))

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch.contiguous().numpy()}


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has AVX-512 VNNI or AVX-VNNI (None where /proc/cpuinfo does not say)."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni"})


def quantize_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    input_name: str,
    calibration: CalibrationSet,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """fp32 ONNX file -> QDQ int8 ONNX file, calibrated on `calibration`; returns the manifest details."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log(f"    calibrating activation ranges ({CALIBRATION_PERCENTILE}th percentile) on {calibration.description}")
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8-") as scratch:
        # Folds BatchNorm into the convolutions and infers shapes first, so that what is quantized is
        # the graph ONNX Runtime will run (quantizing an unfolded BatchNorm would cost accuracy).
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with atomic_path(int8_path) as tmp:
            # the histogram calibrator prints its progress to stdout, which is the CLI's own output
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_static(
                        str(prepared),
                        str(tmp),
                        BatchReader(input_name, calibration.images),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        reduce_range=True,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
                    )
            except Exception as e:
                raise ExportError(f"{fp32_path}: ONNX Runtime's quantize_static failed: {first_line(e)}") from e
    return {
        "method": "onnxruntime.quantization.quantize_static (QDQ)",
        "weights": "int8, per output channel, symmetric, 7-bit range (reduce_range: no int16 saturation without VNNI)",
        "activations": "uint8, per tensor",
        "calibration": {
            "method": "percentile",
            "percentile": CALIBRATION_PERCENTILE,
            "data": calibration.description,
            "samples": len(calibration.images),
        },
        "built_from": Path(fp32_path).name,
        "exporting_cpu_has_vnni": cpu_has_vnni(),
        # the quantizer's version decides the graph; the fp32 file it starts from records its own
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
    }
