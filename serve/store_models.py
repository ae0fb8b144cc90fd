"""A TorchServe model store served by Triton (`serve start --server triton --model-store DIR`), so that one
store, the image's /model-store included, serves with either server.

Each `<name>.mar` (serve/package.py) is read back (serve/archive.py) as the export directory it was packaged
from, with the model options its model-config.yaml holds (workers, dynamic batching, timeout, top-k, bounds,
the measured per-image cost), as TorchServe would serve it. Nothing else of the archive is used: its handler
is TorchServe's; Triton's model.py comes from serve triton-repo, which checks the artifacts' sha256 again.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .archive import extract_export, read_model_config
from .budget import ImageCost
from .package import PackageError
from .server import find_models
from .triton_repo import RepoOptions


@dataclass(frozen=True)
class StoredModel:
    name: str
    export_dir: Path  # the archive's export, unpacked
    options: RepoOptions


def unpack_store(model_store: Path, models: list[str], out: Path, base: RepoOptions) -> list[StoredModel]:
    """Unpack `models` of `model_store` (default: every archive) into `out/<name>`; `base` gives what an
    archive does not hold (max_request_bytes: TorchServe's frontend bounds it, Triton's model does)."""
    return [unpack_archive(model_store / f"{name}.mar", out / name, base) for name in find_models(model_store, models)]


def unpack_archive(archive: Path, out: Path, base: RepoOptions) -> StoredModel:
    hint = f"package it again: python -m serve package --export-dir EXPORT --model-store {archive.parent}"
    try:
        with zipfile.ZipFile(archive) as zf:
            config_name, config = read_model_config(zf)
        extract_export(archive, out)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, yaml.YAMLError) as e:
        raise PackageError(f"{archive}: not a model archive that serve package wrote ({e}); {hint}") from None
    try:
        return StoredModel(archive.stem, out, options_from_config(config, base))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PackageError(f"{archive}: its {config_name} is not one serve package writes ({e!r}); {hint}") from None


def options_from_config(config: dict, base: RepoOptions) -> RepoOptions:
    """The archive's model-config.yaml (serve/package.py's model_config) as Triton's model options."""
    handler = config["handler"]
    options = RepoOptions(
        backend=handler.get("backend"),
        allow_failed=handler.get("allow_failed", False) is True,
        workers=int(config["minWorkers"]),
        batch_size=int(config["batchSize"]),
        max_batch_delay_ms=int(config["maxBatchDelay"]),
        response_timeout_s=int(config["responseTimeout"]),
        top_k=int(handler["top_k"]),
        max_pixels=int(handler["max_pixels"]) if "max_pixels" in handler else None,
        max_images=int(handler["max_images"]),
        max_request_pixels=int(handler["max_request_pixels"]),
        cost=ImageCost.from_dict(handler["cost"]),
        max_request_bytes=base.max_request_bytes,
    )
    counts = [options.workers, options.batch_size, options.top_k, options.max_images, options.max_request_pixels]
    if min(counts) < 1 or options.max_batch_delay_ms < 0 or options.response_timeout_s < 1:
        raise ValueError(f"workers, batch size, top-k and bounds must be at least 1: {config}")
    if options.backend is not None and not isinstance(options.backend, str):
        raise ValueError(f"backend {options.backend!r} is not a format name")
    return options
