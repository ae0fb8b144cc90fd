# resnet-deploy serving image: TorchServe + our handler + a model store.
#
#   CPU (default):  docker build --build-arg MODEL_STORE=model_store -t resnet-deploy .
#   CUDA+TensorRT:  docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3 \
#                                --build-arg EXTRAS=gpu,trt -t resnet-deploy:cuda .
#   run:            docker run --rm -p 8080:8080 resnet-deploy   (add --gpus all for CUDA)
#
# Token authorization is on (TorchServe 0.12 applies it to inference and management alike):
#   docker exec <container> python -m serve token     prints the inference key.
# The management (8081) and metrics (8082) APIs listen on the container's 127.0.0.1 (our
# config.properties); reach them with `docker exec`. The health check is `python -m serve status`
# (TorchServe's /ping needs the key too): healthy when every model has all its workers ready.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG EXTRAS=""
ARG MODEL_STORE=model_store

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Java 17 for TorchServe's frontend.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin serve

WORKDIR /opt/resnet-deploy
COPY pyproject.toml README.md constraints.txt ./
COPY fsutil ./fsutil
COPY hostinfo ./hostinfo
COPY imagedata ./imagedata
COPY models ./models
COPY train ./train
COPY export ./export
COPY classify ./classify
COPY serve ./serve
COPY client ./client
COPY benchmarks ./benchmarks
# The serving runtime only (the base install), at the versions the last green CI ran.
RUN if [ -n "${EXTRAS}" ]; then spec=".[${EXTRAS}]"; else spec="."; fi \
    && pip install --no-cache-dir -c constraints.txt "${spec}"

COPY --chown=10001:10001 ${MODEL_STORE} /home/serve/model_store

USER 10001
WORKDIR /home/serve
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serve", "status"]

CMD ["python", "-m", "serve", "start", "--foreground", "--model-store", "/home/serve/model_store", "--host", "0.0.0.0", "--port", "8080"]
