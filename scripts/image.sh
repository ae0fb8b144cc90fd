#!/usr/bin/env bash
# `make image`: build the CPU serving image from the Dockerfile and tag it resnet-deploy:latest and
# resnet-deploy:<version> (the tag `python -m serve manifests` writes by default).
#
#   MODEL_STORE=DIR     bake DIR/*.mar into /model-store (DIR inside this repository, the build context);
#                       default: none baked in, mount one at run time: -v STORE:/model-store:ro
#   BASE_IMAGE=IMAGE    default: python:3.11-slim-bookworm when it can be pulled, else
#                       resnet-deploy-base:bookworm, made once from Debian's packages (scripts/image-base.sh)
#   PIP_SOURCE=online|wheelhouse
#                       online: pip inside the build downloads the wheels (the default when a container
#                       reaches the package index). wheelhouse: this machine's pip (and its proxy/CA settings)
#                       downloads them into .image/wheelhouse (the Triton server's into .image/triton-wheelhouse),
#                       and the build installs from there offline
#                       (the default when a container cannot, e.g. behind a TLS-inspecting proxy)
#   EXTRAS=gpu,trt      optional dependency groups (the CUDA variant, with a CUDA BASE_IMAGE)
#   IMAGE=NAME          tag NAME:latest and NAME:<version> instead (default: resnet-deploy)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

DEFAULT_TAG="$("$PYTHON" -c 'from serve.kubernetes import default_image; print(default_image())')"
NAME="${IMAGE:-${DEFAULT_TAG%:*}}"
TAG="$NAME:${DEFAULT_TAG##*:}"
OFFICIAL_BASE="python:3.11-slim-bookworm"

if ! docker info >/dev/null 2>&1; then
    echo "[image] no Docker engine answers (docker info failed): ./install.sh --docker installs and starts one" >&2
    exit 1
fi

if [ -z "${BASE_IMAGE:-}" ]; then
    if docker image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 || timeout 120 docker pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        BASE_IMAGE="$OFFICIAL_BASE"
    else
        echo "[image] cannot pull $OFFICIAL_BASE: using a Debian 12 base made from Debian's packages"
        scripts/image-base.sh
        BASE_IMAGE="resnet-deploy-base:bookworm"
    fi
fi

if [ -z "${PIP_SOURCE:-}" ]; then
    PIP_SOURCE=wheelhouse
    if docker run --rm "$BASE_IMAGE" python3 -c \
        'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20)' >/dev/null 2>&1; then
        PIP_SOURCE=online
    fi
fi
# The Triton server's wheel and its stub's numpy, unpacked in a stage of their own (Dockerfile, serve/triton_install.py).
read -r TRITON_WHEEL TRITON_STUB_NUMPY < <("$PYTHON" -c 'from serve.triton_install import SERVER_WHEEL, STUB_NUMPY; print(SERVER_WHEEL, STUB_NUMPY)')
rm -rf .image/wheelhouse.offline .image/triton-wheelhouse.offline .image/no-model-store
mkdir -p .image
case "$PIP_SOURCE" in
    online)
        # Nothing for the Dockerfile's wheelhouse* to match: the build downloads.
        [ -d .image/wheelhouse ] && mv .image/wheelhouse .image/wheelhouse.offline
        [ -d .image/triton-wheelhouse ] && mv .image/triton-wheelhouse .image/triton-wheelhouse.offline ;;
    wheelhouse)
        echo "[image] a container's pip cannot reach the package index: downloading wheels here into .image/wheelhouse"
        [ -d .image/wheelhouse.offline ] && mv .image/wheelhouse.offline .image/wheelhouse
        [ -d .image/triton-wheelhouse.offline ] && mv .image/triton-wheelhouse.offline .image/triton-wheelhouse
        # pip's download cache makes this a copy after the first time; setuptools and wheel build this project.
        "$PYTHON" -m pip download -q -c constraints.txt -d .image/wheelhouse ".${EXTRAS:+[$EXTRAS]}" setuptools wheel
        # A folder of their own: added to .image/wheelhouse they would rebuild the dependency layer.
        "$PYTHON" -m pip download -q --no-deps -d .image/triton-wheelhouse "$TRITON_WHEEL" "$TRITON_STUB_NUMPY" ;;
    *)
        echo "[image] PIP_SOURCE must be online or wheelhouse, not $PIP_SOURCE" >&2
        exit 2 ;;
esac

if [ -n "${MODEL_STORE:-}" ]; then
    STORE="$(realpath -m -- "$MODEL_STORE")"
    case "$STORE/" in
        "$PWD"/*) ;;
        *) echo "[image] MODEL_STORE=$MODEL_STORE is outside $PWD, the build context: copy it in, or mount it at run time (-v STORE:/model-store:ro)" >&2; exit 1 ;;
    esac
    if ! compgen -G "$STORE/*.mar" >/dev/null; then
        echo "[image] MODEL_STORE=$MODEL_STORE holds no .mar files: python -m serve package --export-dir exports/NAME --model-store $MODEL_STORE" >&2
        exit 1
    fi
    STORE="${STORE#"$PWD"/}"
else
    STORE=".image/no-model-store"
    mkdir -p "$STORE"
fi

echo "[image] building $TAG from $BASE_IMAGE (pip: $PIP_SOURCE, model store: ${MODEL_STORE:-none, mount one at run time})"
docker build \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg EXTRAS="${EXTRAS:-}" \
    --build-arg MODEL_STORE="$STORE" \
    --build-arg TRITON_WHEEL="$TRITON_WHEEL" \
    --build-arg TRITON_STUB_NUMPY="$TRITON_STUB_NUMPY" \
    -t "$TAG" -t "$NAME:latest" .
docker image ls "$NAME" --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E ":(latest|${TAG##*:}) "
