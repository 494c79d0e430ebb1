#!/usr/bin/env bash
# Sets up everything the tests need, then runs every suite: Python, then Elixir.
# NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout also runs the NimblePool suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --elixir

echo "== Python suite"
.venv/bin/python -m pytest -q

if [ -f elixir_client/mix.exs ]; then
  echo "== Elixir suite"
  (cd elixir_client && PORTBRIDGE_PYTHON="$PWD/../.venv/bin/python" mix test)
fi
