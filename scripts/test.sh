#!/usr/bin/env bash
# `make test`: prerequisites, LocalStack + the Kubernetes API server, fmt, clippy, build, the deploy/ manifest
# checks, every test (root-only ones included). Every step runs even when an earlier one failed (only a failed
# build stops the run: there would be nothing to test); the exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--inner" ]; then
  bash scripts/deps.sh || exit 1
  exec bash scripts/with-localstack.sh bash scripts/test.sh --inner
fi
failed=()
step() { # name command…
  local name=$1; shift
  echo "== $name"
  if ! "$@"; then failed+=("$name"); echo "== $name: FAILED"; fi
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries the integration tests run, and the tests, with one feature set)"
cargo build --workspace --all-targets || { echo "== build failed"; exit 1; }
step "plugin and vpcctl dependency trees (no AWS SDK, no daemon, no gRPC server; plugin ≤ 120 crates)" bash scripts/plugin-deps.sh
step "deploy/ manifests (kubernetes-validate, CRD schema, checkov, hadolint)" bash scripts/check-manifests.sh
step "cargo test" cargo test --workspace --all-targets --no-fail-fast -- --include-ignored
if [ ${#failed[@]} -gt 0 ]; then
  printf 'make test: FAILED steps:\n'; printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "make test: every step passed"
