#!/usr/bin/env bash
# Builds cosign once from the Go module proxy into the per-user cache: the signature tests sign
# module images with the real tool. Prints the binary's path on its last line.
#   bash hack/cosign.sh           # v2.6.5 (github.com/sigstore/cosign/v2): classic .sig signatures
#   bash hack/cosign.sh v3.1.3    # github.com/sigstore/cosign/v3: Sigstore bundles as referrers
# MPO_COSIGN_VERSION picks the version when no argument is given.
set -euo pipefail
V=${1:-${MPO_COSIGN_VERSION:-v2.6.5}}
MAJOR=${V%%.*}
CACHE=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}
OUT=$CACHE/cosign/$V
if [ ! -x "$OUT/cosign" ]; then
  command -v go >/dev/null || { echo "[cosign] go is not installed: it is needed to build cosign $V" >&2; exit 1; }
  echo "[cosign] building cosign $V from the Go module proxy into $OUT (a few minutes, once)" >&2
  mkdir -p "$OUT"
  # cosign v2.6 and v3 ask for a newer Go than Debian's; the go command fetches that toolchain.
  GOTOOLCHAIN=${GOTOOLCHAIN:-go1.27.3} CGO_ENABLED=0 GOBIN="$OUT" \
    go install "github.com/sigstore/cosign/$MAJOR/cmd/cosign@$V"
fi
echo "$OUT/cosign"
