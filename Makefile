# Two commands for a newcomer: `make train` (private training on bundled data)
# and `make test` (the whole test suite). Both build .venv from scratch first,
# on the newest Python the machine has (the stack users get: jax >= 0.11 needs
# Python >= 3.12). `make test-oldest` covers the oldest supported stack
# (constraints/oldest.txt) with the fast tests; CI runs both.

# The first of python3.13, python3.12, python3.11 that runs, on PATH or under pyenv.
find_python = $(shell for v in $(1); do \
  for c in "python$$v" "$$(PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -E "^$$v(\.|$$)" | tail -n 1) pyenv which python$$v 2>/dev/null)"; do \
    [ -n "$$c" ] && "$$c" -c "import sys" >/dev/null 2>&1 && { echo "$$c"; exit 0; }; \
  done; done; echo python3)

PYTHON ?= $(call find_python,3.13 3.12 3.11)
OLDEST_PYTHON ?= $(call find_python,3.11)
ORACLE_PYTHON ?= $(call find_python,3.11 3.12)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast test-oldest oracles flower lint bench bench-peers notebooks clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Test oracles that pin numpy/pandas/scipy exactly live apart (tests/oracles).
.venv-oracles/.installed: tests/oracles/requirements.txt
	rm -rf .venv-oracles
	$(ORACLE_PYTHON) -m venv .venv-oracles
	.venv-oracles/bin/pip install --quiet -r tests/oracles/requirements.txt
	touch $@

oracles: .venv-oracles/.installed

# Flower 1.42 (the `flower` extra) pins protobuf<7, typer<0.21, cryptography<51 and
# pulls rich<15, packaging<26: it would hold back .venv's newest stack, so it lives
# in its own virtualenv. The deployment tests (tests/federated/test_flower_deploy.py)
# and benchmarks/federated_flower.py run Flower's processes from .venv-flower/bin.
.venv-flower/.installed: pyproject.toml
	rm -rf .venv-flower
	$(PYTHON) -m venv .venv-flower
	.venv-flower/bin/pip install --quiet --upgrade pip setuptools wheel
	.venv-flower/bin/pip install --quiet -e '.[flower]'
	touch $@

flower: .venv-flower/.installed

.venv-oldest/.installed: pyproject.toml constraints/oldest.txt
	rm -rf .venv-oldest
	$(OLDEST_PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/pip install --quiet --upgrade pip setuptools wheel
	.venv-oldest/bin/pip install --quiet -c constraints/oldest.txt -e '.[test]'
	touch $@

train: $(STAMP)
	$(BIN)/dpjax train

test: $(STAMP) oracles flower
	$(BIN)/python -c "import sys, jax, flax; print('stack: Python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__)"
	$(BIN)/python -m pytest -n 2 --durations=15

test-fast: $(STAMP) oracles
	$(BIN)/python -m pytest -n 2 -m 'not slow'

test-oldest: .venv-oldest/.installed oracles
	.venv-oldest/bin/python -c "import sys, jax, flax; print('stack: Python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__)"
	.venv-oldest/bin/python -m pytest -n 2 -m 'not slow' -q

lint: $(STAMP)
	$(BIN)/ruff check dpjax kernels tests benchmarks notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The research notebooks at full size, executed into notebooks/_build/ (git-ignored):
# the committed .ipynb files stay without outputs. The tests run them at small size.
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py --size full --output notebooks/_build

bench-peers:
	bash benchmarks/setup_peers.sh

clean:
	rm -rf $(VENV) .venv-oldest .venv-oracles .venv-flower build dist *.egg-info
