#!/usr/bin/env bash
# Installs what portbridge needs on a fresh Debian machine; safe to run again.
#   scripts/setup.sh           the Python venv (.venv) with DSPy and the test tools
#   scripts/setup.sh --elixir  also Debian's elixir, erlang-jiffy and erlang-dialyzer (the Elixir client)
set -euo pipefail
cd "$(dirname "$0")/.."

want_elixir=0
[ "${1:-}" = "--elixir" ] && want_elixir=1

python=${PORTBRIDGE_SETUP_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi
stamp=.venv/.portbridge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing portbridge[dspy,test] into .venv"
  # (grep drops this machine's notes about missing local mirrors, nothing else)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dspy,test]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import bridge, orjson, msgpack, pytest, hypothesis, jsonschema, mypy, dspy" \
    || { echo "setup: the install failed (see above)" >&2; exit 1; }
  touch "$stamp"
fi

if [ "$want_elixir" = 1 ] && ! { command -v mix >/dev/null && command -v dialyzer >/dev/null && erl -noshell -eval 'halt(case code:lib_dir(jiffy) of {error,_} -> 1; _ -> 0 end)' 2>/dev/null; }; then
  echo "setup: installing Debian's elixir, erlang-jiffy and erlang-dialyzer"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq elixir erlang-jiffy erlang-dialyzer >/dev/null
fi
