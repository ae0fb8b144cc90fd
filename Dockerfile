# resnet-deploy serving image: TorchServe, our handler and the serving runtime, and the Triton server
# (`--server triton`), nothing else. `make image` (scripts/image.sh) builds it; by hand (the Triton build args
# are the requirements serve/triton_install.py names, SERVER_WHEEL and STUB_NUMPY):
#
#   CPU:            docker build --build-arg MODEL_STORE=model_store --build-arg TRITON_WHEEL=<SERVER_WHEEL> \
#                                --build-arg TRITON_STUB_NUMPY=<STUB_NUMPY> -t resnet-deploy .
#   CUDA+TensorRT:  docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3 \
#                                --build-arg EXTRAS=gpu,trt -t resnet-deploy:cuda .
#   run:            docker run --rm --read-only --tmpfs /tmp:exec -p 8080:8080 resnet-deploy   (--gpus all for CUDA)
#   a store at run time:  add -v STORE:/model-store:ro   (every STORE/*.mar is served)
#   with Triton:    append --server triton (the same store, over the Open Inference Protocol on 8080)
#
# BASE_IMAGE needs only a python3 that can make a venv: python:3.11-slim-bookworm, the Debian base that
# scripts/image-base.sh makes when Docker Hub is out of reach, or NVIDIA's image. Behind a TLS-inspecting
# proxy that containers do not trust, put wheels in .image/wheelhouse/ (scripts/image.sh does): the build then
# installs from them offline, in the first stage only, so they never reach the image.
#
# Token authorization is on: `docker exec <container> python -m serve token` prints the inference key.
# Management (8081) and metrics (8082) listen on the container's 127.0.0.1. The only writes go to /tmp
# (the run dir, unpacked archives and logs, the JVM's temp files) and /dev/shm (Triton's Python backend): --read-only needs --tmpfs /tmp:exec
# (exec: an AOTInductor artifact's shared library is unpacked there and loaded; Docker's tmpfs is noexec).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The serving requirements, read from pyproject.toml in a stage of their own: the multi-GB layer below is
# rebuilt only when they (or constraints.txt) change, not for every edit of pyproject.toml (lint settings...).
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
        extras = [e for e in sys.argv[1].split(",") if e]; \
        print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
        "${EXTRAS}" >/requirements.txt

FROM ${BASE_IMAGE} AS venv
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# .image/wheelhouse* matches nothing in the normal (online) build; constraints.txt keeps the COPY valid.
COPY constraints.txt .image/wheelhouse* /wheelhouse/
COPY constraints.txt ./
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# The dependencies first, in a layer of their own (editing the sources or the README rebuilds only the
# small layer after it): the serving runtime only (the base install, plus EXTRAS) at the versions the last
# green CI ran, in a venv (Debian's and Ubuntu's python3 refuse system-wide installs, PEP 668; Ubuntu's
# needs python3-venv for one). A CPU image drops triton, Inductor's GPU compiler (~0.9 GB), which it
# never runs (AOTInductor's CPU artifacts load without it).
RUN if ! python3 -m venv /opt/venv; then \
        apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/* \
        && python3 -m venv --clear /opt/venv; \
    fi \
    && source=() \
    && if compgen -G "/wheelhouse/*.whl" >/dev/null; then source=(--no-index --find-links /wheelhouse); fi \
    && /opt/venv/bin/pip install --no-cache-dir "${source[@]}" -c constraints.txt -r /tmp/requirements.txt \
    && if [[ ",${EXTRAS}," != *,gpu,* ]]; then \
        rm -rf /opt/venv/lib/python3*/site-packages/triton /opt/venv/lib/python3*/site-packages/triton-*.dist-info \
            /opt/venv/bin/proton /opt/venv/bin/proton-viewer; \
    fi \
    && echo /opt/resnet-deploy >"$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/resnet-deploy.pth" \
    && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools
COPY pyproject.toml README.md ./
COPY fsutil ./fsutil
COPY hostinfo ./hostinfo
COPY imagedata ./imagedata
COPY models ./models
COPY export ./export
COPY classify ./classify
COPY serve ./serve
COPY client ./client
# This project beside the venv (its .pth file names /opt/resnet-deploy), with a throwaway pip: the venv
# holds no pip, and its multi-GB layer stays cached.
RUN source=() \
    && if compgen -G "/wheelhouse/*.whl" >/dev/null; then source=(--no-index --find-links /wheelhouse); fi \
    && python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip install --no-cache-dir "${source[@]}" --no-deps --target /opt/resnet-deploy .

# The Triton server (`serve start --server triton`), laid out as serve/triton_install.py expects beside the
# venv: NVIDIA's PyTriton wheel unpacked with --no-deps into /opt/venv/triton/wheel and the numpy 1 its
# backend stub was built against into /opt/venv/triton/stub-site. A stage of its own, so it neither rebuilds
# nor is rebuilt by the multi-GB layer above; scripts/image.sh passes the versions (serve/triton_install.py)
# and, offline, their wheels in .image/triton-wheelhouse.
FROM ${BASE_IMAGE} AS triton
ARG TRITON_WHEEL=""
ARG TRITON_STUB_NUMPY=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY constraints.txt .image/triton-wheelhouse* /wheelhouse/
RUN : "${TRITON_WHEEL:?build with scripts/image.sh (make image), or pass --build-arg TRITON_WHEEL=... and TRITON_STUB_NUMPY=... as serve/triton_install.py names them}" \
    && : "${TRITON_STUB_NUMPY:?pass --build-arg TRITON_STUB_NUMPY=..., as serve/triton_install.py names it}" \
    && source=() \
    && if compgen -G "/wheelhouse/*.whl" >/dev/null; then source=(--no-index --find-links /wheelhouse); fi \
    && python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip install -q --no-cache-dir "${source[@]}" --no-deps --target /opt/venv/triton/wheel "${TRITON_WHEEL}" \
    && /tmp/pip/bin/pip install -q --no-cache-dir "${source[@]}" --no-deps --target /opt/venv/triton/stub-site "${TRITON_STUB_NUMPY}"

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    SERVE_RUN_DIR=/tmp/serve
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Java 17 for TorchServe's frontend.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
RUN useradd --no-create-home --home-dir /tmp --uid 10001 --user-group --shell /usr/sbin/nologin serve
# Triton's Python backend stub links this Python's shared libpython (python:3.11-slim has it, Debian's
# python3 package does not), then the server itself, before the venv so that source edits rebuild neither.
RUN version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && if ! ldconfig -p | grep -q "libpython${version}.so.1.0"; then \
        apt-get update && apt-get install -y --no-install-recommends "libpython${version}" \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi
COPY --from=triton /opt/venv/triton /opt/venv/triton
COPY --from=venv /opt/venv /opt/venv
COPY --from=venv /opt/resnet-deploy /opt/resnet-deploy
ARG MODEL_STORE=model_store
COPY ${MODEL_STORE} /model-store

USER 10001:10001
WORKDIR /
EXPOSE 8080
# Healthy once every model answers a real image with the key (TorchServe's /ping needs the key too, and stays
# "Healthy" while a worker hangs); serve.probe imports no torch, so a check costs little.
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-m", "serve.probe", "--run-dir", "/tmp/serve"]
# Arguments after the image name are added to `serve start`, e.g. --models NAME or --timeout 300.
ENTRYPOINT ["python", "-m", "serve", "start", "--foreground", "--host", "0.0.0.0", "--port", "8080", "--model-store", "/model-store"]
