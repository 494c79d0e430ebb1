#!/usr/bin/env bash
# Sets up the venv, then spawns a worker and drives a DSPy program through real frames
# on the built-in offline LM (no network, no API key).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/portbridge demo "$@"
