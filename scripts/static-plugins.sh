#!/usr/bin/env bash
# Static builds of the reference CNI plugins the image puts on the node (portmap, bandwidth, tuning).
#
#   scripts/static-plugins.sh [OUT_DIR]     build (or find cached) and print the directory holding them
#
# Why static: the container runtime runs these plugins on the node, with the node's libc. Debian's
# containernetworking-plugins binaries are linked against bookworm's glibc (they need GLIBC_2.34), so on a node
# with an older glibc (Amazon Linux 2, Ubuntu 20.04) the runtime cannot even start them. Built with
# CGO_ENABLED=0, Go links them statically: no program interpreter, no shared library, any Linux node.
#
# What: Debian's source package golang-github-containernetworking-plugins, at the version Debian has for $suite
# (the -dev binary package ships no `main` packages), built with Debian's Go in GOPATH mode (GO111MODULE=off)
# against Debian's Go library packages (the golang-*-dev of its Build-Depends, installed with apt when
# missing): no Go module is downloaded (GOPROXY=off). The source comes from the mirror the machine's own apt
# configuration names for $suite, through a private apt list (scripts/lib/private-apt.sh).
# GOARCH, when set, cross-builds for that architecture (the Dockerfile builds on the build machine's platform).
#
# OUT_DIR (default $cache/<version>/linux-<arch>/) gets portmap, bandwidth, tuning and .recipe (what built them);
# when those are already there for this version, arch and recipe, nothing is built. Logs go to stderr; the only
# line on stdout is OUT_DIR's absolute path.
# Cache, outside the clone so that every clone (and CI) shares one build:
#   ${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/static-plugins/
#     apt/      private apt lists (the system's apt configuration is untouched), refreshed when a day old
#     gopath/   the unpacked source at its import path        gocache/   Go build cache
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/static-plugins"
suite="bookworm"
source_pkg="golang-github-containernetworking-plugins"
import_path="github.com/containernetworking/plugins"
plugins=(meta/portmap meta/bandwidth meta/tuning)
# Bump when the build recipe changes: output whose .recipe differs is rebuilt.
recipe_rev=1

log() { echo "static-plugins.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=scripts/lib/private-apt.sh
. "$here/lib/private-apt.sh"

[ $# -le 1 ] || die "usage: $0 [OUT_DIR]"
command -v apt-get >/dev/null || die "needs apt-get: this builds from Debian's archive on a Debian $suite machine"

# The architecture to build for, in Go's (and Debian's) names: amd64, arm64.
if [ -n "${GOARCH:-}" ]; then
  arch=$GOARCH
else
  arch=$(dpkg --print-architecture)
fi
case "$arch" in amd64 | arm64) ;; *) die "unsupported architecture $arch (GOARCH or this machine's): amd64 or arm64" ;; esac

mkdir -p "$cache"
# One run at a time per cache: two clones' test runs, or an image's two platforms, may share it (and apt locks
# its lists: a second `apt-get update` of them would fail, not wait).
exec 9>"$cache/.lock"
flock 9
private_apt_sources "$cache/apt"

refresh_lists() {
  private_apt "$cache/apt" || die "apt-get update of the private lists failed (sources: $cache/apt/sources.list)"
  touch "$cache/apt/.updated"
  refreshed=1
}
refreshed=

