#!/usr/bin/env bash
# GPU figures in one call of at most 8 minutes: inference speed, dynamic convolution and
# training throughput, with mixed precision, each with and without XLA (jit_compile).
#
#   bash benchmarks/gpu.sh OUT_DIR [--smoke]
#
# Run from the repository root on a GPU machine that has the repository's .venv. Writes
# OUT_DIR/{machine.txt,inference_speed.json,dynamic_conv.json,training_throughput.json} and
# OUT_DIR/*.log. Each script has its own time limit (sum: 420 s, plus ~20 s for the GPU check) and writes its JSON after
# every configuration, so a script stopped by its limit still leaves what it measured
# ("complete": false). Exits 3 without a GPU (GPU_SH_ALLOW_CPU=1 runs anyway, for --smoke).
set -uo pipefail

OUT_DIR="${1:?usage: bash benchmarks/gpu.sh OUT_DIR [--smoke]}"
SMOKE="${2:-}"
PY="${PYTHON:-.venv/bin/python}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.." || exit 1

EXTRA=()
if [[ "$SMOKE" == "--smoke" ]]; then
  EXTRA=(--smoke)
elif [[ -n "$SMOKE" ]]; then
  echo "unknown option $SMOKE (only --smoke)" >&2
  exit 2
fi

start=$(date +%s)
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  grep -m1 "model name" /proc/cpuinfo || true
  echo "cpus: $(nproc)"
} > "$OUT_DIR/machine.txt"

# One TensorFlow start-up to check that it sees a GPU (about 10-20 s).
if ! "$PY" -c "import tensorflow as tf, sys; g = tf.config.list_physical_devices('GPU'); print('TensorFlow', tf.__version__, 'GPUs:', g); sys.exit(0 if g else 3)" \
    >> "$OUT_DIR/machine.txt" 2>&1; then
  if [[ "${GPU_SH_ALLOW_CPU:-0}" != "1" ]]; then
    echo "TensorFlow sees no GPU (see $OUT_DIR/machine.txt); set GPU_SH_ALLOW_CPU=1 to run on CPU." >&2
    exit 3
  fi
  echo "No GPU: running on the CPU because GPU_SH_ALLOW_CPU=1." >&2
fi
cat "$OUT_DIR/machine.txt"

status=0
run() {  # run NAME SECONDS ARGS...
  local name="$1" limit="$2"
  shift 2
  echo "== $name (limit ${limit} s) =="
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" "benchmarks/$name.py" \
    --out="$OUT_DIR/$name.json" "$@" ${EXTRA[@]+"${EXTRA[@]}"} 2>"$OUT_DIR/$name.log"
  local code=$?
  if [[ $code -ne 0 ]]; then
    echo "$name exited with $code (124: time limit); log: $OUT_DIR/$name.log"
    tail -n 5 "$OUT_DIR/$name.log"
    status=1
  fi
}

# Inference: paper x4, float32 / float16 / bfloat16, plain and fused ops, whole-model XLA.
run inference_speed 180 --configs=tf-float32-shift,tf-float32-fused,tf-float16-fused,tf-bfloat16-fused,tf-float16-fused-xla --warmup=5 --repeats=20
# Dynamic convolution: four implementations, forward and forward+backward, XLA off and on.
run dynamic_conv 100 --mixed_precision --jit_compile=both --warmup=5 --repeats=30
# Training: paper + small at the paper's batch 32 and 120x120 patches, XLA off and on.
run training_throughput 140 --mixed_precision --jit_compile=both --batch_size=32 --warmup=3 --steps=20

echo "gpu.sh: $(( $(date +%s) - start )) s in all; results in $OUT_DIR"
exit $status
