#!/usr/bin/env bash
# Runs a command with LocalStack up: starts it when it is not running, and stops it afterwards only if this
# script started it (a LocalStack you started yourself keeps running).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
started=0
if ! bash "$here/localstack.sh" status >/dev/null 2>&1; then
  bash "$here/localstack.sh" start
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then bash "$here/localstack.sh" stop; fi; }
trap cleanup EXIT
"$@"
