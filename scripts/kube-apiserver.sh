#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver v1.20.2 + etcd 3.4.23) on 127.0.0.1 for tests and the demo.
#
#   scripts/kube-apiserver.sh install   build once from Debian's packages and cache it (idempotent, instant when cached)
#   scripts/kube-apiserver.sh start     start etcd + kube-apiserver in the background, wait for /readyz
#   scripts/kube-apiserver.sh stop      stop the apiserver, then etcd (certificates are kept)
#   scripts/kube-apiserver.sh status    exit 0 and print "running" when /readyz answers ok
#   scripts/kube-apiserver.sh env       print `export` lines: kubeconfig paths, audit log, server URL
#
# Everything comes from Debian bookworm: the `kubernetes` source package (the full upstream tree with vendor/)
# built with Debian's Go in GOPATH mode, and etcd-server/etcd-client unpacked with dpkg-deb (not installed).
# They are fetched from the mirror the machine's own apt configuration names for bookworm; install stops with
# an error when it names none.
# Two fixes make the tree build and run: zz_generated.openapi.go is generated with the vendored openapi-gen
# (the tarball lacks it), and the vendored reflect2 1.0.1 / json-iterator, which crash under Go >= 1.18, are
# replaced by Debian's golang-github-modern-go-reflect2-dev / golang-github-json-iterator-go-dev sources.
#
# The cache lives outside the clone so that every clone on the machine (CI's too) reuses one build:
#   ${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/kube-apiserver/
#     bin/          kube-apiserver, etcd, etcdctl            stamp      what was built (checked by install)
#     src/          the source tree                          gocache/   Go build cache (warm rebuild ~10 s)
#     apt/          private apt lists (the system's apt configuration is not touched)
#     run/          runtime dir (KUBE_RUN_DIR overrides): certificates, kubeconfigs, logs, pids, audit.log
#
# Ports: KUBE_APISERVER_PORT (16443), ETCD_PORT (12379; peer port ETCD_PEER_PORT, default ETCD_PORT+1).
# Identities (client certificates, embedded in the kubeconfigs):
#   admin.kubeconfig     CN=admin, O=system:masters
#   vpc-cni.kubeconfig   CN=system:serviceaccount:kube-system:vpc-cni (ipamd's ServiceAccount in tests)
#   no-rbac.kubeconfig   CN=system:serviceaccount:kube-system:no-rbac (no permissions granted)
#   both ServiceAccount-like users are in O=system:serviceaccounts and O=system:serviceaccounts:kube-system.
# Limits of 1.20: core/v1, events.k8s.io/v1, apiextensions.k8s.io/v1, rbac v1, coordination v1 are served; no
# CRD CEL rules, no selectableFields, no streaming lists, field selectors on custom resources only by name/namespace.
set -euo pipefail

