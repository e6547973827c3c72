#!/usr/bin/env bash
# What a segment costs an analysis: a 5-step funnel over a data directory the analytics benchmark
# loaded (REUSE=DIR bench/analytics/run.sh keeps one; or bench/analytics/run.sh's loading steps),
# asked of `kith serve` plain, for a segment on a model trait (RFM segment), by RFM segment, for a
# segment on a profile trait (the acquisition channel) and on a computed trait (orders), three
# times each, with the server's peak RSS.
#
#   bench/analytics/segments.sh DATA_DIR     # needs target/release/kith and curl
#
# RFM traits are written onto the profiles first (`kith analyze rfm --write-traits`), as the
# server's daily model run would.
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${1:?usage: bench/analytics/segments.sh DATA_DIR}"
kith="${KITH:-target/release/kith}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$kith" analyze rfm --write-traits --data-dir "$data" --format json > /dev/null
key=$("$kith" key create --data-dir "$data" --scope read)
port=$((18500 + $$ % 1000))
printf '[models.%s]\nrefresh_hours = 0\n' clv rfm risk preferences > "$work/kith.toml"
printf '[query]\ntimeout_secs = 1800\n' >> "$work/kith.toml"
"$kith" serve --data-dir "$data" --listen "127.0.0.1:$port" --config "$work/kith.toml" > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "127.0.0.1:$port/readyz" > /dev/null; do sleep 1; done
five='[{"event":"Product Viewed"},{"event":"Product Added"},{"event":"Checkout Started"},{"event":"Payment Info Entered"},{"event":"Order Completed"}]'
run() {  # name, extra definition fields
  for i in 1 2 3; do
    start=$(date +%s.%N)
    curl -sf -H "Authorization: Bearer $key" "127.0.0.1:$port/v1/analytics/funnel" \
      -d "{\"steps\": $five, \"window\": \"7d\" $2}" -o "$work/out.json"
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    groups=$(grep -o '"steps"' "$work/out.json" | wc -l)
    printf '%-22s run %d: %6.2f s (%d groups)\n' "$1" "$i" "$seconds" "$groups"
  done
}
run plain ''
run rfm_segment_in ', "segment": [{"field": "profile.model_traits.rfm_segment", "op": "in", "value": ["Champions", "Loyal"]}]'
run by_rfm_segment ', "breakdown": "profile.model_traits.rfm_segment"'
run trait_segment ', "segment": [{"field": "profile.traits.channel", "op": "eq", "value": "paid"}]'
run computed_segment ', "segment": [{"field": "profile.computed_traits.order_count", "op": "gte", "value": 2}]'
echo "server peak RSS: $(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' "/proc/$server/status")"
