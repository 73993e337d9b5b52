#!/usr/bin/env bash
# Installs what a fresh machine lacks (Debian packages, rustfmt/clippy, the LocalStack venv, the cached kube-apiserver
# build, the cached static CNI plugins build). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
# NetworkPolicy tests: servers and probes in pod namespaces.
command -v socat >/dev/null || need+=(socat)
command -v tc >/dev/null || need+=(iproute2)
[ -x /usr/lib/cni/portmap ] && [ -x /usr/lib/cni/bandwidth ] || need+=(containernetworking-plugins)
# scripts/static-plugins.sh (Debian's Go, dpkg-source) and scripts/check-static-plugins.sh (readelf).
[ -x /usr/bin/go ] || need+=(golang-go)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v readelf >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "deps.sh: missing ${need[*]}; install them (needs root)" >&2; exit 1; fi
  echo "deps.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
bash scripts/localstack.sh install
bash scripts/kube-apiserver.sh install
# The Go libraries the plugins build against (their source package's Build-Depends), and the build itself.
bash scripts/static-plugins.sh >/dev/null