# The source version apt-get source would fetch now, from the name of its .dsc.
source_version() {
  local dsc
  dsc=$(apt-get "${apt_opts[@]}" source --print-uris -qq "$source_pkg" 2>&1 | awk '$2 ~ /\.dsc$/ { print $2; exit }') || true
  [ -n "$dsc" ] || return 1
  dsc=${dsc#"${source_pkg}_"}
  echo "${dsc%.dsc}"
}

# version, out (absolute) and recipe (what .recipe says of a build there), from the lists as they are.
locate() { # [OUT_DIR]
  version=$(source_version) || die "no source package $source_pkg in Debian $suite's lists ($cache/apt/sources.list)"
  out=${1:-$cache/$version/linux-$arch}
  mkdir -p "$out" || die "cannot create OUT_DIR $out"
  out=$(cd "$out" && pwd)
  recipe="$source_pkg $version linux/$arch CGO_ENABLED=0 GOPATH mode, Debian $suite Go and golang-*-dev; recipe $recipe_rev"
}

# Reading the version needs lists; fresh ones are reused, so a cached build is found without the network.
if [ -z "$(find "$cache/apt/.updated" -mmin -1440 2>/dev/null)" ]; then refresh_lists; fi
locate "$@"

built() {
  local p
  for p in "${plugins[@]}"; do [ -x "$out/${p##*/}" ] || return 1; done
  [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]
}

if built; then
  log "cached: $out ($version, linux/$arch)"
  echo "$out"
  exit 0
fi

t0=$SECONDS
log "building portmap, bandwidth, tuning $version for linux/$arch into $out"
# Lists up to a day old: the version they name may have left the mirror since.
if [ -z "$refreshed" ]; then
  refresh_lists
  locate "$@"
fi

# ---- the source, unpacked at its import path under our GOPATH ---------------------------------------------------
command -v dpkg-source >/dev/null || apt_install_missing dpkg-dev
gopath="$cache/gopath"
src="$gopath/src/$import_path"
if [ "$(cat "$src/.vpc-cni-version" 2>/dev/null)" != "$version" ]; then
  dl="$cache/dl"
  rm -rf "$dl" "$src"
  mkdir -p "$dl" "$(dirname "$src")"
  log "downloading the $source_pkg $version source package"
  (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only -qq "$source_pkg") \
    || die "apt-get source $source_pkg failed (private lists: $cache/apt)"
  # --no-check: apt has already verified the files against the signed Sources index.
  log "unpacking $(cd "$dl" && echo *.dsc) (Debian's patches applied)"
  dpkg-source --no-check -x "$dl"/*.dsc "$src" >/dev/null || die "dpkg-source could not unpack $dl/*.dsc"
  rm -rf "$dl" "$(dirname "$src")"/*.orig.tar.*   # dpkg-source leaves the upstream tarball beside the tree
  echo "$version" >"$src/.vpc-cni-version"
fi

# ---- Debian's Go and the Go libraries the package builds against --------------------------------------------------
# Build-Depends' golang-*-dev packages (first alternative, versions and qualifiers dropped: they are this
# release's own packages). debhelper-compat and dh-golang build the .deb, not the code; golang-any is golang-go.
build_deps=$(awk '
    /^[^ \t]/ { infield = 0 }
    /^Build-Depends:/ { infield = 1; sub(/^Build-Depends:/, "") }
    infield { print }
    /^$/ { exit }' "$src/debian/control" |
  tr ',' '\n' | sed 's/|.*//; s/([^)]*)//g; s/\[[^]]*\]//g; s/<[^>]*>//g; s/[[:space:]]//g' |
  grep -E '^golang-.+-dev$' | LC_ALL=C sort -u) || true
[ -n "$build_deps" ] || die "no golang-*-dev package in Build-Depends of $src/debian/control"
# shellcheck disable=SC2086 # one package name per word
apt_install_missing golang-go $build_deps
[ -x /usr/bin/go ] || die "golang-go is installed but /usr/bin/go is missing"

# ---- build -----------------------------------------------------------------------------------------------------------
# GOPATH: our tree first (its own packages), then Debian's /usr/share/gocode (the libraries). /usr/bin/go is
# Debian's Go even where another one comes first on PATH (a golang image's).
go_env() {
  env -u GOROOT GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache/gocache" GO111MODULE=off GOPROXY=off GOFLAGS= \
    GOTOOLCHAIN=local CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$@"
}
log "$(go_env /usr/bin/go version)"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for p in "${plugins[@]}"; do
  name=${p##*/}
  log "go build $import_path/plugins/$p"
  # BuildVersion: what `<plugin>` with no CNI_COMMAND prints (Debian's builds say "version unknown").
  go_env /usr/bin/go build -trimpath -ldflags "-s -w -X $import_path/pkg/utils/buildversion.BuildVersion=$version" \
    -o "$tmp/$name" "$import_path/plugins/$p" || die "go build of $name failed (GOPATH $gopath:/usr/share/gocode)"
done
for p in "${plugins[@]}"; do mv -f "$tmp/${p##*/}" "$out/"; done
echo "$recipe" >"$out/.recipe"
log "built in $((SECONDS - t0)) s: $(cd "$out" && stat -c '%n %s B' "${plugins[@]##*/}" | paste -sd, - | sed 's/,/, /g')"
echo "$out"
