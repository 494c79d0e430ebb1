#!/usr/bin/env bash
# Regenerates protocol/dspy_commands.json from a real worker's describe (the DSPy
# commands' argument schemas, which the Elixir client compiles its PortBridge.DSPy
# options from), then refreshes the copies of protocol/ files that the Elixir client
# ships in its priv/ (a Hex package cannot read ../protocol, which lies outside it).
#   scripts/sync_protocol.sh              regenerate, refresh every elixir_client/priv/*.json
#   scripts/sync_protocol.sh limits.json  also start shipping protocol/limits.json
# The Elixir suite fails while a copy differs from protocol/ by one byte
# (test/port_bridge/protocol_files_test.exs), the Python suite while
# dspy_commands.json differs from describe (tests/test_dspy_commands_file.py).
# PYTHON=/path/to/python picks the interpreter (default: the repository's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-.venv/bin/python}" scripts/dspy_commands.py

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for copy in elixir_client/priv/*.json; do names+=("$(basename "$copy")"); done
fi

for name in "${names[@]}"; do
  if [ ! -f "protocol/$name" ]; then
    echo "sync_protocol: protocol/$name does not exist" >&2
    exit 1
  fi
  if cmp -s "protocol/$name" "elixir_client/priv/$name"; then
    echo "sync_protocol: elixir_client/priv/$name is up to date"
  else
    cp "protocol/$name" "elixir_client/priv/$name"
    echo "sync_protocol: copied protocol/$name to elixir_client/priv/$name"
  fi
done
