#!/usr/bin/env bash
# Builds the operator image from the Dockerfile with Debian's podman, on base images built
# locally from Debian packages (hack/base-images.sh), because public base images cannot be pulled
# here. Installs podman, buildah, mmdebstrap and runc when missing (as root). Prints the image
# name on its last line; its size goes to stderr.
#
# Podman settings this machine needs (passed as flags, no containers.conf is written):
#   --runtime runc            crun refuses the hybrid cgroup layout: "cgroups in hybrid mode not supported"
#   --cgroup-manager cgroupfs no systemd here
#   --ulimit nofile/nproc     (on `podman run`) the sandbox lacks CAP_SYS_RESOURCE: runc cannot raise rlimits
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[image] %s\n' "$*" >&2; }
IMAGE=${MPO_IMAGE:-localhost/mpo-operator:dev}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
  log "installing podman, buildah, mmdebstrap, runc"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    podman buildah mmdebstrap runc uidmap fuse-overlayfs slirp4netns >/dev/null
fi

bases=$(bash hack/base-images.sh)
runtime_base=$(sed -n 1p <<<"$bases")
build_base=$(sed -n 2p <<<"$bases")
[ -n "$build_base" ] && [ -n "$runtime_base" ] || { log "hack/base-images.sh printed no image names"; exit 1; }

started=$SECONDS
log "podman build $IMAGE (FROM $build_base, then $runtime_base; cargo build --release --locked)"
# The host's crate cache is lent to the build so that it need not download every crate again;
# --network=host lets cargo reach crates.io for anything missing.
podman --runtime runc --cgroup-manager cgroupfs build --network=host \
  --build-arg "BUILD_BASE=$build_base" --build-arg "RUNTIME_BASE=$runtime_base" \
  -v "$CARGO_HOME/registry:/usr/local/cargo/registry" \
  -t "$IMAGE" . >&2
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in $((SECONDS - started)) s: $((size / 1000 / 1000)) MB ($size bytes)"
echo "$IMAGE"
