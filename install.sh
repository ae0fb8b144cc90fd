#!/usr/bin/env bash
# One-command install on a fresh Debian 12 / Ubuntu 22.04+ machine, or into the active environment.
#
#   ./install.sh                 everything (train, export, serve, load tests, the test suite)
#   ./install.sh --serving-only  only the serving runtime (what a TorchServe worker needs)
#   ./install.sh --triton        with --serving-only: also the Triton server (the full install always has it)
#   ./install.sh --latest        newest allowed versions instead of constraints.txt's
#   ./install.sh --bench-tools   also what `python -m benchmarks serve` compares with: ApacheBench (Debian's
#                                apache2-utils) and captum (TorchServe's stock image handler imports it)
#   ./install.sh --docker        also a Docker engine for `make image` and its tests: Debian's docker.io and
#                                debootstrap (the image's base when Docker Hub is out of reach), and dockerd
#                                started when none answers (needs root or sudo; again is harmless)
#   PYTHON=python3.12 ./install.sh   make .venv with that interpreter instead of python3
#
# - Java 17 for TorchServe's frontend, from Debian's packages when `java` is missing.
# - Python packages go into the active virtual environment or conda environment when there is one;
#   otherwise into `.venv` here (a fresh Debian/Ubuntu python3 refuses system-wide installs, PEP 668),
#   installing Debian's python3-venv first when the system Python cannot make one.
# - Versions come from constraints.txt, the exact set the last green CI ran (`make constraints`
#   rewrites it from this environment).
set -euo pipefail
cd "$(dirname "$0")"

EXTRAS="dev"
CONSTRAINTS=(-c constraints.txt)
BENCH_TOOLS=""
TRITON=1
# Triton's server binary and Python backend, from NVIDIA's PyTriton wheel, which pins numpy<2: unpacked with
# --no-deps outside the environment's packages (serve/triton_install.py), with the numpy 1 its backend
# stub was built against beside it; the environment's own packages and `pip check` stay as they are.
# The versions are serve/triton_install.py's (SERVER_WHEEL, STUB_NUMPY), read once the project is installed.
DOCKER=""
while [ $# -gt 0 ]; do
    case "$1" in
        --latest) CONSTRAINTS=() ;;
        --serving-only) EXTRAS=""; [ "$TRITON" = 1 ] && TRITON="" ;;
        --triton) TRITON=2 ;;
        --bench-tools) BENCH_TOOLS=1 ;;
        --docker) DOCKER=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see ./install.sh --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$BENCH_TOOLS" ]; then
    EXTRAS="${EXTRAS:+$EXTRAS,}bench"
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "[install] $* is needed and this is not a Debian/Ubuntu machine: install it, then run ./install.sh again" >&2
        exit 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

if ! command -v java >/dev/null 2>&1; then
    echo "[install] java not found: installing openjdk-17-jre-headless (TorchServe needs Java 17)"
    apt_install openjdk-17-jre-headless
fi

if [ -n "$BENCH_TOOLS" ] && ! command -v ab >/dev/null 2>&1; then
    echo "[install] installing apache2-utils (ApacheBench, the serving benchmark's cross-check of locust)"
    apt_install apache2-utils
fi

if [ -n "$DOCKER" ]; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        echo "[install] installing docker.io and debootstrap (Debian's Docker engine; the image's own base)"
        apt_install docker.io debootstrap
    fi
    if ! $SUDO docker info >/dev/null 2>&1; then
        echo "[install] starting dockerd (log: /var/log/dockerd.log)"
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl start docker
        else
            $SUDO sh -c 'nohup dockerd >>/var/log/dockerd.log 2>&1 &'
        fi
        for _ in $(seq 60); do
            $SUDO docker info >/dev/null 2>&1 && break
            sleep 1
        done
        $SUDO docker info >/dev/null 2>&1 || { echo "[install] dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2; exit 1; }
    fi
    echo "[install] Docker engine: $($SUDO docker version --format '{{.Server.Version}}'), storage driver $($SUDO docker info --format '{{.Driver}}')"
fi

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PYTHON="python"
    WHERE="the active environment (${VIRTUAL_ENV:-${CONDA_PREFIX}})"
else
    BASE_PYTHON="${PYTHON:-python3}"
    if ! command -v "$BASE_PYTHON" >/dev/null 2>&1; then
        echo "[install] $BASE_PYTHON not found: installing Debian's python3"
        apt_install python3 python3-venv
    fi
    if ! "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "[install] $(command -v "$BASE_PYTHON") is $("$BASE_PYTHON" --version 2>&1); this project needs Python 3.10 or newer:" \
             "run PYTHON=/path/to/python3.X ./install.sh" >&2
        exit 1
    fi
    if [ -e .venv ] && [ ! -f .venv/pyvenv.cfg ]; then
        echo "[install] .venv exists but is not a virtual environment: move it away, then run ./install.sh again" >&2
        exit 1
    fi
    # A .venv that a stopped run left without pip is made again (--clear empties only a virtual environment).
    if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
        echo "[install] creating .venv with $(command -v "$BASE_PYTHON") ($("$BASE_PYTHON" --version 2>&1))"
        if ! "$BASE_PYTHON" -m venv --clear .venv >/dev/null 2>&1; then
            echo "[install] $BASE_PYTHON cannot make a virtual environment (no ensurepip): installing python3-venv"
            apt_install python3-venv
            "$BASE_PYTHON" -m venv --clear .venv
        fi
    fi
    PYTHON=".venv/bin/python"
    WHERE=".venv"
fi

SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
echo "[install] installing resnet-deploy ($SPEC) into $WHERE${CONSTRAINTS:+ with constraints.txt}"
"$PYTHON" -m pip install --quiet --upgrade pip
"$PYTHON" -m pip install --quiet "${CONSTRAINTS[@]}" -e "$SPEC"
if [ -n "$TRITON" ]; then
    TRITON_HOME="$("$PYTHON" -c 'import sys; print(sys.prefix)')/triton"
    read -r TRITON_WHEEL TRITON_STUB_NUMPY < <("$PYTHON" -c 'from serve.triton_install import SERVER_WHEEL, STUB_NUMPY; print(SERVER_WHEEL, STUB_NUMPY)')
    echo "[install] unpacking $TRITON_WHEEL (the Triton server) and $TRITON_STUB_NUMPY (its backend stub's) into $TRITON_HOME"
    "$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$TRITON_HOME/wheel" "$TRITON_WHEEL"
    "$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$TRITON_HOME/stub-site" "$TRITON_STUB_NUMPY"
    # The backend stub links the system's shared libpython of this Python version.
    PY_VERSION="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if ! "$PYTHON" -c "import ctypes; ctypes.CDLL('libpython$PY_VERSION.so.1.0')" 2>/dev/null; then
        echo "[install] installing libpython$PY_VERSION (Triton's Python backend stub links it)"
        apt_install "libpython$PY_VERSION"
    fi
fi
echo "[install] done: $("$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
echo
echo "Next:"
if [ -n "$EXTRAS" ]; then
    echo "  make test     # the test suite"
    echo "  make demo     # the whole pipeline on real data"
else
    echo "  $PYTHON -m serve --help   # the serving runtime only: package, start, stop (no training, export or tests)"
fi
if [ "$WHERE" = ".venv" ]; then
    echo "  . .venv/bin/activate   # to type python -m train / export / serve / client yourself"
fi
