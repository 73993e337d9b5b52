#!/usr/bin/env bash
# LocalStack (EC2 only) in host mode on 127.0.0.1:4566 for tests and the demo.
#
#   scripts/localstack.sh install   venv under ~/.cache/vpc-cni/localstack, outside any checkout (idempotent)
#   scripts/localstack.sh start     start in the background, wait until EC2 is available
#   scripts/localstack.sh stop      stop the instance this script started
#   scripts/localstack.sh status    exit 0 when EC2 answers
#
# Why pinned: localstack-core 2026.x needs Python >= 3.12; 4.14.0 runs on 3.11 when installed
# with its own tag's requirements-runtime.txt as pip constraints (scripts/localstack-constraints.txt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# The running instance's files (pid, log, state) belong to this checkout; the venv is shared by every checkout
# of the machine, like the kube-apiserver build (a fresh clone needs no second install).
cache="${LOCALSTACK_CACHE:-$repo/.cache/localstack}"
venv="${LOCALSTACK_VENV:-${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/localstack/venv}"
version="4.14.0"
listen="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
pidfile="$cache/localstack.pid"
logfile="$cache/localstack.log"
health="http://$listen/_localstack/health"

log() { echo "localstack.sh: $*" >&2; }

python_bin() {
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1; then command -v "$p"; return; fi
  done
  log "no python3 found"; exit 1
}

install() {
  local stamp="$venv/.installed-$version"
  if [ -f "$stamp" ] && cmp -s "$here/localstack-constraints.txt" "$stamp"; then
    return 0
  fi
  mkdir -p "$cache" "$(dirname "$venv")"
  log "installing localstack-core[runtime]==$version into $venv"
  "$(python_bin)" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade "pip<25"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$here/localstack-constraints.txt" "localstack-core[runtime]==$version"
  cp "$here/localstack-constraints.txt" "$stamp"
}

healthy() {
  curl -fsS --max-time 2 "$health" 2>/dev/null | grep -Eq '"ec2": *"(available|running)"'
}

# An EC2 call that answers: "healthy" can come before the EC2 handlers are in place, and two first calls at
# once then get 501 "no handler for operation" (seen with two test sims starting together).
answers() {
  curl -fsS --max-time 5 -o /dev/null "http://$listen/" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0' \
    --data 'Action=DescribeVpcs&Version=2016-11-15' 2>/dev/null
}

start() {
  install
  if healthy; then log "already running on $listen"; return 0; fi
  mkdir -p "$cache/fs"
  log "starting on $listen (log: $logfile)"
  (
    cd "$cache"
    RUNTIME_COMPONENTS=aws FILESYSTEM_ROOT="$cache/fs" DISABLE_EVENTS=1 SERVICES=ec2 \
      GATEWAY_LISTEN="$listen" LOCALSTACK_HOST="$listen" EAGER_SERVICE_LOADING=1 \
      SKIP_SSL_CERT_DOWNLOAD=1 DEBUG="${LOCALSTACK_DEBUG:-0}" \
      setsid "$venv/bin/python" "$here/localstack_main.py" >"$logfile" 2>&1 &
    echo $! >"$pidfile"
  )
  for _ in $(seq 1 240); do
    if healthy && answers; then log "ready"; return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "exited early; last log lines:"; tail -n 30 "$logfile" >&2; exit 1
    fi
    sleep 0.5
  done
  log "not ready after 120 s; last log lines:"; tail -n 30 "$logfile" >&2
  exit 1
}

stop() {
  if [ -f "$pidfile" ]; then
    local pid; pid=$(cat "$pidfile")
    # setsid made it a process-group leader: stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    log "stopped"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
