#!/usr/bin/env bash
# Set up (if needed) and run the main job: for now, the end-to-end demonstration of the
# library (decompose a kernel, apply it, report params, FLOPs, error and time). Offline.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python scripts/demo.py "$@"
