#!/usr/bin/env bash
# The node-side clients stay small: the plugin (cni-shim) and vpcctl link no AWS SDK crate, no daemon code and no
# gRPC server; the plugin has at most 120 distinct crates. Prints the counts; exits 1 naming the offenders
# otherwise. Runs in `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for pkg in cni-shim vpcctl; do
  tree=$(cargo tree -p "$pkg" -e normal --prefix none --no-dedupe 2>/dev/null | awk '{print $1}' | sort -u)
  count=$(printf '%s\n' "$tree" | grep -c .)
  bad=$(printf '%s\n' "$tree" | grep -E '^(aws-|ipamd$|kube|k8s-openapi|prometheus|moka$|axum)' || true)
  echo "$pkg: $count distinct crates in its normal dependency tree"
  if [ -n "$bad" ]; then
    echo "$pkg must not depend on: $(echo $bad)"; status=1
  fi
  if [ "$pkg" = cni-shim ] && [ "$count" -gt 120 ]; then
    echo "cni-shim: $count crates > 120"; status=1
  fi
done
exit $status
