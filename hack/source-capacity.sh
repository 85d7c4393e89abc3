#!/usr/bin/env bash
# How many modules one ModuleSource status can hold on this control plane (issue 22): bisects the
# module count for which the scan's server-side apply of the names (field manager
# mpo-operator-scan), and then the flags writer's apply of `overridden: true` on every one of them
# (mpo-operator-flags), are both accepted. etcd's default request limit (1.5 MiB) is what refuses
# them; the answer depends on the length of the names.
#   KUBECONFIG=… bash hack/source-capacity.sh [NAME_LENGTH …]     (default: 20 64 128)
# Needs a control plane with crds/ applied (hack/control-plane.sh start DIR, then `. DIR/env`).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[capacity] %s\n' "$*" >&2; }
kubectl apply --server-side -k crds/ >/dev/null
source=capacity-probe
trap 'kubectl delete ms "$source" --wait=false >/dev/null 2>&1 || true' EXIT

# The apply body for COUNT names of LENGTH characters; FLAGS=1 adds `overridden: true`.
body() {
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
count, length, flags = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
def name(i):
    stem = f"m{i:06d}"
    return stem + "x" * (length - len(stem))
entry = (lambda i: {"name": name(i), "overridden": True}) if flags else (lambda i: {"name": name(i)})
status = {"modules": [entry(i) for i in range(count)]}
if not flags:
    status["modulesCount"] = count
print(json.dumps({"apiVersion": "deckhouse.io/v1alpha1", "kind": "ModuleSource",
                  "metadata": {"name": "capacity-probe"}, "status": status}))
EOF
}

# Whether a fresh source takes COUNT names of LENGTH (and, with FLAGS=1, the flags on top).
fits() {
  local count=$1 length=$2 flags=$3
  kubectl delete ms "$source" --ignore-not-found --wait=true >/dev/null
  printf 'apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata: {name: %s}\nspec: {registry: {repo: 127.0.0.1:1/probe}}\n' "$source" |
    kubectl apply -f - >/dev/null
  body "$count" "$length" 0 | kubectl apply --server-side --force-conflicts --subresource=status \
    --field-manager=mpo-operator-scan -f - >/dev/null 2>&1 || return 1
  [ "$flags" = 1 ] || return 0
  body "$count" "$length" 1 | kubectl apply --server-side --force-conflicts --subresource=status \
    --field-manager=mpo-operator-flags -f - >/dev/null 2>&1
}

bisect() {
  local length=$1 flags=$2 low=1 high=100000 mid
  while [ $((high - low)) -gt 25 ]; do
    mid=$(((low + high) / 2))
    if fits "$mid" "$length" "$flags"; then low=$mid; else high=$mid; fi
  done
  echo "$low"
}

printf '%-12s %-22s %-22s\n' "name length" "names only (scan)" "names + flags"
for length in "${@:-20 64 128}"; do
  for l in $length; do
    log "name length $l: bisecting"
    printf '%-12s %-22s %-22s\n' "$l" "$(bisect "$l" 0)" "$(bisect "$l" 1)"
  done
done
