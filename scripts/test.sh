#!/usr/bin/env bash
# `make test`: prerequisites, LocalStack, fmt, clippy, build, every test (root-only ones included), clean-up.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--inner" ]; then
  bash scripts/deps.sh
  exec bash scripts/with-localstack.sh bash scripts/test.sh --inner
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries the integration tests run, and the tests, with one feature set)"
cargo build --workspace --all-targets
echo "== cargo test"
cargo test --workspace --all-targets -- --include-ignored
