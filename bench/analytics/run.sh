#!/usr/bin/env bash
# Analytics benchmark (issue 5): a demo world loaded through Kith's real ingestion path, then RFM,
# a monthly cohort retention matrix, a 5-step and a 20-step funnel and a paths query, each by
# `kith analyze` and by DuckDB (Python, from PyPI) over the very same Parquet files, in the same run.
#
#   bench/analytics/run.sh [CUSTOMERS]      # default 150000 (about 10 million events); needs
#                                           # target/release/kith and the test venv (DuckDB)
# Times are whole commands, so both sides pay their start-up (Kith also opens the tables and the
# profiles, and builds the identity table; DuckDB reads the identity CSV). Peak RSS is Kith's.
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

data="$work/data"
echo "loading a demo world of $customers customers ..." >&2
start=$(date +%s.%N)
"$kith" demo generate --customers "$customers" --seed 11 --into "$data" >&2
echo "loaded in $(echo "$(date +%s.%N) - $start" | bc) s" >&2
rm -f "$data"/demo/events.jsonl   # the generator's copy; the tables hold the events now
events=$("$kith" sql --data-dir "$data" --format csv "SELECT count(*) FROM events" | tail -1)
"$kith" sql --data-dir "$data" --format csv \
  "SELECT profile_id, id_type, id_value FROM profile_identities" > "$work/identities.csv"

steps5='Product Viewed,Product Added,Checkout Started,Payment Info Entered,Order Completed'
steps20=$("$python" -c "
s = (['Product Viewed', 'Product Added'] * 4 + ['Checkout Started', 'Payment Info Entered', 'Order Completed']) * 2
print(','.join(s[:20]))")

run_kith() {  # prints "seconds peak_rss_mib", or "failed -" with the reason on stderr
  if /usr/bin/time -f "%e %M" -o "$work/time" "$kith" analyze "$@" --data-dir "$data" --format json \
       > /dev/null 2> "$work/error"; then
    tail -1 "$work/time" | awk '{printf "%s %.0f", $1, $2 / 1024}'
  else
    echo "kith analyze $*: $(head -c 300 "$work/error")" >&2
    echo "failed -"
  fi
}

echo "| analysis | kith s | duckdb s | kith / duckdb | kith peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
for analysis in rfm cohorts funnel5 funnel20 paths; do
  case "$analysis" in
    rfm) args=(rfm) ;;
    cohorts) args=(cohorts --interval month) ;;
    funnel5) args=(funnel --steps "$steps5" --window 7d) ;;
    funnel20) args=(funnel --steps "$steps20" --window 7d) ;;
    paths) args=(paths --event "Product Added" --definition '{"depth": 4}') ;;
  esac
  read -r kith_s rss <<< "$(run_kith "${args[@]}")"
  start=$(date +%s.%N)
  "$python" bench/analytics/duckdb_analyses.py "$data/tables/events" "$work/identities.csv" "$analysis" > /dev/null
  duck_s=$(echo "$(date +%s.%N) - $start" | bc)
  if [[ "$kith_s" == failed ]]; then
    printf "| %s | failed | %.2f | - | - |\n" "$analysis" "$duck_s"
  else
    printf "| %s | %.2f | %.2f | %.2f | %s |\n" "$analysis" "$kith_s" "$duck_s" "$(echo "$kith_s / $duck_s" | bc -l)" "$rss"
  fi
done
printf "%s events, %s customers, %s cores\n" "$events" "$customers" "$(nproc)"
