#!/usr/bin/env bash
# `make test`: prerequisites, LocalStack, fmt, clippy, build, every test (root-only ones included), clean-up.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
started_localstack=0
if ! bash scripts/localstack.sh status >/dev/null 2>&1; then
  bash scripts/localstack.sh start
  started_localstack=1
fi
cleanup() { if [ "$started_localstack" = 1 ]; then bash scripts/localstack.sh stop; fi; }
trap cleanup EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries the integration tests run)"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace --all-targets -- --include-ignored
