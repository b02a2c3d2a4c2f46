# Two commands for a newcomer: `make train` (private training on bundled data)
# and `make test` (the whole test suite). Both build .venv from scratch first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast lint bench bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/dpjax train

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check dpjax kernels tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-peers:
	bash benchmarks/setup_peers.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
