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
