#!/usr/bin/env bash
# The Python SDK's checks: pytest against the real server binary (SQLite; the PostgreSQL-marked
# tests also on PostgreSQL), with the `pydantic` and `langgraph` extras (and the LangGraph
# conformance suite) and again without pydantic, then mypy --strict
# and ruff (lint and format). Two venvs under target/ (made on first use; `--install-only`
# makes them and stops, which CI runs in the background while Rust compiles).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
sdk=$root/sdk/python
with=${FERRY_PY_VENV:-$root/target/py-venv}
without=$with-nopydantic

# A venv is (re)made when missing or when pyproject.toml changed since it was made.
stamp=$(sha256sum "$sdk/pyproject.toml" | cut -d' ' -f1)
make_venv() { # dir extras
  if [ ! -x "$1/bin/pytest" ] || [ "$(cat "$1/.ferry-stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$1"
    python3 -m venv "$1"
    "$1/bin/pip" install -q --disable-pip-version-check -e "$sdk[$2]"
    echo "$stamp" >"$1/.ferry-stamp"
  fi
}
make_venv "$with" "pydantic,ws,dev,langgraph,langgraph-test,memory-test" &
first=$!
make_venv "$without" "ws,dev" &
second=$!
wait "$first" && wait "$second" || { echo "python: venv install failed" >&2; exit 1; }
[ "${1:-}" = "--install-only" ] && exit 0

export FERRY_BIN=${FERRY_BIN:-$root/target/debug/ferry}
# The PostgreSQL-marked tests run there too when it answers (CI requires it: FERRY_REQUIRE_PG=1).
if [ -z "${FERRY_TEST_PG_URL:-}" ]; then
  pg=postgres://postgres@127.0.0.1:5432/postgres
  if psql "$pg" -qtAc 'select 1' >/dev/null 2>&1; then
    export FERRY_TEST_PG_URL=$pg
  elif [ "${FERRY_REQUIRE_PG:-}" = 1 ]; then
    echo "python: PostgreSQL at $pg does not answer and FERRY_REQUIRE_PG=1" >&2
    exit 1
  else
    echo "python: PostgreSQL at $pg does not answer: the pg-marked tests run on SQLite only"
  fi
fi
if [ ! -x "$FERRY_BIN" ]; then
  echo "python: no server binary at $FERRY_BIN (cargo build first)" >&2
  exit 1
fi
cd "$sdk"
step() { echo "python: $1"; }
t0=$(date +%s)
# Three test processes: the tests mostly wait on servers, leases and timers (on 2 cores the
# suite takes 110 s in one process, 60 s in three).
step "pytest (with pydantic)"
"$with/bin/pytest" -q -p no:cacheprovider -n 3
t1=$(date +%s)
# Without pydantic, the tests whose path goes through payload validation run again (the
# built-in checker instead of pydantic's TypeAdapter); transport and kill tests do not change.
without_pydantic_tests="tests/test_task_validate.py tests/test_task_runtime.py tests/test_parity.py
  tests/test_memory.py tests/test_cli.py tests/test_worker_shutdown.py"
step "pytest (without pydantic: the validation path)"
"$without/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("pydantic") is not None)' \
  || { echo "python: pydantic is installed in the no-pydantic venv" >&2; exit 1; }
# shellcheck disable=SC2086
"$without/bin/pytest" -q -p no:cacheprovider -n 3 $without_pydantic_tests
t2=$(date +%s)
step "mypy --strict and ruff"
"$with/bin/mypy" --strict
"$with/bin/ruff" check src tests scripts
"$with/bin/ruff" format --check src tests scripts
t3=$(date +%s)
echo "python: pytest $((t1 - t0)) s, pytest without pydantic $((t2 - t1)) s, lints $((t3 - t2)) s"
