#!/usr/bin/env bash
# Checks the monitoring files in deploy/:
#   1. promtool check rules prometheus/alerts.yml
#   2. promtool test rules  prometheus/alerts_test.yml   (run from deploy/prometheus)
#   3. grafana/ferry.json is valid JSON with the expected dashboard structure, and every
#      panel query is valid PromQL (checked by promtool, with Grafana's variables filled in)
#   4. every ferry_ metric name used in the dashboard, the rules and the rule tests is one
#      that ferry exports (the list below; keep it in step with crates/ferry-server/src/metrics.rs)
# Exits non-zero on any failure. Needs promtool (Debian package `prometheus`) and python3.
# Under CI (CI=true, as root) a missing promtool is installed with apt-get.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v promtool >/dev/null 2>&1; then
  if [[ "${CI:-}" == "true" && "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "check: promtool missing; installing the Debian package prometheus"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "check: promtool not found (apt-get install -y prometheus)" >&2
    exit 1
  fi
fi
command -v python3 >/dev/null 2>&1 || { echo "check: python3 not found" >&2; exit 1; }

# The metric names ferry exports, as they appear in the exposition.
# Counters carry _total; histograms are listed by base name (the base name, as in prose,
# and _bucket/_sum/_count are allowed).
counters=(
  ferry_jobs_enqueued ferry_jobs_started ferry_jobs_completed ferry_jobs_failed
  ferry_jobs_retried ferry_jobs_dead ferry_jobs_cancelled ferry_jobs_replayed
  ferry_store_writes ferry_store_write_faults ferry_store_busy_waits ferry_store_busy_wait_seconds
  ferry_store_writer_busy_seconds ferry_conflicts ferry_rejections ferry_circuit_opened
  ferry_http_requests ferry_convoy_limit_changes ferry_memory_searches ferry_mcp_tool_calls
)
gauges=(
  ferry_queue_jobs ferry_items ferry_inbox_messages ferry_convoys ferry_convoy_held_jobs ferry_ledger_pending_transfers ferry_ledger_writes_refused ferry_dlq_jobs ferry_queue_oldest_ready_age_seconds ferry_db_size_bytes
  ferry_store_writers ferry_db_connections_in_use ferry_db_connections_max
  ferry_circuit_state ferry_pending_writes ferry_http_requests_in_flight
  ferry_disk_free_bytes ferry_disk_total_bytes ferry_memory_reconcile_mismatches ferry_mcp_sessions
)
histograms=(
  ferry_store_write_duration_seconds ferry_store_batch_size ferry_job_wait_seconds
  ferry_job_run_seconds ferry_message_wait_seconds ferry_http_request_duration_seconds
  ferry_memory_search_duration_seconds ferry_mcp_tool_call_duration_seconds
)
allowed=()
for m in "${counters[@]}"; do allowed+=("${m}_total"); done
for m in "${gauges[@]}"; do allowed+=("$m"); done
for m in "${histograms[@]}"; do allowed+=("$m" "${m}_bucket" "${m}_sum" "${m}_count"); done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check rules prometheus/alerts.yml"
promtool check rules prometheus/alerts.yml

echo "== promtool test rules alerts_test.yml (in deploy/prometheus)"
(cd prometheus && promtool test rules alerts_test.yml)

echo "== dashboard grafana/ferry.json"
python3 -m json.tool grafana/ferry.json >/dev/null
# Structure, and the panel queries written out as recording rules for promtool to parse.
python3 - grafana/ferry.json "$tmp/dashboard_rules.yml" <<'PY'
import json, re, sys

path, rules_out = sys.argv[1], sys.argv[2]
with open(path) as f:
    d = json.load(f)
errors = []
if not isinstance(d.get("title"), str) or not d.get("uid"):
    errors.append("dashboard needs a title and a uid")
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    errors.append("schemaVersion should be >= 36")
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
for name in ("datasource", "instance", "queue"):
    if name not in variables:
        errors.append(f"template variable ${name} missing")
if variables.get("datasource", {}).get("type") != "datasource":
    errors.append("$datasource must be a datasource variable")
q = variables.get("queue", {}).get("query")
q = q.get("query") if isinstance(q, dict) else q
if q != "label_values(ferry_queue_jobs, queue)":
    errors.append(f"$queue query is {q!r}")

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

ids, exprs = set(), []
for p in walk(d.get("panels", [])):
    pid = p.get("id")
    if pid in ids:
        errors.append(f"duplicate panel id {pid}")
    ids.add(pid)
    gp = p.get("gridPos", {})
    if not all(k in gp for k in ("h", "w", "x", "y")) or gp["x"] + gp["w"] > 24:
        errors.append(f"panel {pid} has a bad gridPos {gp}")
    if p.get("type") == "row":
        continue
    title = p.get("title") or f"panel {pid}"
    if (p.get("datasource") or {}).get("uid") != "${datasource}":
        errors.append(f"{title}: datasource is not ${{datasource}}")
    targets = p.get("targets") or []
    if not targets:
        errors.append(f"{title}: no targets")
    for t in targets:
        e = t.get("expr", "").strip()
        if not e:
            errors.append(f"{title}: target {t.get('refId')} has no expr")
            continue
        exprs.append((title, e))
    for m in re.findall(r"\$\{?(\w+)", json.dumps(targets)):
        if m not in variables and not m.startswith("__"):
            errors.append(f"{title}: unknown variable ${m}")

def fill(e):
    e = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", e)
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)

with open(rules_out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(fill(e))}\n")
if errors:
    print("\n".join("dashboard: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"dashboard: {len(ids)} panels, {len(exprs)} queries, structure ok")
PY
promtool check rules "$tmp/dashboard_rules.yml" >"$tmp/promtool.out" 2>&1 || {
  cat "$tmp/promtool.out" >&2
  echo "dashboard: a panel query is not valid PromQL" >&2
  exit 1
}
echo "dashboard: every query parses as PromQL"

echo "== metric names"
printf '%s\n' "${allowed[@]}" >"$tmp/allowed"
status=0
for f in grafana/ferry.json prometheus/alerts.yml prometheus/alerts_test.yml; do
  grep -oE '\bferry_[a-zA-Z0-9_]+' "$f" | sort -u >"$tmp/used" || true
  if [[ ! -s "$tmp/used" ]]; then
    echo "metrics: $f uses no ferry_ metric" >&2
    status=1
    continue
  fi
  unknown="$(grep -vxF -f "$tmp/allowed" "$tmp/used" || true)"
  if [[ -n "$unknown" ]]; then
    echo "metrics: $f uses names ferry does not export:" >&2
    sed 's/^/  /' <<<"$unknown" >&2
    status=1
  else
    echo "metrics: $f: $(wc -l <"$tmp/used") names, all known"
  fi
done
[[ $status == 0 ]] || exit 1

echo "deploy/check.sh: all checks passed"
