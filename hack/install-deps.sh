#!/usr/bin/env bash
# Installs the system packages the tests and the demo need on a fresh Debian 12 machine (as root),
# and unpacks etcd 3.5 from Debian trixie into the per-user cache (bookworm's etcd 3.4 is too old
# for kube-apiserver 1.36). Safe to run again: it skips what is already there.
set -euo pipefail
log() { printf '[install-deps] %s\n' "$*" >&2; }
CACHE=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# trixie is only a source for etcd-server: pinned low so that nothing else is taken from it.
if ! grep -rqs trixie /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding Debian trixie as a low-priority source (for etcd-server 3.5 only)"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    $SUDO tee /etc/apt/sources.list.d/mpo-trixie.sources >/dev/null
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' | $SUDO tee /etc/apt/preferences.d/mpo-trixie >/dev/null
fi

log "apt-get update"
$SUDO apt-get update -qq
# skopeo and GNU time: reference runs and peak RSS of `cargo bench --bench pull_unpack`.
# podman, buildah and zstd: the compatibility matrix (tests/compat.rs) builds and pushes with them.
pkgs=(docker-registry apache2-utils openssl curl ca-certificates python3 procps skopeo time
  podman buildah runc uidmap fuse-overlayfs slirp4netns zstd)
log "apt-get install ${pkgs[*]}"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

ETCD_DIR=$CACHE/etcd
if [ ! -x "$ETCD_DIR/root/usr/bin/etcd" ]; then
  log "downloading etcd-server from trixie (unpacked into $ETCD_DIR, not installed as a service)"
  mkdir -p "$ETCD_DIR" && cd "$ETCD_DIR"
  apt-get download -qq etcd-server/trixie
  dpkg -x etcd-server_*.deb root
fi
# sed reads all of it: `head -1` exits early, and etcd's SIGPIPE (141) fails the script under pipefail.
"$ETCD_DIR/root/usr/bin/etcd" --version | sed -n 1p >&2
echo "$ETCD_DIR/root/usr/bin"
