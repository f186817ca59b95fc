#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
ensure_fashion_mnist  # the quick configs read it; installed from Debian when apt is usable
ruff check .
python -m pytest -n 2 "$@"
