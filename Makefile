# The README's commands. Inside an active virtual or conda environment they use it; otherwise the
# project's own .venv (made by ./install.sh) comes first on PATH, so no `source` step is needed.
ifeq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
ifneq ($(wildcard .venv/bin/python),)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
endif
endif
PYTHON ?= python3

.PHONY: install test lint demo constraints image
install:
	./install.sh
test: lint
	$(PYTHON) -m pytest
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
demo:
	$(PYTHON) scripts/demo.py
# Rewrite constraints.txt with the exact versions of the project's dependencies installed here
# (run after a green `make test`).
constraints:
	$(PYTHON) scripts/constraints.py
# The CPU serving image, resnet-deploy:latest and :<version> (scripts/image.sh; README, "The serving image").
# MODEL_STORE=DIR bakes DIR's archives in; BASE_IMAGE, PIP_SOURCE and EXTRAS as scripts/image.sh says.
image:
	MODEL_STORE="$(MODEL_STORE)" PYTHON="$(PYTHON)" scripts/image.sh
