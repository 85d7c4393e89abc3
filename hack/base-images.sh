#!/usr/bin/env bash
# Builds local stand-ins for the Dockerfile's public base images from Debian bookworm packages
# (mmdebstrap) and imports them into podman's local storage, for machines that cannot pull
# rust:1.95-bookworm or gcr.io/distroless/cc-debian12:nonroot. Run as root. Safe to run again:
# an image that already exists is skipped (MPO_BASE_REBUILD=1 rebuilds both).
#
#   MPO_RUNTIME_BASE  (localhost/mpo-runtime-base:bookworm)  distroless/cc-like: glibc, libgcc_s,
#                     CA bundle, /etc/passwd with nonroot (65532), /tmp 1777, no shell, no dpkg/apt.
#   MPO_BUILD_BASE    (localhost/mpo-build-base:bookworm)    Debian minbase + gcc g++ make cmake
#                     libc6-dev pkg-config git curl ca-certificates, and the host's rustup toolchain
#                     (rustc, cargo, rust-std only) in /usr/local/rustup, CARGO_HOME=/usr/local/cargo.
#   MPO_DEBIAN_MIRROR / MPO_DEBIAN_SECURITY_MIRROR   default http://deb.debian.org/debian(-security)
#   MPO_RUST_TOOLCHAIN_DIR   toolchain to copy; default: the one `rustup which cargo` resolves to here.
#
# Prints the two image names on stdout; everything else goes to stderr.
set -euo pipefail
log() { printf '[base-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SUITE=bookworm
MIRROR=${MPO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${MPO_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECMIRROR $SUITE-security main")
NONROOT_UID=65532

# ---------------------------------------------------------------------------------------------
# mmdebstrap hooks (run on the host with the chroot directory as $2, before mmdebstrap
# cleans the apt lists, so `apt-get download` against the chroot's apt configuration works).
# ---------------------------------------------------------------------------------------------
runtime_customize() {
  local root=$1 tmp
  tmp=$(mktemp -d)
  # ca-certificates and base-files are not *installed* (that would drag in openssl, debconf,
  # perl-base and awk); only their payload is used: the Mozilla bundle and os-release.
  (cd "$tmp" && APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get download -qq \
    -o APT::Sandbox::User=root ca-certificates base-files)
  dpkg-deb -x "$tmp"/ca-certificates_*.deb "$tmp/ca"
  dpkg-deb -x "$tmp"/base-files_*.deb "$tmp/bf"
  mkdir -p "$root/etc/ssl/certs" "$root/usr/lib"
  # Same content and order as update-ca-certificates: every *.crt, sorted, newline-terminated.
  (cd "$tmp/ca/usr/share/ca-certificates" && find . -name '*.crt' -type f | LC_ALL=C sort |
    while read -r f; do sed -e '$a\' "$f"; done) > "$root/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt"
  cp "$tmp/bf/usr/lib/os-release" "$root/usr/lib/os-release"
  ln -sf ../usr/lib/os-release "$root/etc/os-release"
  cp "$tmp/bf/etc/debian_version" "$root/etc/debian_version"
  rm -rf "$tmp"
}

build_customize() {
  local root=$1 tc=$MPO_TC_SRC name=$MPO_TC_NAME dest c f
  dest=$root/usr/local/rustup/toolchains/$name
  mkdir -p "$dest" "$root/usr/local/cargo/bin"
  # Minimal profile only: the files listed in the rustc, cargo and rust-std component manifests,
  # without documentation.
  for c in rustc cargo rust-std; do
    f=$(ls "$tc"/lib/rustlib/manifest-"$c"-* 2>/dev/null | sed -n 1p)
    [ -n "$f" ] || die "toolchain $tc has no $c component"
    sed -n 's/^file://p' "$f"
  done | grep -v -E '^share/(doc|man)/' | LC_ALL=C sort -u | tar -C "$tc" -cf - -T - | tar -C "$dest" -xf -
  for f in "$dest"/bin/*; do ln -sf "../../rustup/toolchains/$name/bin/${f##*/}" "$root/usr/local/cargo/bin/${f##*/}"; done
  # Any user may populate CARGO_HOME (registry, git checkouts), as in the official rust image.
  chmod 1777 "$root/usr/local/cargo"
  chmod -R a+rX "$root/usr/local/rustup"
}

case "${1:-}" in
  --runtime-customize) runtime_customize "$2"; exit 0 ;;
  --build-customize) build_customize "$2"; exit 0 ;;
esac

# ---------------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap --mode=root and rootful podman storage)"
for t in mmdebstrap podman tar; do command -v "$t" >/dev/null || die "$t not found (apt-get install podman buildah mmdebstrap uidmap)"; done
RUNTIME=${MPO_RUNTIME_BASE:-localhost/mpo-runtime-base:bookworm}
BUILD=${MPO_BUILD_BASE:-localhost/mpo-build-base:bookworm}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mpo-base-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

need() { # need IMAGE -> 0 if it must be built
  if [ "${MPO_BASE_REBUILD:-0}" != 1 ] && podman image exists "$1"; then
    log "$1 already exists, skipping (MPO_BASE_REBUILD=1 to rebuild)"; return 1
  fi
}
mmdebstrap_() { # mmdebstrap with its log prefixed; stdout is unused with --format=directory
  mmdebstrap --mode=root --format=directory "$@" 2>&1 | sed -u 's/^/[base-images]   /' >&2
}
import_() { # import_ ROOTDIR IMAGE podman-import-args...: tar the tree (without /dev nodes)
  local dir=$1 image=$2; shift 2
  tar -C "$dir" --numeric-owner --xattrs --exclude='./dev/*' -cf - . |
    podman import "$@" - "$image" >&2
}
hook() { printf '%q %s "$1"' "$SELF" "$1"; }

# --- runtime base ----------------------------------------------------------------------------
if need "$RUNTIME"; then
  start=$SECONDS
  log "building $RUNTIME (mmdebstrap --variant=extract: libc6 libgcc-s1 netbase, no maintainer scripts)"
  r=$WORK/runtime
  # (the extract variant runs only --extract-hook; customize hooks are silently skipped)
  mmdebstrap_ --variant=extract --include=libc6,libgcc-s1,netbase \
    --extract-hook="$(hook --runtime-customize)" "$SUITE" "$r" "${SOURCES[@]}"
  log "pruning $r to the distroless set"
  # Nothing here may run dpkg or apt, and Rust binaries never use iconv, so gconv goes too.
  rm -rf "$r"/var "$r"/etc/apt "$r"/etc/dpkg "$r"/usr/share/doc "$r"/usr/share/man \
    "$r"/usr/share/info "$r"/usr/share/locale "$r"/usr/share/lintian "$r"/usr/lib/x86_64-linux-gnu/gconv \
    "$r"/etc/fstab "$r"/dev/*
  : > "$r/etc/resolv.conf"; : > "$r/etc/hostname"; chmod 0644 "$r/etc/resolv.conf" "$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$r/etc/hosts"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    $NONROOT_UID $NONROOT_UID > "$r/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:%s:\n' $NONROOT_UID > "$r/etc/group"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' > "$r/etc/nsswitch.conf"
  chmod 0644 "$r/etc/passwd" "$r/etc/group" "$r/etc/nsswitch.conf" "$r/etc/hosts"
  mkdir -p "$r/tmp" "$r/root" "$r/home/nonroot" "$r/var/tmp" "$r/usr/local/bin"
  chmod 1777 "$r/tmp" "$r/var/tmp"; chmod 0700 "$r/root" "$r/home/nonroot"
  chown $NONROOT_UID:$NONROOT_UID "$r/home/nonroot"
  # extract mode runs no maintainer scripts, so build the loader cache here (host glibc = bookworm's).
  ldconfig -r "$r"
  import_ "$r" "$RUNTIME" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "USER $NONROOT_UID:$NONROOT_UID" --change 'WORKDIR /home/nonroot' \
    --change 'LABEL org.opencontainers.image.description=local-distroless-cc-standin'
  rm -rf "$r"
  log "built $RUNTIME in $((SECONDS - start)) s"
fi

# --- build base ------------------------------------------------------------------------------
if need "$BUILD"; then
  start=$SECONDS
  if [ -n "${MPO_RUST_TOOLCHAIN_DIR:-}" ]; then
    tc=$MPO_RUST_TOOLCHAIN_DIR
  else
    command -v rustup >/dev/null || [ -x "$HOME/.cargo/bin/rustup" ] || die "no rustup; set MPO_RUST_TOOLCHAIN_DIR"
    tc=$(cd "$(dirname "$SELF")/.." && "$(command -v rustup || echo "$HOME/.cargo/bin/rustup")" which cargo)
    tc=$(dirname "$(dirname "$tc")")
  fi
  tc=$(readlink -f "$tc")
  [ -x "$tc/bin/rustc" ] && [ -x "$tc/bin/cargo" ] || die "$tc is not a rust toolchain (no bin/rustc, bin/cargo)"
  vv=$("$tc/bin/rustc" -vV)
  release=$(sed -n 's/^release: //p' <<<"$vv"); host=$(sed -n 's/^host: //p' <<<"$vv")
  export MPO_TC_SRC=$tc MPO_TC_NAME=$release-$host
  log "building $BUILD (mmdebstrap minbase + build tools; rust $release from $tc)"
  b=$WORK/build
  mmdebstrap_ --variant=minbase \
    --include=gcc,g++,make,cmake,libc6-dev,pkg-config,ca-certificates,git,curl \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook="$(hook --build-customize)" "$SUITE" "$b" "${SOURCES[@]}"
  : > "$b/etc/resolv.conf"; chmod 0644 "$b/etc/resolv.conf"
  import_ "$b" "$BUILD" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "ENV RUST_VERSION=$release" --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.description=local-rust-$release-bookworm-standin"
  rm -rf "$b"
  log "built $BUILD in $((SECONDS - start)) s"
fi

echo "$RUNTIME"
echo "$BUILD"
