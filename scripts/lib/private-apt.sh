# shellcheck shell=bash disable=SC2154 # suite: set by the caller (see below)
# Sourced, not run: Debian packages and source packages for the scripts that build tools from Debian's archive
# (scripts/kube-apiserver.sh, scripts/static-plugins.sh), fetched without touching the system's apt configuration.
#
#   apt_install_missing PKG…   install the Debian packages not yet installed, with the system's apt (root only)
#   system_mirror              "URI KEYRING" of the first apt source the system has for Debian $suite
#   private_apt_sources DIR    a private sources list (deb + deb-src of that mirror) under DIR; sets apt_opts
#   private_apt DIR            the same, then `apt-get update` of the private lists
#
# The caller sets `suite` (the Debian release, e.g. bookworm) and defines `log` and `die` (its messages carry the
# caller's name). apt_opts, an array, is what to pass to apt-get / apt-cache to use the private lists and cache.
# No mirror is named here: it is the one the machine's own apt configuration uses (APT_CONFIG_DIR, default
# /etc/apt, points the search elsewhere, for tests), so every build reaches only the archive the machine already does.

apt_install_missing() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages ${need[*]}; install them (needs root)"
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The mirror the system already uses for $suite (first match in sources.list, sources.list.d/*.list and the deb822
# sources.list.d/*.sources files), with its keyring. APT_CONFIG_DIR (default /etc/apt) points it elsewhere, for tests.
system_mirror() {
  local f etc="${APT_CONFIG_DIR:-/etc/apt}"
  {
    for f in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # deb [opts] URI suite components...
      awk -v s="$suite" '$1=="deb" { o=""; i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) { o=o" "$i; i++ } o=o" "$i; i++ }
        if ($(i+1)==s) { k=""; if (match(o, /signed-by=[^] ]+/)) k=substr(o, RSTART+10, RLENGTH-10); print $i, k } }' "$f"
    done
    for f in "$etc"/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # deb822 paragraphs: Types / URIs / Suites / Signed-By / Enabled
      awk -v s="$suite" 'function flush() { if (t ~ /(^| )deb( |$)/ && en != "no" && (" " su " ") ~ (" " s " ")) { n=split(u, a, " "); for (j=1;j<=n;j++) print a[j], k } t=u=su=k=en="" }
        /^[ \t]*#/ { next } /^[ \t]*$/ { flush(); next }
        { key=tolower($1); sub(/:$/, "", key); $1=""; sub(/^ +/, "")
          if (key=="types") t=$0; else if (key=="uris") u=$0; else if (key=="suites") su=$0
          else if (key=="signed-by") k=$0; else if (key=="enabled") en=tolower($0) }
        END { flush() }' "$f"
    done
  } | head -n 1
}

# A private source list, lists and cache under DIR: the system's apt configuration is untouched. The list is
# written once (the mirror found then is kept); later calls only set apt_opts.
private_apt_sources() {
  local aptdir=$1 line uri key opt
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/sources.list.d"
  if [ ! -s "$aptdir/sources.list" ]; then
    line=$(system_mirror)
    uri=${line%% *}; key=${line#* }
    [ -n "$uri" ] || die "no apt source for Debian $suite found: looked for a \`deb\` line with suite $suite in" \
      "${APT_CONFIG_DIR:-/etc/apt}/sources.list and sources.list.d/*.list, and a Types: deb paragraph with" \
      "Suites: $suite in sources.list.d/*.sources; configure an apt source for Debian $suite (e.g. your" \
      "Debian mirror's URI in /etc/apt/sources.list.d/debian.sources) and run this again"
    [ "$key" = "$line" ] && key=""
    [ -z "$key" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && key=/usr/share/keyrings/debian-archive-keyring.gpg
    opt=""; [ -n "$key" ] && opt="[signed-by=$key] "
    log "private apt source: $uri $suite (keyring: ${key:-apt default})"
    printf 'deb %s%s %s main\ndeb-src %s%s %s main\n' "$opt" "$uri" "$suite" "$opt" "$uri" "$suite" >"$aptdir/sources.list"
  fi
  apt_opts=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
    -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache")
}

private_apt() {
  private_apt_sources "$1"
  log "apt-get update (private lists)"
  apt-get "${apt_opts[@]}" update -qq
}
