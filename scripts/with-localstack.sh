#!/usr/bin/env bash
# Runs a command with LocalStack and a Kubernetes API server (scripts/kube-apiserver.sh) up: starts each one that is
# not running (both at once), and stops afterwards only what this script started (one you started yourself keeps
# running). The command gets the variables of `scripts/kube-apiserver.sh env` (VPC_CNI_KUBE_ADMIN, VPC_CNI_KUBE_SA, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
started=0
started_kube=0
kube_start=""
cleanup() {
  if [ -n "$kube_start" ]; then wait "$kube_start" 2>/dev/null || true; fi
  if [ "$started_kube" = 1 ]; then bash "$here/kube-apiserver.sh" stop; fi
  if [ "$started" = 1 ]; then bash "$here/localstack.sh" stop; fi
}
trap cleanup EXIT
if ! bash "$here/kube-apiserver.sh" status >/dev/null 2>&1; then
  started_kube=1
  bash "$here/kube-apiserver.sh" start &
  kube_start=$!
fi
if ! bash "$here/localstack.sh" status >/dev/null 2>&1; then
  started=1
  bash "$here/localstack.sh" start
fi
if [ -n "$kube_start" ]; then
  wait "$kube_start"
  kube_start=""
fi
eval "$(bash "$here/kube-apiserver.sh" env)"
"$@"
