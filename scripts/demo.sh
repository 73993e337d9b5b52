#!/usr/bin/env bash
# `make demo`: LocalStack + IMDS emulator + ipamd on one simulated node: the warm pool and a few allocations.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --workspace --bins
bash scripts/with-localstack.sh target/debug/vpc-sim ipamd-demo "$@"
