"""Export directories -> a Triton model repository (`python -m serve triton-repo`), the artifact that
Triton (this project's `serve start --server triton`, NVIDIA's container, KServe's Triton runtime) loads
as it is:

    REPO/<name>/config.pbtxt        Python backend, dynamic batching, instances, our limits as parameters
    REPO/<name>/1/model.py          serve/triton_model.py: serve.triton_backend.TritonPythonModel
    REPO/<name>/1/export/           the export's manifest.json and the artifact(s) it serves, sha256-checked

The whole repository is written in a staging folder beside REPO and renamed into place; an existing
REPO is replaced only when this command wrote it (its ownership marker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from export.manifest import ExportError, verify_artifact_file
from fsutil.owned import NotOwnedError, mark_owned, owned_kind, remove_owned_tree, sweep_stale_temporaries

from .budget import HEADROOM, ImageCost
from .package import (
    DEFAULT_MAX_REQUEST_BYTES,
    PackageError,
    PackageOptions,
    measure_cost,
    read_export,
)

MODEL_FILE = Path(__file__).with_name("triton_model.py")
REPOSITORY_KIND = "triton-repository"
VERSION = "1"


@dataclass(frozen=True)
class RepoOptions(PackageOptions):
    """`serve package`'s options (workers are Triton's instances, batch_size its max_batch_size), and the
    bound on the encoded bytes of one request."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


def write_repository(
    export_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    names: Sequence[str | None] = (),
    options: RepoOptions | Sequence[RepoOptions] = RepoOptions(),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Write the repository `out` with one model per export directory (named by `names`, default the
    manifests' names; with `options`, or one options per export) and return the model names."""
    out = Path(out)
    per_model = list(options) if isinstance(options, Sequence) else [options] * len(export_dirs)
    if out.exists() and not out.is_symlink() and any(out.iterdir()) and owned_kind(out) != REPOSITORY_KIND:
        raise PackageError(f"{out} exists and was not written by serve triton-repo; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        mark_owned(staging, REPOSITORY_KIND)
        written = []
        for export_dir, name, model_options in zip(export_dirs, [*names, *[None] * len(export_dirs)], per_model):
            written.append(write_model(Path(export_dir), staging, name, model_options, log))
        if len(set(written)) != len(written):
            raise PackageError(f"two exports would both be model {written}: name them with --name")
        remove_owned_tree(out, REPOSITORY_KIND)
        os.replace(staging, out)
    except NotOwnedError as e:
        raise PackageError(str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def write_model(export_dir: Path, repo: Path, name: str | None, options: RepoOptions, log) -> str:
    manifest, name, artifacts = read_export(export_dir, name, options)
    target = repo / name / VERSION / "export"
    target.mkdir(parents=True)
    shutil.copyfile(export_dir / "manifest.json", target / "manifest.json")
    try:
        for artifact in artifacts:
            verify_artifact_file(export_dir, artifact)
            shutil.copyfile(export_dir / artifact.file, target / artifact.file)
            verify_artifact_file(target, artifact)  # the copy is what Triton loads
    except ExportError as e:
        raise PackageError(str(e)) from None
    shutil.copyfile(MODEL_FILE, repo / name / VERSION / "model.py")
    top_k = min(options.top_k, len(manifest.class_names))
    cost = options.cost or measure_cost(export_dir, artifacts, options)
    (repo / name / "config.pbtxt").write_text(model_config(name, top_k, options, cost))
    log(
        f"model {name}: {', '.join(a.format for a in artifacts)} from {export_dir}; per-call budget {call_s(options):.1f} s at {cost}"
    )
    return name


def call_s(options: RepoOptions) -> float:
    """Seconds of work one `execute` call may take at the measured speed (serve/budget.py's allowance)."""
    return options.response_timeout_s / HEADROOM


def model_config(name: str, top_k: int, options: RepoOptions, cost: ImageCost) -> str:
    """Triton's model configuration (protobuf text format) for one model."""
    parameters = {
        "call_s": call_s(options),
        "image_s": cost.image_s,
        "megapixel_s": cost.megapixel_s,
        "cost_source": "given" if options.cost else "measured",  # measured: each instance checks it again
        "top_k": top_k,
        "instances": options.workers,
        "max_images": options.max_images,
        "max_request_pixels": options.max_request_pixels,
        "max_request_bytes": options.max_request_bytes,
        "max_pixels": options.max_pixels or "",
        "backend": options.backend or "",
        "allow_failed": str(options.allow_failed).lower(),
    }
    entries = ",\n".join(
        f'  {{ key: "{key}" value: {{ string_value: "{quote(str(value))}" }} }}' for key, value in parameters.items()
    )
    return f"""name: "{name}"
backend: "python"
max_batch_size: {options.batch_size}
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "CLASS_NAMES" data_type: TYPE_STRING dims: [ {top_k} ] }},
  {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ {top_k} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {options.max_batch_delay_ms * 1000} }}
instance_group [ {{ count: {options.workers} kind: KIND_CPU }} ]
parameters [
{entries}
]
"""


def quote(text: str) -> str:
    """A protobuf text-format string body."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
