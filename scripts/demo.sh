#!/usr/bin/env bash
# The README's main job: set up (if needed), get the offline Fashion-MNIST, train LeNet-5 dense,
# compress it to 10% of its compressed layers' parameters (TT-matrix/RTT, decomposition +
# sequential training + fine-tuning) and print both in one table.
# `./scripts/demo.sh --quick` runs the quick variants (a couple of minutes).
# Rerunning resumes from (or reuses) the checkpoints in runs/.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
ensure_fashion_mnist
ARG=""
RUNS="${TNJAX_RUNS:-runs}"
if [ "${1:-}" = "--quick" ]; then ARG="quick,"; RUNS="$RUNS/quick"; fi
python -m experiments.main --config="configs/lenet5.py:${ARG%,}" --workdir="$RUNS/lenet5_dense"
python -m experiments.main \
  --config="configs/compress_lenet5.py:${ARG}format=rtt,rate=0.1,teacher_workdir=$RUNS/lenet5_dense" \
  --workdir="$RUNS/lenet5_rtt_0.1"
python scripts/results_table.py "$RUNS/lenet5_dense" "$RUNS/lenet5_rtt_0.1"
