#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (a Python venv with the real Segment SDK
# and independent Delta readers, from PyPI), then every Rust test, integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo test --workspace --all-targets "$@"
