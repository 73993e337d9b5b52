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
timings=()
# CI shows a failure's panic message and little else: no backtraces (set VPC_CNI_TEST_BACKTRACE=1 for them).
export RUST_BACKTRACE=${VPC_CNI_TEST_BACKTRACE:-0}
step() { # name command…
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name"
  if ! "$@"; then failed+=("$name"); echo "== $name: FAILED"; fi
  timings+=("$(printf '%5d s  %s' $((SECONDS - t0)) "$name")")
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries the integration tests run, and the tests, with one feature set)"
t0=$SECONDS
cargo build --workspace --all-targets || { echo "== build failed"; exit 1; }
timings+=("$(printf '%5d s  %s' $((SECONDS - t0)) "cargo build")")
step "plugin and vpcctl dependency trees (no AWS SDK, no daemon, no gRPC server; plugin ≤ 120 crates)" bash scripts/plugin-deps.sh
step "deploy/ manifests (kubernetes-validate, CRD schema, checkov, hadolint)" bash scripts/check-manifests.sh
step "deploy/ manifest checks can fail (one broken copy of deploy/ per check)" bash scripts/check-manifests-selftest.sh
step "binaries the image puts on the node are static (Dockerfile, readelf, CNI VERSION chrooted without libc)" bash scripts/check-static-plugins.sh
# Every suite, then the slowest ones (what CI time goes to).
all_tests() {
  local out rc
  out=$(mktemp)
  cargo test --workspace --all-targets --no-fail-fast -- --include-ignored 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  echo "== slowest test binaries:"
  awk '/ Running /{name=$2} /finished in/{print $NF, name}' "$out" | sort -gr | head -8 | sed 's/^/  /'
  rm -f "$out"
  return "$rc"
}
step "cargo test" all_tests
printf '== time by step (%d s in all):\n' "$SECONDS"; printf '  %s\n' "${timings[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'make test: FAILED steps:\n'; printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "make test: every step passed"
