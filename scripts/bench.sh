#!/usr/bin/env bash
# `make bench`: the release build, then on the embedded LocalStack + network-namespace VPC (root) `vpc-bench`:
# vpc-cni beside the reference ptp + host-local chain and the loopback baseline on one sim node, bursts, ipamd's
# gRPC throughput, RSS and EC2 economy, the plugin's size and dependencies; then ipamd's criterion
# micro-benchmarks. The report is printed and kept in target/bench/report.md. Extra arguments go to vpc-bench
# (`make bench ARGS="--cycles 500"`; `--smoke` for a quick pass).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release -p vpc-sim -p ipamd -p cni-shim -p vpcctl --bins
mkdir -p target/bench
bash scripts/plugin-deps.sh
bash scripts/with-localstack.sh target/release/vpc-bench --out target/bench/report.md "$@"
echo "== criterion micro-benchmarks (ipamd/benches/core.rs)"
cargo bench -p ipamd --bench core
echo "== NetworkPolicy at scale (netpol/examples/scale.rs)"
cargo run --release -q -p vpc-cni-netpol --example scale | tee -a target/bench/report.md
