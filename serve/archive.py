"""A model archive (`.mar`, serve/package.py) read back as untrusted input: its model-config.yaml (bounded
reads, `yaml.safe_load`, a mapping) and the export inside it (manifest.json and those of the artifacts it
lists that the archive holds, bare names only, each sha256-checked; serve package leaves out the ones it
does not serve). The manifests (serve/kubernetes.py, serve/kserve_triton.py) and Triton
serving a model store (serve/store_models.py) read archives through here.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import yaml

from export.manifest import ExportError, read_manifest, verify_artifact_file

MAX_METADATA_BYTES = 64 * 1024  # a model-config.yaml is a few lines; refuse anything that is not
ARCHIVE_MANIFEST = "MAR-INF/MANIFEST.json"


class ArchiveError(ValueError):
    """What is wrong inside an archive; the caller names the archive."""


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """A metadata file of `archive`, refused when larger than metadata should be."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ArchiveError(f"no {name} inside; re-package it with python -m serve package") from None
    if info.file_size > MAX_METADATA_BYTES:
        raise ArchiveError(f"{name} is {info.file_size} bytes, more than metadata should be")
    return archive.read(info)


def read_model_config(archive: zipfile.ZipFile) -> tuple[str, dict]:
    """(name, content) of the model-config file that the archive's MAR-INF/MANIFEST.json names. Raises
    ArchiveError, or ValueError / yaml.YAMLError for metadata that does not parse."""
    manifest = json.loads(read_member(archive, ARCHIVE_MANIFEST))
    model = manifest.get("model") if isinstance(manifest, dict) else None
    config_name = model.get("configFile") if isinstance(model, dict) else None
    if not isinstance(config_name, str) or not config_name:
        raise ArchiveError(f"{ARCHIVE_MANIFEST} names no model-config file; re-package it with python -m serve package")
    config = yaml.safe_load(read_member(archive, config_name))
    if not isinstance(config, dict):
        raise ArchiveError(f"{config_name} is not a mapping")
    return config_name, config


def extract_export(archive_path: Path, out: Path) -> None:
    """The export inside a .mar (manifest.json and the artifacts it lists that the archive holds) into `out`,
    each artifact's sha256 checked against the manifest; the archive is untrusted, so only those bare names
    are read."""
    out.mkdir(parents=True)
    with zipfile.ZipFile(archive_path) as archive:
        copy_member(archive, "manifest.json", out)
        held = set(archive.namelist())
        try:
            artifacts = read_manifest(out).artifacts
            for artifact in (a for a in artifacts if a.file in held):
                copy_member(archive, artifact.file, out)
                verify_artifact_file(out, artifact)
        except ExportError as e:
            raise ValueError(f"{archive_path}: {e}") from None


def copy_member(archive: zipfile.ZipFile, name: str, out: Path) -> None:
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a bare file name")
    with archive.open(name) as source, open(out / name, "wb") as target:
        shutil.copyfileobj(source, target)
