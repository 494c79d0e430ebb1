#!/usr/bin/env bash
# Sets up everything the tests need, then runs every suite: Python, then Elixir.
# NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout also runs the NimblePool suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --elixir

echo "== Python suite"
.venv/bin/python -m pytest -q

echo "== Elixir suite"
# Offline: no Hex dependency is declared (hex.pm is unreachable here); JSON goes
# through Debian's jiffy. The NimblePool suites run only with NIMBLE_POOL_PATH.
(cd elixir_client && PORTBRIDGE_DEPS=offline PORTBRIDGE_PYTHON="$PWD/../.venv/bin/python" mix test)
