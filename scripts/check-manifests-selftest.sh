#!/usr/bin/env bash
# Shows that each check of scripts/check-manifests.sh can fail: a check that cannot fail proves nothing. Each case
# copies deploy/ into a temporary directory, breaks the copy in one way, runs check-manifests.sh on the copy, and
# wants a non-zero status, a last line with failures, a FAIL line for what it broke, and no FAIL line it did not
# expect (a breakage caught only by some other check would not show that its own check works). The untouched copy
# must pass first, so a failure comes from the breakage and not from the copying.
# checkov takes most of a run: it runs in the cases about it (and the untouched copy) only; the others set
# VPC_CNI_CHECKOV=skip, which check-manifests.sh reports in its last line.
# Last line: "manifests self-test: N cases passed, M failed"; exit status non-zero when M > 0.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cases_passed=0
cases_failed=0

# run_case NAME CHECKOV EXPECT… : copies deploy/ to $tmp/NAME/deploy, calls break_NAME on it (dashes become
# underscores), runs check-manifests.sh with VPC_CNI_CHECKOV=CHECKOV ("" for the real one) and checks the result.
# Every EXPECT (an extended regex, matched against the FAIL lines without their "FAIL  ") must match a FAIL line,
# and every FAIL line must match one EXPECT. No EXPECT: the copy must pass.
run_case() {
  local name=$1 checkov=$2; shift 2
  local copy="$tmp/$name/deploy" out rc=0 t0=$SECONDS problems=() fails want line
  mkdir -p "$tmp/$name"
  cp -r "$repo/deploy" "$copy"
  if ! "break_${name//-/_}" "$copy"; then
    cases_failed=$((cases_failed + 1))
    printf 'FAIL  %-32s the breakage did not apply (deploy/ changed under it?)\n' "$name"
    return
  fi
  out=$(VPC_CNI_CHECKOV=$checkov bash "$repo/scripts/check-manifests.sh" "$copy" 2>&1) || rc=$?
  fails=$(sed -n 's/^FAIL  //p' <<<"$out")
  local last
  last=$(tail -n 1 <<<"$out")
  if [ $# = 0 ]; then
    [ "$rc" = 0 ] || problems+=("status $rc, want 0")
    [ -z "$fails" ] || problems+=("FAIL lines on an untouched copy")
    [[ "$last" =~ ^manifests:\ [0-9]+\ passed,\ 0\ failed ]] || problems+=("last line: $last")
  else
    [ "$rc" != 0 ] || problems+=("status 0, want non-zero")
    [[ "$last" =~ ^manifests:\ [0-9]+\ passed,\ [1-9][0-9]*\ failed ]] || problems+=("last line: $last")
    for want in "$@"; do
      grep -qE -- "$want" <<<"$fails" || problems+=("no FAIL line matches: $want")
    done
    while IFS= read -r line; do
      [ -n "$line" ] || continue
      local matched=
      for want in "$@"; do
        if grep -qE -- "$want" <<<"$line"; then matched=1; break; fi
      done
      [ -n "$matched" ] || problems+=("unexpected FAIL line: $line")
    done <<<"$fails"
  fi
  if [ ${#problems[@]} = 0 ]; then
    cases_passed=$((cases_passed + 1))
    # The FAIL line its first EXPECT matched (the untouched copy: the last line).
    line=$last
    [ $# = 0 ] || line=$(grep -E -m 1 -- "$1" <<<"$fails")
    printf 'ok    %-32s %3d s  %s\n' "$name" $((SECONDS - t0)) "$(cut -c1-200 <<<"$line")"
  else
    cases_failed=$((cases_failed + 1))
    printf 'FAIL  %-32s %3d s\n' "$name" $((SECONDS - t0))
    printf '        - %s\n' "${problems[@]}"
    sed 's/^/        | /' <<<"$out"
  fi
}

# edit FILE PYTHON-EXPRESSION: rewrites FILE's text with a Python expression of `s` (exact replacements that must
# apply: a breakage that silently did nothing would make its case pass for the wrong reason).
edit() {
  python3 - "$1" "$2" <<'PY'
import re, sys
path, expr = sys.argv[1], sys.argv[2]
s = open(path).read()
def sub(old, new, count=1):
    if s.count(old) != count:
        sys.exit(f"self-test: {path}: {old!r} occurs {s.count(old)} times, not {count}")
    return s.replace(old, new)
def resub(pattern, new):
    out, n = re.subn(pattern, new, s, flags=re.M)
    if n != 1:
        sys.exit(f"self-test: {path}: {pattern!r} matches {n} times, not once")
    return out
out = eval(expr)
open(path, "w").write(out)
PY
}

break_untouched() { :; }
# The base does not render: nothing else can be checked, and the run says so.
break_render_base() { edit "$1/kustomization.yaml" 'sub("  - daemonset.yaml\n", "  - daemonset.yaml\n  - missing.yaml\n")'; }
# One Component does not render: the others are still checked.
break_render_component() { edit "$1/examples/warm-targets/kustomization.yaml" 'sub("  - path: env.yaml", "  - path: missing.yaml")'; }
# The DaemonSet without the field the negative control of kubernetes-validate misspells: the control must notice
# that it tested nothing.
break_validate_control() { edit "$1/daemonset.yaml" 'resub(r"^  updateStrategy:\n(    .*\n|      #.*\n)+", "")'; }
# A field the DaemonSet API does not have.
break_daemonset_unknown_field() { edit "$1/daemonset.yaml" 'sub("spec:\n  selector:", "spec:\n  minReadySecond: 10\n  selector:")'; }
# The CRD keeps unknown fields under spec: the API server would then accept a misspelt securityGroup. (The check
# used to add additionalProperties: false to its own copy of the schema, and passed on this CRD.)
break_crd_keeps_unknown_fields() {
  edit "$1/eniconfig-crd.yaml" 'sub("            spec:\n              type: object\n", "            spec:\n              type: object\n              x-kubernetes-preserve-unknown-fields: true\n")'
}
# Not a structural schema.
break_crd_not_structural() { edit "$1/eniconfig-crd.yaml" 'sub("                  maxItems: 5\n", "                  maxItems: 5\n                  uniqueItems: true\n")'; }
# An example ENIConfig with a misspelt field.
break_example_unknown_field() { edit "$1/examples/eniconfigs/us-west-2a.yaml" 'sub("  securityGroups:", "  securityGroup:")'; }
# The schema block dies partway (a CRD version without `served`, which kubernetes-validate refuses too): its
# crash and the checks it never reached must fail the run.
break_schema_block_crash() { edit "$1/eniconfig-crd.yaml" 'sub("      served: true\n", "")'; }
# The render grants more than rbac.yaml (what the audit-log test proves): a kustomize patch adds a rule.
break_rbac_rule_added_by_render() {
  cat >>"$1/kustomization.yaml" <<'EOF'
patches:
  - target: {kind: ClusterRole, name: vpc-cni}
    patch: |-
      - op: add
        path: /rules/-
        value: {apiGroups: [""], resources: [secrets], verbs: [get]}
EOF
}
# A Component binds the ServiceAccount to another role: a grant the audit-log test never sees.
break_rbac_component_binds_other_role() {
  edit "$1/examples/warm-targets/kustomization.yaml" 'sub("patches:\n", "resources:\n  - binding.yaml\npatches:\n")' &&
    cat >"$1/examples/warm-targets/binding.yaml" <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: vpc-cni-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: vpc-cni
    namespace: kube-system
EOF
}
# The DaemonSet runs as a ServiceAccount that is neither rendered nor bound.
break_serviceaccount_unbound() { edit "$1/daemonset.yaml" 'sub("serviceAccountName: vpc-cni", "serviceAccountName: other")'; }
# checkov: a privileged container, and a skip without a reason.
break_checkov_findings() {
  edit "$1/daemonset.yaml" 'sub("            privileged: false\n", "            privileged: true\n")' &&
    edit "$1/daemonset.yaml" "sub(\"'CKV_K8S_15=\", \"'CKV_K8S_15' # \")"
}
# checkov itself dies partway, its JSON cut short: fake-checkov below.
break_checkov_crash() { :; }
# hadolint: `cd` in a RUN (DL3003).
break_hadolint() { edit "$1/Dockerfile" 'sub("WORKDIR /src\n", "WORKDIR /src\nRUN cd /src && true\n")'; }

cat >"$tmp/fake-checkov" <<'EOF'
#!/bin/sh
# A checkov that crashes after writing part of its JSON.
printf '[{"check_type": "kubernetes", "results": {"passed_checks": [{"check_id": "CKV_K8S_1"'
echo 'Traceback (most recent call last): RuntimeError: fake checkov crashed mid-run' >&2
exit 2
EOF
chmod +x "$tmp/fake-checkov"

t0=$SECONDS
renders='(base|custom-networking|prefix-delegation|warm-targets)'
run_case untouched ""
run_case render-base skip \
  "^render base: .*missing\.yaml" "^render $renders: " "^nothing else checked: the base did not render"
run_case render-component skip "^render warm-targets: .*missing\.yaml"
run_case validate-control skip \
  "^kubernetes-validate --strict did not refuse a DaemonSet's unknown field updateStrategyy \(negative control; status 0\)"
run_case daemonset-unknown-field skip \
  "^kubernetes-validate --strict [0-9.]+ $renders: 4 of 5 documents passed: .*'minReadySecond' was unexpected"
run_case crd-keeps-unknown-fields skip "^bad ENIConfig rejected: unknown field securityGroup: it PASSED the schema$"
run_case crd-not-structural skip "^ENIConfig CRD: .*uniqueItems is not allowed"
run_case example-unknown-field skip \
  "^example ENIConfig us-west-2a \(examples/eniconfigs/us-west-2a\.yaml\) matches the CRD schema: .*spec\.securityGroup: unknown field"
run_case schema-block-crash skip \
  "^schema checks exited with status 1: KeyError: 'served'" "^schema checks: 0 reported, [0-9]+ expected" \
  "^kubernetes-validate --strict [0-9.]+ $renders: 4 of 5 documents passed: .*served"
run_case rbac-rule-added-by-render skip \
  "^$renders: ClusterRole vpc-cni has exactly the rules of .*/rbac\.yaml, .*added \[\('', 'secrets', 'get'\)\], dropped \[\]"
run_case rbac-component-binds-other-role skip \
  "^warm-targets: ServiceAccount kube-system/vpc-cni is bound to ClusterRole vpc-cni and nothing else: vpc-cni; also bound: .*ClusterRoleBinding vpc-cni-admin -> ClusterRole cluster-admin"
run_case serviceaccount-unbound skip \
  "^$renders: the DaemonSet's serviceAccountName kube-system/other is a rendered ServiceAccount: rendered ServiceAccounts" \
  "^$renders: ServiceAccount kube-system/other is bound to ClusterRole vpc-cni and nothing else: no binding does"
run_case checkov-findings "" \
  "^checkov $renders: .*FAILED: CKV_K8S_16 on DaemonSet.*skipped WITHOUT a reason: CKV_K8S_15"
run_case checkov-crash "$tmp/fake-checkov" \
  "^checkov exited with status 2: .*fake checkov crashed mid-run" "^checkov's output is not JSON" \
  "^checkov reported on 0 of 4 rendered files"
run_case hadolint skip "^hadolint .*/Dockerfile: .*DL3003"

echo "manifests self-test: $cases_passed cases passed, $cases_failed failed ($((SECONDS - t0)) s)"
[ "$cases_failed" = 0 ]
