# resnet-deploy serving image: TorchServe, our handler and the serving runtime, nothing else.
# `make image` (scripts/image.sh) builds it; by hand:
#
#   CPU:            docker build --build-arg MODEL_STORE=model_store -t resnet-deploy .
#   CUDA+TensorRT:  docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3 \
#                                --build-arg EXTRAS=gpu,trt -t resnet-deploy:cuda .
#   run:            docker run --rm --read-only --tmpfs /tmp -p 8080:8080 resnet-deploy   (--gpus all for CUDA)
#   a store at run time:  add -v STORE:/model-store:ro   (every STORE/*.mar is served)
#
# BASE_IMAGE needs only a python3 that can make a venv: python:3.11-slim-bookworm, the Debian base that
# scripts/image-base.sh makes when Docker Hub is out of reach, or NVIDIA's image. Behind a TLS-inspecting
# proxy that containers do not trust, put wheels in .image/wheelhouse/ (scripts/image.sh does): the build then
# installs from them offline, in the first stage only, so they never reach the image.
#
# Token authorization is on: `docker exec <container> python -m serve token` prints the inference key.
# Management (8081) and metrics (8082) listen on the container's 127.0.0.1. The only writes go to /tmp
# (TorchServe's run dir, its unpacked archives and logs, the JVM's temp files): --read-only needs --tmpfs /tmp.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS venv
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# .image/wheelhouse* matches nothing in the normal (online) build; constraints.txt keeps the COPY valid.
COPY constraints.txt .image/wheelhouse* /wheelhouse/
COPY pyproject.toml README.md constraints.txt ./
COPY models ./models
COPY export ./export
COPY serve ./serve
COPY client ./client
# The serving runtime only (the base install), at the versions the last green CI ran, in a venv (Debian's
# and Ubuntu's python3 refuse system-wide installs, PEP 668; Ubuntu's needs python3-venv for one); then pip
# itself, which serving never runs, goes.
RUN if [ -n "${EXTRAS}" ]; then spec=".[${EXTRAS}]"; else spec="."; fi \
    && source=() \
    && if compgen -G "/wheelhouse/*.whl" >/dev/null; then source=(--no-index --find-links /wheelhouse); fi \
    && if ! python3 -m venv /opt/venv; then \
        apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/* \
        && python3 -m venv --clear /opt/venv; \
    fi \
    && /opt/venv/bin/pip install --no-cache-dir "${source[@]}" -c constraints.txt "${spec}" \
    && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools wheel

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
COPY --from=venv /opt/venv /opt/venv
ARG MODEL_STORE=model_store
COPY ${MODEL_STORE} /model-store

USER 10001:10001
WORKDIR /
EXPOSE 8080
# Healthy once every model has all its workers ready (TorchServe's /ping needs the key too).
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-m", "serve", "status"]
# Arguments after the image name are added to `serve start`, e.g. --models NAME or --timeout 300.
ENTRYPOINT ["python", "-m", "serve", "start", "--foreground", "--host", "0.0.0.0", "--port", "8080", "--model-store", "/model-store"]
