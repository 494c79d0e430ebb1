#!/usr/bin/env bash
# Refreshes the copies of protocol/ files that the Elixir client ships in its priv/
# (a Hex package cannot read ../protocol, which lies outside it).
#   scripts/sync_protocol.sh              refresh every elixir_client/priv/*.json
#   scripts/sync_protocol.sh limits.json  also start shipping protocol/limits.json
# The Elixir suite fails while a copy differs from protocol/ by one byte
# (test/port_bridge/protocol_files_test.exs).
set -euo pipefail
cd "$(dirname "$0")/.."

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
