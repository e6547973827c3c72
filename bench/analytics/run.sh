#!/usr/bin/env bash
# Analytics benchmark (issue 5): a demo world loaded through Kith's real ingestion path, then RFM,
# a monthly cohort retention matrix, a 5-step and a 20-step funnel and a paths query, each by
# `kith analyze` and by DuckDB (Python, from PyPI) over the very same Parquet files, in the same run.
#
#   bench/analytics/run.sh [CUSTOMERS]      # default 150000 (about 10 million events); needs
#                                           # target/release/kith and the test venv (DuckDB)
# Kith's times are requests to `kith serve` (POST /v1/analytics/*, which also builds the identity
# table each time); DuckDB's are whole commands (start-up and reading the identity CSV included).
# The peak RSS is the server's, over its start and every analysis; each analysis's own peak is
# listed too. REUSE=DATA_DIR skips loading and uses a data directory an earlier run loaded;
# QUERY_MEMORY_MB sets `[query] memory_mb`, the memory each query and analysis may take before
# its aggregations spill to disk (default 1024).
set -euo pipefail
cd "$(dirname "$0")/../.."
customers="${1:-150000}"
kith="${KITH:-target/release/kith}"
python="${PYTHON:-target/test-venv/bin/python}"
work="${TMPDIR:-/tmp}/kith-analytics-bench-$$"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[[ -x "$kith" ]] || { echo "build kith first: cargo build --release -p kith-cli" >&2; exit 2; }
[[ -x "$python" ]] || { echo "set up the test venv first: scripts/setup-test-env.sh" >&2; exit 2; }

data="${REUSE:-$work/data}"
if [[ -z "${REUSE:-}" ]]; then
  echo "loading a demo world of $customers customers ..." >&2
  start=$(date +%s.%N)
  # The same world `kith demo generate --into` loads, streamed: the generator writes its events
  # into a pipe that `kith import events` reads, so the JSON lines (about 700 bytes an event, 35
  # GB at 50 million events) never land on disk. Then the CRM contacts, mapped as the demo
  # loader maps them.
  world="$work/world"
  mkdir -p "$world"
  mkfifo "$world/events.jsonl"
  "$kith" demo generate --customers "$customers" --seed 11 --out "$world" > "$work/generate.log" 2>&1 &
  generator=$!
  "$kith" import events "$world/events.jsonl" --data-dir "$data" --source demo \
    --rejected "$work/events.rejected.csv" --json > "$work/events.import.json"
  wait "$generator"
  rm -f "$world/events.jsonl"
  "$kith" import contacts "$world/contacts.csv" --data-dir "$data" --source crm \
    --map external:customer_number=Cliente --time-format %d/%m/%Y --timezone America/Mexico_City \
    --rejected "$work/contacts.rejected.csv" --json > "$work/contacts.import.json"
  echo "loaded in $(echo "$(date +%s.%N) - $start" | bc) s: $(cat "$work/events.import.json")" >&2
fi
events=$("$kith" sql --data-dir "$data" --format csv "SELECT count(*) FROM events" | tail -1)
"$kith" sql --data-dir "$data" --format csv \
  "SELECT profile_id, id_type, id_value FROM profile_identities" > "$work/identities.csv"

definition() {  # the JSON definition of each benchmarked analysis
  "$python" - "$1" <<'PY'
import json, sys
five = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
twenty = ((["Product Viewed", "Product Added"] * 4 + ["Checkout Started", "Payment Info Entered", "Order Completed"]) * 2)[:20]
steps = lambda names: [{"event": n} for n in names]
print(json.dumps({
    "rfm": ("rfm", {}),
    "cohorts": ("cohorts", {"interval": "month"}),
    "funnel5": ("funnel", {"steps": steps(five), "window": "7d"}),
    "funnel20": ("funnel", {"steps": steps(twenty), "window": "7d"}),
    "paths": ("paths", {"event": "Product Added", "depth": 4}),
}[sys.argv[1]]))
PY
}

