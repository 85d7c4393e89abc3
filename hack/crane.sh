#!/usr/bin/env bash
# Builds crane (github.com/google/go-containerregistry/cmd/crane) once from the Go module proxy
# into the per-user cache: the CLI tests compare kubectl-mpo's answers with the crane recipes of
# the module-development guide. Prints the binary's path on its last line.
set -euo pipefail
V=${MPO_CRANE_VERSION:-v0.22.1}
CACHE=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}
OUT=$CACHE/crane/$V
if [ ! -x "$OUT/crane" ]; then
  command -v go >/dev/null || { echo "[crane] go is not installed: it is needed to build crane $V" >&2; exit 1; }
  echo "[crane] building crane $V from the Go module proxy into $OUT" >&2
  mkdir -p "$OUT"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$OUT" go install "github.com/google/go-containerregistry/cmd/crane@$V"
fi
echo "$OUT/crane"
