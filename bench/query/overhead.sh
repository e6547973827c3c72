#!/usr/bin/env bash
# What the query guards cost: the same queries through two `kith` binaries, run in turn, with the
# median CPU seconds (user + system) of each and their ratio. The queries touch what the guards
# watch: `||` (bounded by its batch's bytes), a hash join (rows entering it are measured), and a
# scan with neither as a control. No data is read: generate_series makes the rows.
#
#   bench/query/overhead.sh /tmp/kith-before target/release/kith [runs]
set -euo pipefail
before=${1:?usage: overhead.sh BEFORE_BIN AFTER_BIN [runs]}
after=${2:?usage: overhead.sh BEFORE_BIN AFTER_BIN [runs]}
runs=${3:-9}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# `kith sql` needs a data directory Kith made; a key makes one.
"$after" key create --data-dir "$dir/data" --scope read >"$dir/key" 2>/dev/null

queries=(
  "SELECT count(*), sum(a.k) FROM (SELECT value AS k FROM generate_series(1, 50000000)) a WHERE a.k % 7 <> 3"
  "SELECT sum(length('user-' || CAST(value AS VARCHAR))) FROM generate_series(1, 20000000)"
  "SELECT count(*), sum(length(a.t)) FROM (SELECT value AS k, 'user-' || CAST(value AS VARCHAR) AS t FROM generate_series(1, 10000000)) a JOIN (SELECT value AS k FROM generate_series(1, 10000000)) b ON a.k = b.k"
)
names=("scan (control)" "|| on 20M rows" "hash join of 10M rows")

cpu_seconds() {
  /usr/bin/time -f "%U %S" -o "$dir/time" "$1" sql --data-dir "$dir/data" --format csv "$2" >/dev/null
  awk '{ printf "%.3f\n", $1 + $2 }' "$dir/time"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf "%-24s %12s %12s %8s\n" query "before cpu s" "after cpu s" ratio
for i in "${!queries[@]}"; do
  : >"$dir/before"
  : >"$dir/after"
  cpu_seconds "$after" "${queries[$i]}" >/dev/null # warm-up
  for _ in $(seq "$runs"); do
    cpu_seconds "$before" "${queries[$i]}" >>"$dir/before"
    cpu_seconds "$after" "${queries[$i]}" >>"$dir/after"
  done
  b=$(median <"$dir/before")
  a=$(median <"$dir/after")
  printf "%-24s %12s %12s %8.3f\n" "${names[$i]}" "$b" "$a" "$(awk -v a="$a" -v b="$b" 'BEGIN { print a / b }')"
done
