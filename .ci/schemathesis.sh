#!/usr/bin/env bash
# Fuzzes ferry's HTTP API with schemathesis against a real server, once on SQLite and once on
# PostgreSQL, from the server's own /v1/openapi.json, with every check (`--checks all`): any
# 5xx, undocumented status, response that does not match its schema, valid input rejected or
# invalid input accepted fails the run.
#
#   .ci/schemathesis.sh [path/to/ferry]          (default target/debug/ferry)
#   .ci/schemathesis.sh --install-only           (only prepare the venv; CI does it early)
#
# Before fuzzing, the served document is checked against the OpenAPI 3.1 specification
# (openapi-spec-validator): schemathesis reads documents the specification rejects (responses
# without `description`, duplicate `operationId`s, path parameters missing from the path)
# without a word.
#
# Settings (seed, examples per operation, timeouts, operations not fuzzed and why) are in
# .ci/schemathesis.toml; .ci/schemathesis_hooks.py keeps long-polls short, the harness's token
# alive and generated dependencies pointed at a job that exists. Auth is on: an admin token is
# minted into the fresh database before the server starts and sent with every request, so the
# token routes are fuzzed too. The servers run with `max_batch = 100` (see `fuzz`); the
# document states the limits a server is configured with.
#
# Environment: FERRY_ST_BACKENDS (default "sqlite postgres"), FERRY_ST_PG_URL (default
# postgres://postgres@127.0.0.1:5432, trust auth), FERRY_ST_ARGS (extra schemathesis run
# arguments, e.g. "-n 5" or "--include-path /v1/jobs").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Pinned tools; the venv is rebuilt when this list changes.
REQUIREMENTS=(schemathesis==4.32.5 openapi-spec-validator==0.9.0)
INSTALL_ONLY=false
if [[ ${1:-} = --install-only ]]; then INSTALL_ONLY=true; shift; fi
BIN=${1:-target/debug/ferry}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
BACKENDS=${FERRY_ST_BACKENDS:-sqlite postgres}
PG_URL=${FERRY_ST_PG_URL:-postgres://postgres@127.0.0.1:5432}
VENV=$ROOT/target/ci-venv
REPORTS=$ROOT/target/schemathesis-report

if [[ $INSTALL_ONLY = false && ! -x $BIN ]]; then
  echo "schemathesis: no ferry binary at $BIN (build it first)" >&2
  exit 2
fi

# A ferry setting from the environment must not redirect the servers started here.
unset FERRY_CONFIG FERRY_LISTEN FERRY_DATA_DIR FERRY_DATABASE_URL FERRY_AUTH FERRY_URL FERRY_TOKEN \
  FERRY_INSECURE FERRY_LOG

# ---- schemathesis and the OpenAPI validator, pinned, in a venv reused between runs ----
if [[ ! -x $VENV/bin/schemathesis ]] || [[ "$(cat "$VENV/.ferry-requirements" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]]; then
  echo "schemathesis: installing ${REQUIREMENTS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$VENV/.ferry-requirements"
fi
"$VENV/bin/schemathesis" --version
$INSTALL_ONLY && exit 0

# ---- cleanup: servers, temp dirs, PostgreSQL databases ----
SERVER_PID=""
TMP_DIRS=()
PG_DBS=()
stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  local db d
  for db in "${PG_DBS[@]}"; do
    psql "$PG_URL/postgres" -q -v ON_ERROR_STOP=1 -c "drop database if exists \"$db\" with (force)" \
      >/dev/null 2>&1 || echo "schemathesis: could not drop database $db" >&2
  done
  for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server LOG ARGS...: starts `ferry serve` on a free port; sets SERVER_PID and URL.
start_server() {
  local log=$1 dir=$2
  shift 2
  (cd "$dir" && exec "$BIN" serve --listen 127.0.0.1:0 --log info "$@") >"$log" 2>&1 &
  SERVER_PID=$!
  URL=""
  for _ in $(seq 300); do
    URL=$(grep -o 'ferry listening on http://[0-9.:]*' "$log" | head -n1 | sed 's/^ferry listening on //') || true
    [[ -n $URL ]] && return 0
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "schemathesis: the server did not start; its log:" >&2
  cat "$log" >&2
  return 1
}

# fuzz NAME DB_ARGS...: mints an admin token into the database, serves it, runs schemathesis.
fuzz() {
  local name=$1
  shift
  local dir started token_json token token_id job_id rc=0
  dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-st-$name.XXXXXX")
  TMP_DIRS+=("$dir")
  started=$(date +%s)
  echo
  echo "=== schemathesis on $name ==="
  token_json=$("$BIN" tokens create --scopes admin --name schemathesis-ci --json "$@")
  token=$(printf '%s' "$token_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  token_id=$(printf '%s' "$token_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  # Batches of at most 100 instead of 10,000: the coverage phase sends a batch at each bound of
  # every array, and 10,000-job batches make later event reads (and the run) minutes longer.
  # The served document states the configured limits, so the contract fuzzed is the same.
  printf '[limits]\nmax_batch = 100\n' >"$dir/ferry.toml"
  start_server "$dir/server.log" "$dir" "$@"
  echo "server: $URL ($name)"
  # A job for generated `depends_on` lists to name: a dependency must exist, which the
  # document cannot say (see the hooks).
  job_id=$(curl -sSf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"queue":"schemathesis-ci-deps"}' "$URL/v1/jobs" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  # A funded ledger account for generated paid jobs to pay from (see the hooks).
  for body in '{"accounts":[{"id":"schemathesis-bank"},{"id":"schemathesis-payer"}]}' \
    '{"id":"schemathesis-fund","debit_account":"schemathesis-bank","credit_account":"schemathesis-payer","amount":9007199254740991}'; do
    case $body in *accounts*) path=accounts ;; *) path=transfers ;; esac
    curl -sSf -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d "$body" "$URL/v1/ledger/$path"
  done
  # The document as served must be valid OpenAPI 3.1.
  if ! curl -sSf -H "Authorization: Bearer $token" "$URL/v1/openapi.json" -o "$dir/openapi.json"; then
    echo "schemathesis: GET /v1/openapi.json failed ($name)" >&2
    rc=1
  elif ! "$VENV/bin/openapi-spec-validator" --validation-errors all "$dir/openapi.json" >"$dir/openapi-check.txt" 2>&1; then
    echo "schemathesis: /v1/openapi.json is not a valid OpenAPI 3.1 document ($name):" >&2
    grep -oE 'Validation Error: .*|^On instance.*' "$dir/openapi-check.txt" \
      | sed -e 's/^Validation Error: /  /' -e 's/^On instance/      at /' >&2 || cat "$dir/openapi-check.txt" >&2
    rc=1
  else
    echo "openapi.json: valid OpenAPI 3.1"
  fi
  FERRY_CI_TOKEN_ID=$token_id FERRY_CI_JOB_ID=$job_id "$VENV/bin/schemathesis" --config-file "$ROOT/.ci/schemathesis.toml" \
    run "$URL/v1/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $token" \
    --report junit,ndjson \
    --report-junit-path "$REPORTS/$name.junit.xml" \
    --report-ndjson-path "$REPORTS/$name.ndjson" \
    --no-color \
    ${FERRY_ST_ARGS:-} || rc=$?
  if grep -qE '"level":"ERROR"|panicked at' "$dir/server.log"; then
    echo "schemathesis: the server logged errors or panics ($name):"
    grep -E '"level":"ERROR"|panicked at' "$dir/server.log" | head -n 20
  fi
  stop_server
  TIMES+=("$name: $(($(date +%s) - started)) s (exit $rc)")
  [[ $rc -eq 0 ]] || FAILED+=("$name")
}

mkdir -p "$REPORTS"
# Hypothesis keeps a cache directory; keep it out of the work tree.
export HYPOTHESIS_STORAGE_DIRECTORY=$ROOT/target/ci-hypothesis
TIMES=()
FAILED=()
total_started=$(date +%s)
for backend in $BACKENDS; do
  case $backend in
    sqlite)
      sqlite_dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-st-data.XXXXXX")
      TMP_DIRS+=("$sqlite_dir")
      fuzz sqlite --data-dir "$sqlite_dir"
      ;;
    postgres)
      db="ferry_st_$$_$(date +%s)"
      psql "$PG_URL/postgres" -q -v ON_ERROR_STOP=1 -c "create database \"$db\"" >/dev/null
      PG_DBS+=("$db")
      fuzz postgres --database "$PG_URL/$db"
      ;;
    *)
      echo "schemathesis: unknown backend $backend (sqlite, postgres)" >&2
      exit 2
      ;;
  esac
done

echo
echo "=== schemathesis: time per backend ==="
printf '  %s\n' "${TIMES[@]}"
echo "  total: $(($(date +%s) - total_started)) s; reports in $REPORTS"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "schemathesis: failures on ${FAILED[*]}" >&2
  exit 1
fi
echo "schemathesis: no failures"
