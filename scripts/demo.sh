#!/usr/bin/env bash
# The README's main job: set up (if needed), get the offline Fashion-MNIST, train LeNet-5 and
# print a results table. `./scripts/demo.sh --quick` runs the quick variant (under a minute).
# Rerunning resumes from (or reuses) the checkpoints in runs/.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
ensure_fashion_mnist
ARG=""
RUNS="${TNJAX_RUNS:-runs}"
if [ "${1:-}" = "--quick" ]; then ARG=":quick"; RUNS="$RUNS/quick"; fi
python -m experiments.main --config="configs/lenet5.py$ARG" --workdir="$RUNS/lenet5_dense" \
  --alsologtostderr
python scripts/results_table.py "$RUNS/lenet5_dense"
