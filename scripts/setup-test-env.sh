#!/usr/bin/env bash
# Prepares (once) what the integration tests need besides the Rust toolchain:
# - a Python virtual environment with the real Segment and RudderStack SDKs and independent Delta readers, from PyPI;
# - QEMU and a guest kernel for the power-cut test (scripts/setup-power-cut-kit.sh);
# - Chromium and the real JavaScript SDKs (browser and Node) from the npm registry (scripts/setup-js-kit.sh).
# Idempotent: a venv whose requirements match, and a complete kit, are reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Tests running in parallel each call this script: one prepares, the others wait for it.
mkdir -p "$root/target"
exec 8>"$root/target/test-env.lock"
flock 8
# A failure here fails the power-cut test alone (it runs the script again and reports why).
"$root/scripts/setup-power-cut-kit.sh" ||
  echo "setup-test-env: the power-cut kit is not ready; the power-cut test will fail" >&2
"$root/scripts/setup-js-kit.sh" ||
  echo "setup-test-env: the JavaScript kit is not ready; the JavaScript SDK tests will fail" >&2

venv="${KITH_TEST_VENV:-$root/target/test-venv}"
requirements="$root/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [[ -x "$venv/bin/python" && -f "$stamp" ]] && cmp -s "$requirements" "$stamp"; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
echo "test venv ready at $venv" >&2
