#!/usr/bin/env bash
# The scale benchmark (benches/scale.rs): N ModulePullOverrides on one ModuleSource against a real
# kube-apiserver + etcd and a real registry, the operator built with the release profile. Starts
# the control plane like hack/test.sh, runs `cargo bench --bench scale`, stops it however it ends.
#   MPO_BENCH_SCALE_N=100,1000,3000 MPO_BENCH_IDLE_SECONDS=60 bash hack/bench-scale.sh
# The same for another benchmark on a control plane, e.g. benches/push.rs:
#   MPO_BENCH_PUSH_IDLE=0,1000 MPO_BENCH_PUSHES=50,10 bash hack/bench-scale.sh push
# Beside Flux source-controller v1.8.5 (built by hack/flux.sh), the same images and apiserver:
#   MPO_BENCH_FLUX=1 MPO_BENCH_SCALE_N=1000,3000 bash hack/bench-scale.sh
# With every image signed and a signature policy on the source (cosign built and cached):
#   MPO_BENCH_POLICY=cosign-v2 MPO_BENCH_SCALE_N=100 bash hack/bench-scale.sh
set -euo pipefail
bench=${1:-scale}
cd "$(dirname "$0")/.."
log() { printf '[bench-%s] %s\n' "$bench" "$*" >&2; }
[ "${MPO_SKIP_INSTALL:-}" = 1 ] || bash hack/install-deps.sh >/dev/null
[ -n "${KUBEBUILDER_ASSETS:-}" ] || bash hack/k8s-bins.sh >/dev/null
case "${MPO_BENCH_POLICY:-none}" in
  cosign-v2) MPO_COSIGN=${MPO_COSIGN:-$(bash hack/cosign.sh | tail -n 1)}; export MPO_COSIGN ;;
  cosign-v3) MPO_COSIGN_V3=${MPO_COSIGN_V3:-$(bash hack/cosign.sh v3.1.3 | tail -n 1)}; export MPO_COSIGN_V3 ;;
esac
if [ "${MPO_BENCH_FLUX:-}" = 1 ]; then
  flux=$(bash hack/flux.sh)
  MPO_FLUX_BIN=$(sed -n 1p <<<"$flux") MPO_FLUX_CRDS=$(sed -n 2p <<<"$flux")
  export MPO_FLUX_BIN MPO_FLUX_CRDS
fi
log "building the benchmark and the operator (release profile)"
cargo bench --locked --bench "$bench" --no-run
dir=$(mktemp -d "${TMPDIR:-/tmp}/mpo-control-plane.XXXXXX")
trap 'bash hack/control-plane.sh stop "$dir"; rm -rf "$dir"' EXIT
bash hack/control-plane.sh start "$dir" >/dev/null
# shellcheck disable=SC1091
. "$dir/env"
# The benchmark reads the CPU time of etcd and kube-apiserver from the PIDs recorded there.
export MPO_CONTROL_PLANE_DIR=$dir
cargo bench --locked --bench "$bench"
