#!/usr/bin/env bash
# The node-side clients stay small: the plugin (cni-shim) and vpcctl link no AWS SDK crate, no daemon code and no
# gRPC server (neither axum nor tonic's server, transport or router feature); the plugin has at most 120 distinct
# crates. Prints the counts; exits 1 naming the offenders otherwise. Runs in `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for pkg in cni-shim vpcctl; do
  tree=$(cargo tree -p "$pkg" -e normal --prefix none --no-dedupe 2>/dev/null | awk '{print $1}' | sort -u)
  count=$(printf '%s\n' "$tree" | grep -c .)
  bad=$(printf '%s\n' "$tree" | grep -E '^(aws-|ipamd$|kube|k8s-openapi|prometheus|moka$|axum)' || true)
  # tonic's server is a set of its features, not crates of their own: the crate names above cannot show it.
  tonic_features=$(cargo tree -p "$pkg" -e normal -f '{p} {f}' --prefix none | awk '$1 == "tonic" {print $3}' | sort -u)
  server=$(tr ',' '\n' <<<"$tonic_features" | grep -xE 'server|transport|router' || true)
  echo "$pkg: $count distinct crates in its normal dependency tree; tonic features: ${tonic_features:-none}"
  if [ -n "$bad" ]; then
    echo "$pkg must not depend on: $(echo $bad)"; status=1
  fi
  if [ -n "$server" ]; then
    echo "$pkg must not enable tonic's $(echo $server) (a gRPC server)"; status=1
  fi
  if [ "$pkg" = cni-shim ] && [ "$count" -gt 120 ]; then
    echo "cni-shim: $count crates > 120"; status=1
  fi
done
exit $status
