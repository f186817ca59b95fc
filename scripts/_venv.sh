# Sourced by the other scripts: create/reuse .venv and install tnjax with its dev extra.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TNJAX_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[tnjax] creating virtualenv at $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.tnjax-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[tnjax] installing tnjax and its dependencies into $VENV"
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  python -m pip install -q -e "$ROOT[dev]" 2>&1 | grep -v "is ignored" || true
  python -c "import tnjax, jax, flax, tensorly" || { echo "[tnjax] install failed" >&2; exit 1; }
  touch "$STAMP"
fi
cd "$ROOT"

# Installs Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist) when it is missing and
# apt is usable (root); otherwise says how to get it. Never fails the caller.
ensure_fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[tnjax] installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"
    { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } ||
      echo "[tnjax] apt-get install dataset-fashion-mnist failed" >&2
  fi
  if [ ! -f "$dir/train-images-idx3-ubyte.gz" ]; then
    echo "[tnjax] Fashion-MNIST not found at $dir: run 'sudo apt-get install dataset-fashion-mnist'," >&2
    echo "[tnjax] or put the four IDX files in \$TNJAX_DATA_DIR/fashion_mnist/" >&2
  fi
  return 0
}
