#!/usr/bin/env bash
# One-command install on a fresh machine: Java 17 for TorchServe (from Debian's packages when
# `java` is missing), then this project and its test dependencies in editable mode.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v java >/dev/null 2>&1; then
    echo "[install] java not found: installing openjdk-17-jre-headless (TorchServe needs Java 17)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --upgrade --quiet pip
"$PYTHON" -m pip install --quiet -e ".[dev]"
echo "[install] done: $("$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
