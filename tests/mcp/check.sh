#!/usr/bin/env bash
# The MCP endpoint's tests: pytest with the official Python SDK against a real `ferry serve`
# (auth on; SQLite, and the pg-marked tests on PostgreSQL too), once with the 2.x client
# (revision 2026-07-28, stateless: test_modern.py and the shared tests) and once with a 1.x
# client (the initialize handshake: test_handshake.py and the shared tests); then the MCP
# Inspector's CLI lists and calls tools over Streamable HTTP. Venvs live under target/
# (made on first use, remade when a requirements file changes); `--install-only` makes them
# and the Inspector's node_modules and stops, which CI runs while Rust compiles.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
modern=$root/target/mcp-venv-modern
handshake=$root/target/mcp-venv-handshake

make_venv() { # dir requirements
  local stamp
  stamp=$(cat "$2" "$root/sdk/python/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ ! -x "$1/bin/pytest" ] || [ "$(cat "$1/.ferry-stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$1"
    python3 -m venv "$1"
    "$1/bin/pip" install -q --disable-pip-version-check -r "$2" -e "$root/sdk/python"
    echo "$stamp" >"$1/.ferry-stamp"
  fi
}
make_inspector() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "mcp: npm not found: install Debian's nodejs and npm (apt-get install nodejs npm)" >&2
    return 1
  fi
  if [ ! -d "$here/inspector/node_modules" ] || ! cmp -s "$here/inspector/package-lock.json" "$here/inspector/node_modules/.package-lock.json"; then
    (cd "$here/inspector" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}
make_venv "$modern" "$here/requirements-modern.txt" &
first=$!
make_venv "$handshake" "$here/requirements-handshake.txt" &
second=$!
make_inspector &
third=$!
wait "$first" && wait "$second" && wait "$third" || { echo "mcp: install failed" >&2; exit 1; }
[ "${1:-}" = "--install-only" ] && exit 0

export FERRY_BIN=${FERRY_BIN:-$root/target/debug/ferry}
if [ -z "${FERRY_TEST_PG_URL:-}" ]; then
  pg=postgres://postgres@127.0.0.1:5432/postgres
  if psql "$pg" -qtAc 'select 1' >/dev/null 2>&1; then
    export FERRY_TEST_PG_URL=$pg
  elif [ "${FERRY_REQUIRE_PG:-}" = 1 ]; then
    echo "mcp: PostgreSQL at $pg does not answer and FERRY_REQUIRE_PG=1" >&2
    exit 1
  fi
fi
cd "$here"
"$modern/bin/ruff" check --quiet .
"$modern/bin/ruff" format --check --quiet .
"$modern/bin/pytest" -q -p no:cacheprovider --timeout 120 test_shared.py test_modern.py test_stdio.py test_inspector.py
"$handshake/bin/pytest" -q -p no:cacheprovider --timeout 120 test_shared.py test_handshake.py test_stdio.py
