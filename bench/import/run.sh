#!/usr/bin/env bash
# Import benchmark (issue 4): `kith import transactions` of a 10-million-row transaction CSV into a
# fresh data directory (journal with fsync, identity resolution for every customer, Delta tables),
# against DuckDB's read_csv of the same file into a table, in the same run on the same machine.
#
#   bench/import/run.sh [ROWS]          # default 10000000; needs target/release/kith and the test
#                                       # venv (scripts/setup-test-env.sh) for DuckDB
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-10000000}"
kith="${KITH:-target/release/kith}"
python="${PYTHON:-target/test-venv/bin/python}"
work="${TMPDIR:-/tmp}/kith-import-bench-$$"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[[ -x "$kith" ]] || { echo "build kith first: cargo build --release -p kith-cli" >&2; exit 2; }
[[ -x "$python" ]] || { echo "set up the test venv first: scripts/setup-test-env.sh" >&2; exit 2; }

csv="$work/transactions.csv"
echo "generating $rows rows (1 customer per 10 rows) ..." >&2
"$python" - "$rows" "$csv" <<'PY'
import random, sys, datetime
rows, path = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
start = datetime.date(2024, 1, 1)
customers = max(1, rows // 10)
with open(path, "w") as out:
    out.write("customer_id,date,quantity,amount\n")
    for i in range(rows):
        day = start + datetime.timedelta(days=rng.randrange(730))
        out.write(f"c{rng.randrange(customers):07d},{day:%Y-%m-%d},{rng.randrange(1, 5)},{rng.randrange(100, 500000) / 100:.2f}\n")
PY
size=$(du -h "$csv" | cut -f1)

start=$(date +%s.%N)
"$kith" import transactions "$csv" --data-dir "$work/data" --currency MXN --json --rejected "$work/rejected.csv" > "$work/kith.json"
kith_s=$(echo "$(date +%s.%N) - $start" | bc)

start=$(date +%s.%N)
"$python" -c "
import duckdb, sys
con = duckdb.connect(sys.argv[2])
con.execute(\"CREATE TABLE t AS SELECT * FROM read_csv(?)\", [sys.argv[1]])
n = con.execute('SELECT count(*) FROM t').fetchone()[0]
assert n == int(sys.argv[3]), n
" "$csv" "$work/duck.db" "$rows"
duck_s=$(echo "$(date +%s.%N) - $start" | bc)

stored=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['stored'])" "$work/kith.json")
[[ "$stored" == "$rows" ]] || { echo "kith stored $stored of $rows rows" >&2; exit 1; }
echo "| tool | rows | seconds | rows/s |"
echo "|---|---:|---:|---:|"
printf "| kith import transactions (durable, profiles, Delta) | %d | %.1f | %.0f |\n" "$rows" "$kith_s" "$(echo "$rows / $kith_s" | bc -l)"
printf "| duckdb read_csv into a table | %d | %.1f | %.0f |\n" "$rows" "$duck_s" "$(echo "$rows / $duck_s" | bc -l)"
printf "file %s, %s cores; kith / duckdb throughput = %.3f\n" "$size" "$(nproc)" "$(echo "$duck_s / $kith_s" | bc -l)"
