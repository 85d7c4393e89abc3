#!/usr/bin/env bash
# Builds kube-apiserver and kubectl from the k8s.io/kubernetes Go module, once per version,
# into a per-user cache. Prints the directory holding the binaries on its last line.
#
# Opt-in, for the real-node tier (hack/node.sh): `hack/k8s-bins.sh node` or MPO_K8S_NODE_BINS=1
# also builds kubelet, kube-controller-manager, kube-scheduler and kube-proxy into the same
# directory (warm Go cache on 2 cores: about 4 min in all), reusing the wrapper module when the
# server binaries are already there.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@v…` cannot work: that module's go.mod points every
# staging module (k8s.io/api, …) at ./staging with `replace`, which go install refuses. So we build
# from a throw-away wrapper module that replaces each staging module with its published v0.x.y.
set -euo pipefail

KV=${MPO_K8S_VERSION:-1.36.3}
SV=0.${KV#1.}
MINOR=$(echo "$KV" | cut -d. -f2)
CACHE=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}
OUT=$CACHE/k8s/v$KV
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off

NODE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
NODE=0
if [ "${1:-}" = node ] || [ "${MPO_K8S_NODE_BINS:-0}" = 1 ]; then NODE=1; fi

log() { printf '[k8s-bins] %s\n' "$*" >&2; }

have() { [ -x "$OUT/$1" ] && "$OUT/$1" --version 2>/dev/null | grep -q "v$KV"; }
have_node() { local b; for b in "${NODE_BINS[@]}"; do have "$b" || return 1; done; }
SERVER=1
if have kube-apiserver && [ -x "$OUT/kubectl" ]; then
  SERVER=0
  if [ "$NODE" = 0 ] || have_node; then
    echo "$OUT"
    exit 0
  fi
fi

command -v go >/dev/null || { log "go is not installed: it is needed to build kube-apiserver v$KV"; exit 1; }
mkdir -p "$OUT"
MOD=$CACHE/k8s/wrapper-v$KV
started=$(date +%s)
STEPS=4; [ "$NODE" = 0 ] || STEPS=$((4 + ${#NODE_BINS[@]}))

if [ "$SERVER" = 0 ] && grep -q "k8s.io/kubernetes v$KV" "$MOD/go.mod" 2>/dev/null; then
  # Node binaries only: the server binaries were built from this wrapper module already.
  cd "$MOD"
  log "kube-apiserver and kubectl v$KV are built; reusing the wrapper module $MOD"
else
rm -rf "$MOD" && mkdir -p "$MOD" && cd "$MOD"

log "step 1/$STEPS: resolving k8s.io/kubernetes@v$KV and its staging modules (v$SV) through the Go module proxy"
go mod init mpo-operator.local/k8sbins >/dev/null 2>&1
go mod edit -go=1.26
KMOD=$(go mod download -json "k8s.io/kubernetes@v$KV" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$KMOD" ] || { log "could not download k8s.io/kubernetes@v$KV"; exit 1; }
sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$KMOD" |
  while read -r m; do go mod edit "-replace=$m=$m@v$SV"; done
sed -n 's/^godebug \([^()]*\)$/\1/p' "$KMOD" | while read -r g; do go mod edit "-godebug=$g"; done
log "  $(grep -c '=> k8s.io' go.mod) staging modules replaced"
go get "k8s.io/kubernetes@v$KV" 2>&1 | grep -v '^go: downloading' >&2 || true

log "step 2/$STEPS: downloading dependency modules (about 1-2 GB on a cold cache)"
go mod download -x 2>&1 | grep -c '# get' >/dev/null || true
fi

LDF="-s -w -X k8s.io/component-base/version.gitVersion=v$KV -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"

# go build -v names each package as it compiles it; count them against the total to show progress.
build_with_progress() {
  local name=$1 pkg=$2 total n=0
  total=$(go list -deps "$pkg" | wc -l)
  log "compiling $name: up to $total packages (cached ones are skipped)"
  go build -v -trimpath -ldflags "$LDF" -o "$OUT/$name.tmp" "$pkg" 2>&1 | while read -r line; do
    n=$((n + 1))
    if [ $((n % 100)) -eq 0 ]; then log "  $name: $n/$total packages compiled ($(( $(date +%s) - started ))s elapsed)"; fi
    case "$line" in *error*|*cannot*|*undefined*) log "  $line" ;; esac
  done
  [ -x "$OUT/$name.tmp" ] || { log "building $name failed"; exit 1; }
  mv "$OUT/$name.tmp" "$OUT/$name"
}

if [ "$SERVER" = 1 ]; then
  log "step 3/$STEPS: building kube-apiserver v$KV (cold: 10-25 min on 2 cores)"
  build_with_progress kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
  log "step 4/$STEPS: building kubectl v$KV"
  build_with_progress kubectl k8s.io/kubernetes/cmd/kubectl
fi
if [ "$NODE" = 1 ]; then
  step=4
  for b in "${NODE_BINS[@]}"; do
    step=$((step + 1))
    if have "$b"; then log "step $step/$STEPS: $b v$KV already built"; continue; fi
    log "step $step/$STEPS: building $b v$KV"
    build_with_progress "$b" "k8s.io/kubernetes/cmd/$b"
  done
fi

"$OUT/kube-apiserver" --version >&2
log "done in $(( $(date +%s) - started ))s; binaries in $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
