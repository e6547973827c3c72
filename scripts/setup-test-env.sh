#!/usr/bin/env bash
# Creates (once) the Python virtual environment the integration tests use, from PyPI.
# Idempotent: a venv whose requirements match is reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
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
