#!/usr/bin/env bash
# Dialyzer over the Elixir client, with Debian's erlang-dialyzer (dialyxir would need
# Hex). The PLT holds only the modules the client uses (scripts/dialyzer_modules.exs
# lists them from its beams): ~10 s to build, against minutes for all of Elixir, so
# it is built afresh on every run. Fails on any warning. Unknown functions (the
# optional NimblePool, telemetry, Msgpax and Jason, absent from this build) are
# listed but are no failure; the compiler already checks remote calls.
set -euo pipefail
cd "$(dirname "$0")/../elixir_client"

(MIX_EXS=mix.offline.exs MIX_ENV=dev mix compile)
ebin=_build/dev/lib/port_bridge/ebin
elixir_ebin=$(elixir -e 'IO.puts(:code.lib_dir(:elixir, :ebin))')
plt=_build/dialyzer.plt

mapfile -t used < <(elixir ../scripts/dialyzer_modules.exs "$ebin")
dialyzer --build_plt --output_plt "$plt" -pa "$elixir_ebin" --quiet "${used[@]}"
dialyzer --plt "$plt" -pa "$elixir_ebin" --no_check_plt "$ebin"
