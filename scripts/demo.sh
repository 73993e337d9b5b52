#!/usr/bin/env bash
# `make demo`: LocalStack + IMDS emulator + ipamd on one simulated node: the warm pool and a few allocations.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --workspace --bins
started_localstack=0
if ! bash scripts/localstack.sh status >/dev/null 2>&1; then
  bash scripts/localstack.sh start
  started_localstack=1
fi
cleanup() { if [ "$started_localstack" = 1 ]; then bash scripts/localstack.sh stop; fi; }
trap cleanup EXIT
target/debug/vpc-sim ipamd-demo "$@"
