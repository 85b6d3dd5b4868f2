#!/usr/bin/env bash
# Make sure uv exists (installing it from PyPI if needed) and sync the workspace from the lock.
# Prints the path of the uv binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never UV_PYTHON_PREFERENCE=only-system

find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return 0; fi
  for candidate in .tools/bin/uv "$HOME/.local/bin/uv"; do
    [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  return 1
}

if ! UV=$(find_uv); then
  echo "bootstrap: uv not found, installing it from PyPI into .tools/" >&2
  PY=$(command -v python3 || command -v python)
  if "$PY" -m venv .tools >/dev/null 2>&1 && .tools/bin/python -m pip install --quiet --disable-pip-version-check uv >&2; then
    UV=.tools/bin/uv
  else
    rm -rf .tools
    "$PY" -m pip install --quiet --user uv >&2 || "$PY" -m pip install --quiet --user --break-system-packages uv >&2
    UV="$HOME/.local/bin/uv"
  fi
fi
# Byte-compile at install: some machines set PYTHONDONTWRITEBYTECODE=1, so nothing is compiled at
# run time and every start pays for parsing every module again (account-api took 6-10 s to import).
# uv compiles what it installs; our own packages are editable installs, compiled here (cheap when
# nothing changed: compileall skips up-to-date files).
export UV_COMPILE_BYTECODE=1
"$UV" sync --frozen --quiet >&2
"$UV" run --frozen --no-sync python -m compileall -q -j 0 shared/src shared-dev/src services/*/src simulators/src >&2
echo "$UV"
