#!/usr/bin/env bash
# Runs every test against a real kube-apiserver + etcd and real registries, on a fresh Debian 12
# machine: installs the system packages, builds kube-apiserver/kubectl once into a cache, compiles
# the tests, starts one control plane for the whole run, runs `cargo test`, and stops the control
# plane (by its recorded PIDs) however the run ends. Extra arguments go to `cargo test`, e.g.
#   bash hack/test.sh --test crds
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }

if [ "${MPO_SKIP_INSTALL:-}" != 1 ]; then
  bash hack/install-deps.sh >/dev/null
fi
[ -n "${KUBEBUILDER_ASSETS:-}" ] || bash hack/k8s-bins.sh >/dev/null
# crane, for the CLI tests that compare kubectl-mpo with the module guide's crane recipes.
MPO_CRANE=${MPO_CRANE:-$(bash hack/crane.sh | tail -n 1)}
export MPO_CRANE
# cosign, for the signature tests that sign module images with the real tool.
MPO_COSIGN=${MPO_COSIGN:-$(bash hack/cosign.sh | tail -n 1)}
MPO_COSIGN_V3=${MPO_COSIGN_V3:-$(bash hack/cosign.sh v3.1.3 | tail -n 1)}
export MPO_COSIGN MPO_COSIGN_V3
# The operator image from the Dockerfile (podman, local base images), for tests/image.rs.
if [ -z "${MPO_IMAGE:-}" ]; then
  log "building the operator image (hack/image.sh; about 8 minutes the first time)"
  MPO_IMAGE=$(bash hack/image.sh | tail -n 1)
fi
export MPO_IMAGE

log "compiling the tests first, so that rustc does not compete with the control plane for the CPUs"
cargo test --locked --no-run "$@"

dir=$(mktemp -d "${TMPDIR:-/tmp}/mpo-control-plane.XXXXXX")
node_dir=
cleanup() {
  [ -z "$node_dir" ] || { bash hack/node.sh stop "$node_dir" || true; rm -rf "$node_dir"; }
  bash hack/control-plane.sh stop "$dir"; rm -rf "$dir"
}
trap cleanup EXIT
bash hack/control-plane.sh start "$dir" >/dev/null
# The node tier (tests/node.rs): a second control plane with one real node running deploy/ as
# pods. MPO_SKIP_NODE=1 leaves it out (its tests then skip, and fail under CI=true).
if [ "${MPO_SKIP_NODE:-}" != 1 ]; then
  node_dir=$(mktemp -d "${TMPDIR:-/tmp}/mpo-node.XXXXXX")
  log "starting the node tier (hack/node.sh; builds kubelet and friends once, about 2 minutes)"
  bash hack/node.sh start "$node_dir" >/dev/null
  export MPO_NODE_DIR=$node_dir
fi
# shellcheck disable=SC1091
. "$dir/env"
log "running cargo test against $KUBECONFIG"
cargo test --locked "$@"
