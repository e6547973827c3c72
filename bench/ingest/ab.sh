#!/usr/bin/env bash
# Interleaved A/B of two `kith` binaries on the ingest benchmark: PAIRS pairs of
# `kith-ingest-bench --clients 8 --seconds 10 --rounds 2`, alternating A and B so that the
# host's drift falls on both, then one line per run with the ratio, the medians, the idle
# time and the server CPU per event by thread (the clean signal on a noisy host).
#
#   bench/ingest/ab.sh /tmp/kith-before target/release/kith 3
#
# Build the load generator first: cargo build --release -p kith-cli -p kith-ingest-bench
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 KITH_BINARY_A KITH_BINARY_B [PAIRS (default 3)] [CLIENTS (default 8)]" >&2
  exit 2
fi
a=$1 b=$2 pairs=${3:-3} clients=${4:-8}
root=$(cd "$(dirname "$0")/../.." && pwd)
bench=$root/target/release/kith-ingest-bench
for binary in "$a" "$b" "$bench"; do
  [[ -x $binary ]] || { echo "$binary is not an executable; build it first" >&2; exit 2; }
done
out=$(mktemp -d)
for i in $(seq 1 "$pairs"); do
  for side in a b; do
    binary=$a; [[ $side == b ]] && binary=$b
    (cd "$root" && "$bench" --kith "$binary" --clients "$clients" --seconds 10 --rounds 2) \
      > "$out/$side-$i.txt" 2>&1
  done
done
for side in a b; do
  binary=$a; [[ $side == b ]] && binary=$b
  echo "== $side: $binary"
  for i in $(seq 1 "$pairs"); do
    f=$out/$side-$i.txt
    grep -o 'durable / no-op = .*' "$f" | cut -d';' -f1
    grep 'medians over' "$f"
    echo "idle (durable rounds): $(grep '| durable' "$f" | awk -F'|' '{print $9}' | tr -s ' \n' ' ')"
    grep -E '^\| `' "$f" | awk -F'|' '{split($2, name, "`"); printf "%s %s; ", name[2], $3}'
    echo
  done
done
echo "full reports: $out"
