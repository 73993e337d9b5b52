#!/usr/bin/env bash
# The plugin's dependency tree stays small: no AWS SDK crate, no daemon code, at most 120 distinct crates.
# Prints the count; exits 1 naming the offenders otherwise. Runs in `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p cni-shim -e normal --prefix none --no-dedupe 2>/dev/null | awk '{print $1}' | sort -u)
count=$(printf '%s\n' "$tree" | grep -c .)
bad=$(printf '%s\n' "$tree" | grep -E '^(aws-|ipamd$|kube|k8s-openapi|prometheus|moka$)' || true)
echo "cni-shim: $count distinct crates in its normal dependency tree"
if [ -n "$bad" ]; then
  echo "cni-shim must not depend on: $(echo $bad)"; exit 1
fi
if [ "$count" -gt 120 ]; then
  echo "cni-shim: $count crates > 120"; exit 1
fi
