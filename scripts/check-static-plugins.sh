#!/usr/bin/env bash
# The binaries the image puts on the node run there with the node's libc, whatever it is (Amazon Linux 2's glibc
# 2.26 as well as Bottlerocket's): each must be static. For every one of them, read from deploy/Dockerfile (its
# COPY lines into /usr/lib/cni, which ipamd installs into the node's /opt/cni/bin, and the vpc-cni plugin's):
#   - a chained plugin comes from the stage that builds it with scripts/static-plugins.sh, from that build's
#     output directory, and the runtime stage installs no Debian containernetworking-plugins (its dynamic builds
#     would land in /usr/lib/cni);
#   - vpc-cni comes from the stage that builds it with crt-static and --target (the flag stays off build
#     scripts), out of target/<triple>/release;
#   - each chained plugin, as scripts/static-plugins.sh builds it (cached): no program interpreter (readelf -l),
#     no NEEDED shared library (readelf -d), and it answers the CNI VERSION command (CNI_COMMAND=VERSION, empty
#     stdin) run chrooted in a directory holding nothing else: no libc, no loader, as on a node without them.
# vpc-cni's own binary is not built here (cargo's job): its linking is checked in the Dockerfile's words.
#
# Usage: check-static-plugins.sh [--plugins DIR] [--dockerfile FILE]
#   --plugins DIR      check the plugins in DIR instead of building them (DIR=/usr/lib/cni, Debian's dynamic
#                      builds, shows the binary checks failing)
#   --dockerfile FILE  read FILE instead of deploy/Dockerfile (an older one shows the Dockerfile checks failing)
# One PASS/FAIL line per check; last line "N passed, M failed"; exit status non-zero when M > 0.
set -euo pipefail
cd "$(dirname "$0")/.."

plugins_dir=
dockerfile=deploy/Dockerfile
while [ $# -gt 0 ]; do
  case "$1" in
    --plugins) plugins_dir=${2:?--plugins needs a directory}; shift 2 ;;
    --dockerfile) dockerfile=${2:?--dockerfile needs a file}; shift 2 ;;
    *) echo "usage: $0 [--plugins DIR] [--dockerfile FILE]" >&2; exit 2 ;;
  esac
done

