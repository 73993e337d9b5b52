#!/usr/bin/env bash
# `make demo`: LocalStack + a 2-node vpc-sim: pods through the real plugin, cross-node pings, what the VPC fabric
# and the internet host saw, the pools; everything removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --workspace --bins
bash scripts/with-localstack.sh target/debug/vpc-sim demo "$@"
