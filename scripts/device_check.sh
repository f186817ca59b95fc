#!/usr/bin/env bash
# The checks to run on an accelerator machine (GPU/TPU), as one prepared run of under 10
# minutes: the benchmark suite, one epoch of the main job (LeNet-5 on Fashion-MNIST), one
# epoch of a ResNet (ResNet-20 on synthetic 32x32 images, CIFAR-10's size) and the tests.
# Writes its logs and JSON to $OUT (default ./device_check) and prints a summary.
#
#   bash scripts/device_check.sh            # JAX picks the accelerator if it has one
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/device_check}"
mkdir -p "$OUT"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $1 ($(date +%T))"; }
step "devices"
"$PY" -c "import jax; print(jax.default_backend(), jax.devices())" | tee "$OUT/devices.txt"
step "benchmark suite (2 processes)"
timeout 240 "$PY" scripts/bench.py --reps 5 --processes 2 --only linear,conv,train \
  --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1; echo "exit $?"
tail -20 "$OUT/bench.md" 2>/dev/null
step "main job, one epoch (LeNet-5, Fashion-MNIST)"
timeout 120 "$PY" -m experiments.main --config=configs/lenet5.py:epochs=1 \
  --workdir="$OUT/lenet5" > "$OUT/lenet5.log" 2>&1; echo "exit $?"
tail -1 "$OUT/lenet5.log"
step "ResNet-20, one epoch of 50,000 synthetic 32x32 images"
timeout 180 "$PY" -m experiments.main --config=configs/resnet_cifar.py:quick \
  --config.data.num_train=50000 --config.data.num_test=10000 --config.batch_size=128 \
  --config.num_steps="${RESNET_STEPS:-390}" --workdir="$OUT/resnet20" > "$OUT/resnet20.log" 2>&1
echo "exit $?"
tail -1 "$OUT/resnet20.log"
step "tests"
timeout 300 "$PY" -m pytest -q -x -n 4 tests/ops tests/formats tests/nn tests/test_functional.py \
  > "$OUT/tests.log" 2>&1; echo "exit $?"
tail -3 "$OUT/tests.log"
step "done"