cache="${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/kube-apiserver"
run="${KUBE_RUN_DIR:-$cache/run}"
bin="$cache/bin"
stamp="$cache/stamp"
suite="bookworm"
kube_version="v1.20.2"
# Bump when the build recipe changes: a cache whose stamp differs is rebuilt.
recipe="kube-apiserver $kube_version from Debian $suite kubernetes source; etcd 3.4.23; openapi-gen; reflect2 1.0.2 + json-iterator 1.1.12 from Debian; recipe 1"
api_port="${KUBE_APISERVER_PORT:-16443}"
etcd_port="${ETCD_PORT:-12379}"
etcd_peer_port="${ETCD_PEER_PORT:-$((etcd_port + 1))}"
server="https://127.0.0.1:$api_port"

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
log() { echo "kube-apiserver.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------------- install

# apt_install_missing, system_mirror and private_apt (shared with scripts/static-plugins.sh).
# shellcheck source=scripts/lib/private-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/private-apt.sh"

fetch_etcd() {
  [ -x "$bin/etcd" ] && [ -x "$bin/etcdctl" ] && return 0
  local dl="$cache/dl/etcd"
  rm -rf "$dl"; mkdir -p "$dl" "$bin"
  log "downloading etcd-server, etcd-client"
  (cd "$dl" && apt-get "${apt_opts[@]}" download -qq etcd-server etcd-client)
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$dl/root"; done
  cp "$dl/root/usr/bin/etcd" "$dl/root/usr/bin/etcdctl" "$bin/"
  rm -rf "$dl"
}

fetch_source() {
  local src="$cache/src"
  [ -f "$src/.extracted" ] && return 0
  local dl="$cache/dl/kubernetes"
  rm -rf "$dl" "$src"; mkdir -p "$dl"
  log "downloading the kubernetes source package"
  (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes)
  log "unpacking $(basename "$dl"/*.dsc)"
  dpkg-source --no-check -x "$dl"/*.dsc "$src" >/dev/null
  # dpkg-source leaves a copy of the upstream tarball beside the target directory.
  rm -rf "$dl" "$cache"/kubernetes_*.orig.tar.*
  touch "$src/.extracted"
}

installed() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ] && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]
}

install() {
  if installed; then
    if ! command -v openssl >/dev/null || ! command -v curl >/dev/null; then apt_install_missing openssl curl; fi
    return 0
  fi
  mkdir -p "$cache"
  # One build at a time per cache (two clones' CI runs may share it). The lock is released before `start`
  # launches anything, so the daemons do not inherit it.
  exec 9>"$cache/.install.lock"
  flock 9
  installed || build_all
  exec 9>&-
}

build_all() {
  local t0=$SECONDS
  if [ -f "$stamp" ]; then
    log "build recipe changed: preparing the source tree again (the Go build cache is kept)"
    rm -rf "$cache/src" "$bin/kube-apiserver" "$stamp"
  fi
  command -v dpkg-source >/dev/null || apt_install_missing dpkg-dev
  apt_install_missing golang-go jq rsync openssl curl golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
  private_apt "$cache/apt"
  fetch_etcd
  fetch_source
  build
  rm -rf "$cache/dl"
  echo "$recipe" >"$stamp"
  log "installed in $((SECONDS - t0)) s: $("$bin/kube-apiserver" --version) and etcd $("$bin/etcd" --version | head -n 1)"
}

go_env() {
  env GOPATH="$cache/gopath" GOCACHE="$cache/gocache" GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOFLAGS= \
    GOTOOLCHAIN=local "$@"
}

# Directories whose Go files carry +k8s:openapi-gen= tags, as build/root/Makefile.generated_files finds them
# (staging/src/k8s.io/X named vendor/k8s.io/X; code-generator and sample-apiserver have their own files).
openapi_dirs() {
  find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune -o -type f -name '*.go' -print0 \
    | xargs -0r grep -lZ '^// *+k8s:' | xargs -0r grep -l '+k8s:openapi-gen=' \
    | sed 's|^\./staging/src/|vendor/|; s|^\./||; s|/[^/]*$||' \
    | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' | LC_ALL=C sort -u
}

build() {
  local gopkg="$cache/gopath/src/k8s.io/kubernetes" dirs p ldflags=(-s -w)
  mkdir -p "$(dirname "$gopkg")" "$cache/gocache" "$bin"
  ln -sfn "$cache/src" "$gopkg"
  cd "$gopkg"
  if [ ! -f .vpc-cni-prepared ]; then
    # Fix 2: reflect2 1.0.1 (vendored) breaks under Go >= 1.18; Debian ships 1.0.2 and json-iterator 1.1.12.
    log "replacing vendored reflect2 / json-iterator with Debian's sources"
    rsync -a --delete --exclude go.mod --exclude go.sum --exclude LICENSE \
      /usr/share/gocode/src/github.com/modern-go/reflect2/ vendor/github.com/modern-go/reflect2/
    rsync -a --delete --exclude go.mod --exclude go.sum --exclude LICENSE \
      /usr/share/gocode/src/github.com/json-iterator/go/ vendor/github.com/json-iterator/go/
    # Fix 1: pkg/generated/openapi/zz_generated.openapi.go is not in the tarball.
    log "building openapi-gen and generating pkg/generated/openapi/zz_generated.openapi.go"
    go_env go build -o "$cache/gopath/bin/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
    dirs=$(openapi_dirs | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
    go_env "$cache/gopath/bin/openapi-gen" --logtostderr -v 0 -i "$dirs" \
      -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$cache/openapi-violations.report" --output-base "$cache/gopath/src" 2>"$cache/openapi-gen.log" \
      || { tail -n 20 "$cache/openapi-gen.log" >&2; die "openapi-gen failed (log: $cache/openapi-gen.log)"; }
    diff -q "$cache/openapi-violations.report" api/api-rules/violation_exceptions.list >/dev/null \
      || log "note: API rule violations differ from api/api-rules/violation_exceptions.list (harmless)"
    touch .vpc-cni-prepared
  fi
  for p in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
    ldflags+=(-X "$p.gitVersion=$kube_version" -X "$p.gitMajor=1" -X "$p.gitMinor=20" -X "$p.gitTreeState=clean"
      -X "$p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  done
  log "building kube-apiserver (cold: 5-10 min on 2 cores, ~1.3 GB RSS; warm: ~10 s)"
  go_env go build -ldflags "${ldflags[*]}" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
  cd - >/dev/null
}

# ---------------------------------------------------------------------------------------------------- runtime

pki="$run/pki"

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the test CA.
sign() {
  openssl req -new -nodes -newkey rsa:2048 -keyout "$pki/$1.key" -subj "$2" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 -sha256 \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}

# Certificates and keys, made once per runtime dir and kept across restarts.
make_pki() {
  [ -f "$pki/.complete" ] && return 0
  log "generating certificates in $pki"
  rm -rf "$pki"; mkdir -p "$pki"; chmod 700 "$pki"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 \
    -subj "/CN=vpc-cni-test-ca" 2>/dev/null
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=admin" "$client"
  sign vpc-cni "/O=system:serviceaccounts/O=system:serviceaccounts:kube-system/CN=system:serviceaccount:kube-system:vpc-cni" "$client"
  sign no-rbac "/O=system:serviceaccounts/O=system:serviceaccounts:kube-system/CN=system:serviceaccount:kube-system:no-rbac" "$client"
  # ServiceAccount token signing key pair.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  touch "$pki/.complete"
}

# kubeconfig USER: $run/USER.kubeconfig with everything embedded (works from any directory).
write_kubeconfig() {
  local f="$run/$1.kubeconfig"
  cat >"$f.tmp" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: vpc-cni-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$pki/$1.crt")
    client-key-data: $(base64 -w0 "$pki/$1.key")
contexts:
- name: $1
  context:
    cluster: vpc-cni-test
    user: $1
    namespace: default
current-context: $1
YAML
  chmod 600 "$f.tmp"; mv "$f.tmp" "$f"
}

admin_curl() {
  curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"
}

healthy() {
  [ -f "$pki/.complete" ] && [ "$(admin_curl "$server/readyz" 2>/dev/null)" = ok ]
}

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health": *"true"'
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of NAME (etcd | kube-apiserver) from $run/NAME.pid, only if that process is still the one we started.
live_pid() {
  local f="$run/$1.pid" pid cmd
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  case "$cmd" in "$bin/$1 "*) echo "$pid" ;; *) return 1 ;; esac
}

# Right after `setsid BIN &` the child may not have exec'd BIN yet: wait until it has (or has gone).
await_exec() {
  local i
  for ((i = 0; i < 200; i++)); do
    live_pid "$1" >/dev/null && return 0
    kill -0 "$(cat "$run/$1.pid")" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# stop_one NAME TIMEOUT_S: SIGTERM to the process group (setsid made it a group leader), SIGKILL after TIMEOUT_S.
stop_one() {
  local pid i
  if pid=$(live_pid "$1"); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < $2 * 4; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 (pid $pid) still running after ${2} s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$run/$1.pid"
}

stop() {
  # The apiserver first: without etcd it would log errors; a SIGTERM during its startup can hang, hence the timeout.
  stop_one kube-apiserver 15
  stop_one etcd 10
  rm -rf "$run/etcd-data"
}

fail_start() {
  log "$1; last lines of $2:"
  tail -n "${3:-30}" "$2" >&2 || true
  stop
  exit 1
}

start() {
  install
  if healthy; then log "already running on $server (runtime dir $run)"; return 0; fi
  # Left-overs of a start that did not finish (or of a crash): clean up before starting anew.
  stop
  local p
  for p in "$api_port" "$etcd_port" "$etcd_peer_port"; do
    port_busy "$p" && die "port 127.0.0.1:$p is in use by something else (set KUBE_APISERVER_PORT / ETCD_PORT)"
  done
  mkdir -p "$run"
  make_pki
  for p in admin vpc-cni no-rbac; do write_kubeconfig "$p"; done
  cat >"$run/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
YAML
  local t0; t0=$(now_ms)
  rm -rf "$run/etcd-data" "$run/audit.log"
  log "starting etcd on 127.0.0.1:$etcd_port (log: $run/etcd.log)"
  setsid "$bin/etcd" --name vpc-cni-test --data-dir "$run/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "vpc-cni-test=http://127.0.0.1:$etcd_peer_port" --initial-cluster-state new \
    --logger zap --log-outputs stderr </dev/null >"$run/etcd.log" 2>&1 &
  echo $! >"$run/etcd.pid"
  await_exec etcd || fail_start "etcd did not start" "$run/etcd.log"
  for ((p = 0; p < 80; p++)); do
    etcd_healthy && break
    live_pid etcd >/dev/null || fail_start "etcd exited" "$run/etcd.log"
    sleep 0.25
  done
  etcd_healthy || fail_start "etcd not healthy after 20 s" "$run/etcd.log"
  log "starting kube-apiserver on $server (log: $run/apiserver.log)"
  setsid "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
    --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --disable-admission-plugins ServiceAccount \
    --audit-policy-file "$run/audit-policy.yaml" --audit-log-path "$run/audit.log" --audit-log-format json \
    --audit-log-mode blocking --audit-log-maxsize 4096 --audit-log-maxbackup 0 \
    --profiling=false </dev/null >"$run/apiserver.log" 2>&1 &
  echo $! >"$run/kube-apiserver.pid"
  await_exec kube-apiserver || fail_start "kube-apiserver did not start" "$run/apiserver.log"
  for ((p = 0; p < 240; p++)); do
    healthy && break
    live_pid kube-apiserver >/dev/null || fail_start "kube-apiserver exited" "$run/apiserver.log"
    sleep 0.25
  done
  healthy || fail_start "kube-apiserver not ready after 60 s" "$run/apiserver.log" 40
  local ms=$(($(now_ms) - t0))
  log "ready in $((ms / 1000)).$(printf %03d $((ms % 1000))) s: $server (runtime dir $run)"
}

print_env() {
  local k v
  for k in KUBE_RUN_DIR VPC_CNI_KUBE_ADMIN VPC_CNI_KUBE_SA VPC_CNI_KUBE_NORBAC VPC_CNI_KUBE_AUDIT VPC_CNI_KUBE_SERVER; do
    case $k in
      KUBE_RUN_DIR) v=$run ;;
      VPC_CNI_KUBE_ADMIN) v=$run/admin.kubeconfig ;;
      VPC_CNI_KUBE_SA) v=$run/vpc-cni.kubeconfig ;;
      VPC_CNI_KUBE_NORBAC) v=$run/no-rbac.kubeconfig ;;
      VPC_CNI_KUBE_AUDIT) v=$run/audit.log ;;
      VPC_CNI_KUBE_SERVER) v=$server ;;
    esac
    printf 'export %s=%q\n' "$k" "$v"
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo running; else echo stopped; exit 1; fi ;;
  env) print_env ;;
  *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