# Kith answers from a running server, as users reach it: the tables and profiles are open once,
# not per analysis (the offline `kith analyze` also opens them, seconds at this size).
key=$("$kith" key create --data-dir "$data" --scope read)
port=$((18500 + $$ % 1000))
# The models' scheduled runs (CLV, RFM traits, ...) would start a minute in and share the cores
# with the analyses being timed: off for the benchmark.
printf '[models.%s]\nrefresh_hours = 0\n' clv rfm risk preferences > "$work/kith.toml"
# Timed analyses are not cut off at the default 30 s request limit (50 million events on a slow
# 2-core machine take longer).
printf '[query]\ntimeout_secs = 1800\n' >> "$work/kith.toml"
if [[ -n "${QUERY_MEMORY_MB:-}" ]]; then
  printf 'memory_mb = %s\n' "$QUERY_MEMORY_MB" >> "$work/kith.toml"
fi
"$kith" serve --data-dir "$data" --listen "127.0.0.1:$port" --config "$work/kith.toml" > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
  sleep 0.5
done
# Ready means ingesting; the identity table and index analyses use are built just after start
# (about 0.25 s at this size, logged as "identity table for analyses built"). Time the analyses
# of a running server, not that start-up step.
for _ in $(seq 1 100); do
  grep -q "identity table for analyses built" "$work/serve.log" && break
  sleep 0.2
done

# Each analysis runs twice on each side: the first Kith request after start-up pays one-time
# costs (the first scan of the files), the repeat is what a running server answers; DuckDB runs
# as a fresh process both times (the operating system's file cache is warm for both tools).
rss_of() { awk "/$1/ {printf \"%.0f\", \$2 / 1024}" "/proc/$server/status"; }
echo "kith server RSS at rest before the analyses: $(rss_of VmRSS) MiB (peak so far $(rss_of VmHWM) MiB)"
startup_peak=$(rss_of VmHWM)
echo "| analysis | kith first s | kith repeat s | duckdb s | duckdb repeat s | kith / duckdb (repeat) | kith peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
kith_once() {
  local start code
  start=$(date +%s.%N)
  code=$(curl -s -o "$work/answer" -w '%{http_code}' -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' "http://127.0.0.1:$port/v1/analytics/$1" -d "$2")
  if [[ "$code" != 200 ]]; then
    echo "$1: HTTP $code $(head -c 300 "$work/answer")" >&2
    echo failed
    return
  fi
  echo "$(date +%s.%N) - $start" | bc
}
duck_once() {
  local start
  start=$(date +%s.%N)
  "$python" bench/analytics/duckdb_analyses.py "$data/tables/events" "$work/identities.csv" "$1" > /dev/null
  echo "$(date +%s.%N) - $start" | bc
}
peaks=()
for analysis in rfm cohorts funnel5 funnel20 paths; do
  read -r kind body <<< "$(definition "$analysis" | "$python" -c 'import json,sys; k,d=json.load(sys.stdin); print(k, json.dumps(d))')"
  # The peak of each analysis alone: writing 5 to clear_refs resets the process's VmHWM.
  echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true
  kith_first=$(kith_once "$kind" "$body")
  kith_again=$(kith_once "$kind" "$body")
  peak=$(rss_of VmHWM)
  peaks+=("$peak")
  duck_first=$(duck_once "$analysis")
  duck_again=$(duck_once "$analysis")
  if [[ "$kith_first" == failed || "$kith_again" == failed ]]; then
    printf "| %s | failed | failed | %.2f | %.2f | - | %s |\n" "$analysis" "$duck_first" "$duck_again" "$peak"
  else
    printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %s |\n" "$analysis" "$kith_first" "$kith_again" \
      "$duck_first" "$duck_again" "$(echo "$kith_again / $duck_again" | bc -l)" "$peak"
  fi
done
rss=$(printf '%s\n' "$startup_peak" "${peaks[@]}" | sort -n | tail -1)
printf "%s events, %s customers, %s cores; kith server peak RSS %s MiB\n" "$events" "$customers" "$(nproc)" "$rss"
