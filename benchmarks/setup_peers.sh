#!/usr/bin/env bash
# Creates .venv-bench: the peer libraries of the benchmark suite (PyTorch CPU,
# Opacus, jax-privacy) beside the same JAX stack as the main .venv, so that
# dpjax and jax_privacy are compared on one jax. Optional: the suite reports
# every peer it cannot import as "missing: not installed".
#
#   bash benchmarks/setup_peers.sh            # creates ./.venv-bench from scratch
#   BENCH_VENV=/somewhere MAIN_VENV=/path/to/.venv bash benchmarks/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv-bench}
MAIN_VENV=${MAIN_VENV:-.venv}  # the project's venv, whose JAX stack is pinned here

# Pin the JAX stack to the main venv's when it exists (one jax for every JAX case).
pins=()
if [ -x "$MAIN_VENV/bin/python" ]; then
  while read -r spec; do pins+=("$spec"); done < <(
    "$MAIN_VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
  )
else
  pins=(jax jaxlib flax optax numpy)
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch==2.13.0 resolves to the CPU build (torch-2.13.0+cpu, no CUDA wheels);
# check that no nvidia-* package came with it below.
"$VENV/bin/pip" install --quiet "torch==2.13.0" "opacus>=1.5" "jax-privacy>=1.0" "${pins[@]}"
if "$VENV/bin/pip" list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "setup_peers.sh: a CUDA torch came in; this suite wants the CPU build" >&2
  exit 1
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "opacus", "jax-privacy", "jax", "jaxlib", "flax", "optax", "numpy"):
    print(f"{name} {md.version(name)}")
PY
