#!/usr/bin/env bash
# The chaos soak (benches/soak.rs): 2 replicas with leader election, N MPOs on 2 sources, tags
# moving, faults that last and overlap; then the invariants. A benchmark, not a CI test: it runs
# on a control plane of its own (the soak restarts the apiserver), with the release build.
#   MPO_SOAK_SECONDS=600 MPO_SOAK_N=200 bash hack/soak.sh      # the full run (about 14 minutes)
#   MPO_SOAK_SECONDS=150 MPO_SOAK_N=60 bash hack/soak.sh       # a short one (compressed schedule)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[soak] %s\n' "$*" >&2; }
[ "${MPO_SKIP_INSTALL:-}" = 1 ] || bash hack/install-deps.sh >/dev/null
[ -n "${KUBEBUILDER_ASSETS:-}" ] || bash hack/k8s-bins.sh >/dev/null
log "building the soak and the operator (release profile)"
cargo bench --locked --bench soak --no-run
dir=$(mktemp -d "${TMPDIR:-/tmp}/mpo-soak-control-plane.XXXXXX")
trap 'bash hack/control-plane.sh stop "$dir"; rm -rf "$dir"' EXIT
bash hack/control-plane.sh start "$dir" >/dev/null
# shellcheck disable=SC1091
. "$dir/env"
cargo bench --locked --bench soak
