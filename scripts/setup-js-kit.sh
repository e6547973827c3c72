#!/usr/bin/env bash
# Prepares (once) what the JavaScript SDK tests run: Debian's Chromium, and in target/js-kit/ the
# real SDKs from the npm registry: the browser ones (Segment's analytics.js as
# @segment/analytics-next, RudderStack's @rudderstack/analytics-js) bundled into one test page with
# esbuild, with playwright-core to drive Chromium; and the Node ones (@segment/analytics-node,
# @rudderstack/rudder-sdk-node). tests/js holds the page, the scripts and the pinned versions; the
# tests are crates/kith-cli/tests/js_sdks.rs. Idempotent: a kit built from the same files is reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kit="${KITH_JS_KIT:-$root/target/js-kit}"
src="$root/tests/js"
files=(package.json package-lock.json page.js index.html drive.mjs send_node.mjs)

# Tests running in parallel each call this script: one prepares the kit, the others wait for it.
mkdir -p "$(dirname "$kit")"
exec 9>"$kit.lock"
flock 9

if ! command -v chromium >/dev/null; then
  if [[ "$(id -u)" == 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    # Everything else still runs; the browser test alone fails, saying what is missing.
    echo "JavaScript SDK tests: install Debian's chromium package (as root)" >&2
  fi
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "JavaScript SDK tests: Node.js and npm are needed to fetch the SDKs from the npm registry" >&2
  exit 1
fi

stamp="$(cd "$src" && sha256sum "${files[@]}")"
if [[ -f "$kit/.stamp" ]] && [[ "$(cat "$kit/.stamp")" == "$stamp" ]]; then
  exit 0
fi
rm -rf "$kit"
mkdir -p "$kit/site"
for file in "${files[@]}"; do
  cp "$src/$file" "$kit/"
done
mv "$kit/index.html" "$kit/site/"
(cd "$kit" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
(cd "$kit" && node_modules/.bin/esbuild page.js --bundle --format=iife --outfile=site/page.js --log-level=warning)
echo "$stamp" >"$kit/.stamp"
echo "JavaScript kit ready at $kit" >&2