CHECKS_NAME=check-static-plugins
CHECKS_SUMMARY=""
# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh
pass() { passed=$((passed + 1)); echo "PASS  $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
check() { if [ "$1" = 0 ]; then pass "${@:2}"; else fail "${@:2}"; fi; }
work=$(mktemp -d)

# ---- the Dockerfile ------------------------------------------------------------------------------------------------
# One line per instruction, "stage-index TAB stage-name TAB instruction": continuation lines joined, comments
# dropped, as the builder reads it.
[ -r "$dockerfile" ] || { echo "check-static-plugins: cannot read $dockerfile" >&2; exit 1; }
awk '
  /^[[:space:]]*#/ { next }
  { line = (cont == "" ? $0 : cont " " $0)
    if (line ~ /\\[[:space:]]*$/) { sub(/\\[[:space:]]*$/, "", line); cont = line; next }
    cont = ""
    sub(/^[[:space:]]+/, "", line)
    if (line == "") next
    n = split(line, w, /[[:space:]]+/)
    if (toupper(w[1]) == "FROM") { stage++; name = stage - 1; for (i = 2; i < n; i++) if (tolower(w[i]) == "as") name = w[i + 1] }
    print stage - 1 "\t" name "\t" line }' "$dockerfile" >"$work/instructions"
last=$(awk -F'\t' 'END { print $1 }' "$work/instructions")
stage_of() { awk -F'\t' -v s="$1" '$2 == s { print $1; exit }' "$work/instructions"; }
# Instructions of stage index $1 whose keyword is $2.
instructions() { awk -F'\t' -v s="$1" -v k="$2" '$1 == s && toupper(substr($3, 1, length(k) + 1)) == k " " { print $3 }' "$work/instructions"; }
# The shell commands of a stage's RUN instructions, one a line (split at ;, && and ||).
commands() { instructions "$1" RUN | sed -E 's/(;|&&|\|\|)/\n/g'; }

# COPY lines of the runtime (last) stage: "from TAB source TAB destination", one line per source.
instructions "$last" COPY | while read -r -a w; do
  from="" args=()
  for x in "${w[@]:1}"; do
    case "$x" in --from=*) from=${x#--from=} ;; --*) ;; *) args+=("$x") ;; esac
  done
  n=${#args[@]}
  for ((i = 0; i < n - 1; i++)); do printf '%s\t%s\t%s\n' "$from" "${args[i]}" "${args[n - 1]}"; done
done >"$work/copies"

plugins=()
while IFS=$'\t' read -r from src dest; do
  case "$dest" in /usr/lib/cni | /usr/lib/cni/*) ;; *) continue ;; esac
  name=$(basename "$src")
  plugins+=("$name")
  what="Dockerfile: /usr/lib/cni/$name comes from"
  if [ -z "$from" ]; then fail "$what the build context ($src), not from a stage running scripts/static-plugins.sh"; continue; fi
  idx=$(stage_of "$from")
  if [ -z "$idx" ]; then fail "$what --from=$from, which is no stage of $dockerfile"; continue; fi
  outs=$(commands "$idx" | sed -nE 's/.*scripts\/static-plugins\.sh[[:space:]]+([^[:space:]]+).*/\1/p' | sort -u)
  if [ -z "$outs" ]; then
    fail "$what stage $from, which does not build it with scripts/static-plugins.sh ($src)"
  elif ! grep -qxF "$(dirname "$src")" <<<"$outs"; then
    fail "$what stage $from's $src, not from its scripts/static-plugins.sh output directory ($(paste -sd' ' - <<<"$outs"))"
  else
    pass "$what stage $from, built by scripts/static-plugins.sh into $(dirname "$src")"
  fi
done <"$work/copies"
[ ${#plugins[@]} -gt 0 ] || fail "Dockerfile: no COPY into /usr/lib/cni in the runtime stage (the chained plugins ipamd installs)"
if instructions "$last" RUN | grep -q 'containernetworking-plugins'; then
  fail "Dockerfile: the runtime stage installs Debian's containernetworking-plugins (dynamic builds in /usr/lib/cni)"
else
  pass "Dockerfile: the runtime stage installs no Debian containernetworking-plugins"
fi

# vpc-cni: the cargo command building it carries +crt-static and --target, and the file copied out is that
# build's (target/<triple>/release/vpc-cni; target/release/ would be a build without --target).
IFS=$'\t' read -r from src _ < <(awk -F'\t' '$2 ~ /(^|\/)vpc-cni$/' "$work/copies") || true
what="Dockerfile: vpc-cni"
if [ -z "${src:-}" ]; then
  fail "$what: no COPY of it in the runtime stage"
elif [ -z "$from" ] || [ -z "$(stage_of "$from")" ]; then
  fail "$what: copied from ${from:-the build context}, not from a build stage"
else
  idx=$(stage_of "$from")
  build=$(commands "$idx" | grep -E -- '--bin[= ]vpc-cni([[:space:]]|$)' || true)
  out_dir=$(dirname "$src")
  copied=$(commands "$idx" | grep -E "^[[:space:]]*cp[[:space:]].*${out_dir}/?[[:space:]]*$" \
    | grep -oE '"?target/[^/[:space:]"]+/release/vpc-cni"?' | grep -v '^"\?target/release/' || true)
  if [ -z "$build" ]; then
    fail "$what: stage $from has no cargo build --bin vpc-cni"
  elif ! grep -q -- '+crt-static' <<<"$build" || ! grep -qE -- '--target([= ]|$)' <<<"$build"; then
    missing=()
    grep -q -- '+crt-static' <<<"$build" || missing+=(+crt-static)
    grep -qE -- '--target([= ]|$)' <<<"$build" || missing+=(--target)
    fail "$what: stage $from builds it without ${missing[*]}: $(tr -s ' ' <<<"$build" | sed 's/^ //')"
  elif [ -z "$copied" ]; then
    fail "$what: stage $from does not copy target/<triple>/release/vpc-cni (the --target build) into $out_dir"
  else
    pass "$what comes from stage $from: cargo build with +crt-static and --target, copied from $(tr -d '"' <<<"$copied")"
  fi
fi

# ---- the plugins' binaries ---------------------------------------------------------------------------------------
if [ -z "$plugins_dir" ]; then
  echo "check-static-plugins: building the plugins with scripts/static-plugins.sh (cached)"
  if plugins_dir=$(bash scripts/static-plugins.sh); then
    pass "scripts/static-plugins.sh built the plugins: $plugins_dir ($(cat "$plugins_dir/.recipe" 2>/dev/null))"
  else
    fail "scripts/static-plugins.sh failed (its messages are above)"
    plugins_dir="$work/not-built"
  fi
else
  echo "check-static-plugins: checking the plugins in $plugins_dir (--plugins), not a static-plugins.sh build"
fi
readelf=$(command -v readelf || true)
chroot_bin=$(command -v chroot || true)
# chroot needs root; elsewhere a user namespace where we are root will do.
as_root=()
[ "$(id -u)" = 0 ] || as_root=(unshare --map-root-user)

for name in "${plugins[@]}"; do
  bin="$plugins_dir/$name"
  if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
    fail "$name: no executable $bin (no program interpreter)"
    fail "$name: no executable $bin (no NEEDED shared library)"
    fail "$name: no executable $bin (CNI VERSION, chrooted without libc)"
    continue
  fi
  if [ -z "$readelf" ]; then
    fail "$name: readelf missing (binutils; scripts/deps.sh installs it)"
    fail "$name: readelf missing (binutils; scripts/deps.sh installs it)"
  else
    if out=$("$readelf" -lW "$bin" 2>&1); then
      interp=$(sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p' <<<"$out")
      if grep -qE '^[[:space:]]*INTERP[[:space:]]' <<<"$out"; then rc=1; else rc=0; fi
      check "$rc" "$name: no program interpreter (readelf -l $bin)${interp:+: it asks for $interp}"
    else
      fail "$name: readelf -l $bin failed: $(head -n 1 <<<"$out")"
    fi
    if out=$("$readelf" -dW "$bin" 2>&1); then
      needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p' <<<"$out" | paste -sd' ' -)
      if [ -z "$needed" ]; then rc=0; else rc=1; fi
      check "$rc" "$name: no NEEDED shared library (readelf -d $bin)${needed:+: it needs $needed}"
    else
      fail "$name: readelf -d $bin failed: $(head -n 1 <<<"$out")"
    fi
  fi
  # The binary alone in a directory, run as the node's runtime would run it (CNI_COMMAND in the environment,
  # the network configuration on stdin, empty here): a dynamic one cannot even start there.
  root="$work/root-$name"
  mkdir -p "$root"
  cp "$bin" "$root/$name"
  if [ -z "$chroot_bin" ]; then
    fail "$name: chroot missing (coreutils), CNI VERSION not run"
  elif out=$(env -i CNI_COMMAND=VERSION timeout 10 "${as_root[@]}" "$chroot_bin" "$root" "/$name" </dev/null 2>&1) \
    && grep -q '"supportedVersions"' <<<"$out"; then
    pass "$name: answers CNI VERSION chrooted in a directory without libc: $out"
  else
    fail "$name: CNI VERSION chrooted in a directory without libc: $(head -n 2 <<<"$out" | tr '\n' ' ')"
  fi
done

finished=1
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
