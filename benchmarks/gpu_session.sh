#!/usr/bin/env bash
# One GPU session in one device `run` call (under 9 minutes): the benchmark
# suite (benchmarks/run.py --device gpu), the noise benchmark, and the
# scale / LoRA benchmarks in --quick mode when they exist in the tree. Every
# step has its own timeout inside one overall deadline, so one slow piece
# cannot eat the rest; everything lands under $OUT in at most 8 files.
#
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=560)   # on the GPU machine
#   bash benchmarks/gpu_session.sh --dry-run     # print the plan, run nothing
#   OUT=/tmp/gs bash benchmarks/gpu_session.sh --smoke   # CPU: tiny sizes, every step
#
# Nothing is installed from the internet (the GPU machine has none). dpjax runs
# from this tree on PYTHONPATH. Peers missing from the GPU image (opacus,
# jax_privacy) are reported by the suite as "missing: not installed"; to
# benchmark them, put their wheels in .whl/ (ignored by git, carried with
# carry=[".whl"]; docs/benchmarks.md lists them) and they are installed into
# /tmp/site with --no-index first.
#
# Files under $OUT: SUMMARY.md (each step, exit code, seconds), RESULTS_gpu.md,
# RESULTS_noise_gpu.md, suite_gpu.png, results.tgz (every json/jsonl/png/md and
# every log).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry ;;
  --smoke) MODE=smoke ;;
  *) echo "usage: bash benchmarks/gpu_session.sh [--dry-run | --smoke]" >&2; exit 2 ;;
esac
OUT=${OUT:-$ROOT/benchmarks/results/gpu_session}
PY=${PYTHON:-python3}
DEADLINE_S=${GPU_SESSION_DEADLINE_S:-500}  # the whole script; the run call gets ~560
SLOW=1  # the smoke run on a shared 2-core CPU gets 3x every timeout
if [ "$MODE" = smoke ]; then SLOW=3; DEADLINE_S=${GPU_SESSION_DEADLINE_S:-1500}; fi
WORK=$(mktemp -d)
mkdir -p "$WORK/results" "$WORK/logs"
[ "$MODE" = dry ] || mkdir -p "$OUT"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false MPLBACKEND=Agg
if [ "$MODE" = gpu ]; then
  # PLATFORM_NOTES: autotuning made one small transformer compile for > 40 s.
  export XLA_FLAGS="--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false${XLA_FLAGS:+ $XLA_FLAGS}"
  DEV=gpu
else
  DEV=cpu
fi
SUMMARY="$WORK/SUMMARY.md"
{
  echo "# GPU session $(date -u '+%Y-%m-%d %H:%M UTC') (mode $MODE)"
  echo
  echo "XLA_FLAGS: \`${XLA_FLAGS:-}\`; deadline ${DEADLINE_S} s; python: $($PY -V 2>&1)"
  echo
  echo "| step | exit | seconds | note |"
  echo "| --- | ---: | ---: | --- |"
} >"$SUMMARY"

# step NAME BUDGET_S COMMAND...: runs COMMAND with timeout min(BUDGET_S, time left).
step() {
  local name=$1 budget=$(($2 * SLOW))
  shift 2
  local left=$((DEADLINE_S - ($(date +%s) - START)))
  local t=$((budget < left ? budget : left))
  if [ "$MODE" = dry ]; then
    echo "would run [$name, timeout ${budget} s]: $*"
    return 0
  fi
  if [ "$t" -lt 10 ]; then
    echo "| $name | - | 0 | skipped: deadline reached |" >>"$SUMMARY"
    return 0
  fi
  echo "== $name (timeout $t s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$t" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  local note=""
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after $t s"
  echo "| $name | $rc | $(($(date +%s) - t0)) | $note |" >>"$SUMMARY"
  tail -n 5 "$WORK/logs/$name.log"
}

if [ "$MODE" != dry ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$WORK/logs/wheels.log" 2>&1 &&
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  echo "| wheels | $? | - | $(ls .whl | tr '\n' ' ') |" >>"$SUMMARY"
fi

step env 60 bash -c "nvidia-smi || true; $PY - <<'PY'
import importlib, jax
print('backend', jax.default_backend(), jax.devices())
for m in ('jax', 'flax', 'optax', 'numpy', 'scipy', 'torch', 'opacus', 'jax_privacy', 'dp_accounting'):
    try:
        print(m, getattr(importlib.import_module(m), '__version__', 'present'))
    except Exception as e:  # noqa: BLE001
        print(m, 'missing:', type(e).__name__, e)
import dpjax, dpjax.kernels
print('dpjax from', dpjax.__file__)
PY"
if [ "$MODE" = gpu ] && ! grep -q "^backend gpu" "$WORK/logs/env.log"; then
  echo "| abort | 1 | - | JAX sees no GPU: nothing else run (see logs/env.log) |" >>"$SUMMARY"
  MODE=nogpu
fi

if [ "$MODE" = smoke ]; then
  step suite 200 "$PY" benchmarks/run.py --device cpu --toy --only training --workloads mlp \
    --methods jax_nonprivate,dpjax_vmap,jax_privacy,opacus_hooks \
    --results-dir "$WORK/results" --md "$WORK/RESULTS_gpu.md"
  step noise 100 "$PY" benchmarks/noise.py --quick --repeat 2 \
    --out-dir "$WORK/results" --md "$WORK/RESULTS_noise_gpu.md"
elif [ "$MODE" != nogpu ]; then
  # The suite's own budget (270 s by default) stops starting cases in time.
  step suite 300 "$PY" benchmarks/run.py --device gpu --only training --budget 240 \
    --results-dir "$WORK/results" --md "$WORK/RESULTS_gpu.md"
  step noise 90 "$PY" benchmarks/noise.py --device gpu --sizes 1M,10M,36.8M,100M \
    --tree-sizes 36.8M --repeat 10 --out-dir "$WORK/results" --md "$WORK/RESULTS_noise_gpu.md"
fi
if [ "$MODE" != nogpu ]; then
  for name in scale lora finetune; do
    if [ -f "benchmarks/$name.py" ]; then
      step "$name" 60 "$PY" "benchmarks/$name.py" --device "$DEV" --quick
    elif [ "$MODE" != dry ]; then
      echo "| $name | - | 0 | not present (benchmarks/$name.py not in this tree) |" >>"$SUMMARY"
    fi
  done
fi

if [ "$MODE" = dry ]; then
  rm -rf "$WORK"
  exit 0
fi
echo >>"$SUMMARY"
echo "Total $(($(date +%s) - START)) s. Logs and every result file: results.tgz." >>"$SUMMARY"
# Result files the benchmarks wrote inside the tree (scale/LoRA write theirs there).
for f in benchmarks/RESULTS_scale*.md benchmarks/RESULTS_lora*.md benchmarks/RESULTS_finetune*.md; do
  [ -f "$f" ] && [ "$f" -nt "$WORK/logs" ] && cp "$f" "$WORK/results/"
done
for f in "$SUMMARY" "$WORK/RESULTS_gpu.md" "$WORK/RESULTS_noise_gpu.md" "$WORK"/results/suite_*.png; do
  [ -f "$f" ] && cp "$f" "$OUT/"
done
tar czf "$OUT/results.tgz" -C "$WORK" .
cat "$SUMMARY"
ls -la "$OUT"
rm -rf "$WORK"
