"""A TorchServe model store served by Triton (`serve start --server triton --model-store DIR`), so that one
store, the image's /model-store included, serves with either server.

Each `<name>.mar` (serve/package.py) is read back as the export directory it was packaged from: its
`manifest.json` and the artifact files the manifest lists (bare names; serve triton-repo checks each one's
sha256 again), with the model options its `model-config.yaml` holds (workers, dynamic batching, timeout,
top-k, bounds, the measured per-image cost), as TorchServe would serve it. Nothing else of the archive is
read: its handler is TorchServe's; Triton's model.py comes from serve triton-repo.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from export.manifest import MANIFEST_NAME, ExportError, read_manifest

from .budget import ImageCost
from .package import MODEL_CONFIG_NAME, PackageError
from .server import find_models
from .triton_repo import RepoOptions

MAX_CONFIG_BYTES = 1 << 20  # a model-config.yaml or manifest.json is a few kB


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
            config = yaml.safe_load(read_member(zf, MODEL_CONFIG_NAME, MAX_CONFIG_BYTES))
            out.mkdir(parents=True)
            (out / MANIFEST_NAME).write_bytes(read_member(zf, MANIFEST_NAME, MAX_CONFIG_BYTES))
            manifest = read_manifest(out)  # the artifacts' names are checked bare there
            present = set(zf.namelist())
            for artifact in manifest.artifacts:
                if artifact.file in present:
                    with zf.open(artifact.file) as source, open(out / artifact.file, "xb") as target:
                        shutil.copyfileobj(source, target)
        return StoredModel(archive.stem, out, options_from_config(config, base))
    except (zipfile.BadZipFile, KeyError, OSError, yaml.YAMLError, ExportError) as e:
        raise PackageError(f"{archive}: not a model archive that serve package wrote ({e}); {hint}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise PackageError(
            f"{archive}: its {MODEL_CONFIG_NAME} is not one serve package writes ({e}); {hint}"
        ) from None


def read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    with zf.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is larger than {limit} bytes")
    return data


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
