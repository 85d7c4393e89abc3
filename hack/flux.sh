#!/usr/bin/env bash
# Builds Flux source-controller v1.8.5 from the Go module proxy into the cache (once) for the
# scale benchmark's side-by-side runs (issue 22), and prints two lines: the binary and the CRD
# directory (config/crd/bases of the same module).
#   MPO_BENCH_FLUX=1 MPO_BENCH_SCALE_N=1000,3000 bash hack/bench-scale.sh
set -euo pipefail
version=v1.8.5
cache=${MPO_CACHE_DIR:-$HOME/.cache/mpo-operator}/flux/$version
log() { printf '[flux] %s\n' "$*" >&2; }
if [ ! -x "$cache/source-controller" ] || [ ! -d "$cache/crds" ]; then
  export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3}
  # The module has replace directives, so `go install module@version` refuses it: build in a copy.
  log "downloading github.com/fluxcd/source-controller@$version"
  dir=$(go mod download -json "github.com/fluxcd/source-controller@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$dir/." "$work/"
  # Its `replace …/api => ./api` names a nested module, which the module's zip leaves out.
  api=$(go mod download -json "github.com/fluxcd/source-controller/api@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  chmod -R u+w "$work"
  rm -rf "$work/api"
  cp -r "$api" "$work/api"
  chmod -R u+w "$work"
  # The module proxy here answers 403 "not available" for github.com/fluxcd/pkg/artifact v0.8.1,
  # which v1.8.5 requires; v0.8.0, the patch release before it, is served and builds.
  (cd "$work" && go mod edit -replace github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.8.0)
  log "building source-controller (several minutes on two cores)"
  mkdir -p "$cache"
  (cd "$work" && GOFLAGS=-mod=mod go build -o "$cache/source-controller.tmp" .)
  rm -rf "$cache/crds"
  cp -r "$work/config/crd/bases" "$cache/crds"
  mv "$cache/source-controller.tmp" "$cache/source-controller"
fi
echo "$cache/source-controller"
echo "$cache/crds"
