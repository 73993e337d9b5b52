# Shared by the check scripts (check-manifests.sh, check-static-plugins.sh): the pass/fail tallies, and the EXIT
# trap that makes a run cut short (a command failing outside a check stops it, set -e) end with a FAIL line and
# the summary, so that it reads as failed, not as a shorter list of passes.
# Source it from the repository's root with CHECKS_NAME (the script's name, for that FAIL line) and CHECKS_SUMMARY
# (what precedes "N passed, M failed") set; set finished=1 before printing the summary; $work, when set, is a
# scratch directory removed on exit.
# shellcheck shell=bash
passed=0
failed=0
work=
finished=
stopped_at=
trap 'stopped_at="line $LINENO: $BASH_COMMAND"' ERR
trap 'rc=$?
  [ -z "$work" ] || rm -rf "$work"
  if [ -z "$finished" ]; then
    echo "FAIL  $CHECKS_NAME stopped before its last check (status $rc${stopped_at:+, $stopped_at})"
    echo "$CHECKS_SUMMARY$passed passed, $((failed + 1)) failed"
  fi' EXIT
