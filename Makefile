# Short names for the README's commands.
PYTHON ?= python3

.PHONY: install test demo
install:
	./install.sh
test:
	$(PYTHON) -m pytest
demo:
	$(PYTHON) scripts/demo.py
