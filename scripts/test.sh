#!/usr/bin/env bash
# Sets up everything the tests need, then runs every suite: Python, then Elixir.
# NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout also runs the NimblePool suites;
# TELEMETRY_PATH=/path/to/a/telemetry/checkout compiles telemetry in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --elixir

echo "== mypy (bridge/, configured in pyproject.toml)"
.venv/bin/python -m mypy

echo "== Python suite"
.venv/bin/python -m pytest -q

echo "== Elixir suite"
# hex.pm is unreachable here and Mix refuses to run a project that declares a Hex
# dependency, so the client builds with mix.offline.exs (no Hex dependency; JSON
# through Debian's jiffy) instead of the package's mix.exs.
(cd elixir_client && MIX_EXS=mix.offline.exs PORTBRIDGE_PYTHON="$PWD/../.venv/bin/python" mix test)

echo "== Dialyzer (Elixir client)"
bash scripts/dialyzer.sh
