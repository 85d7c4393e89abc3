# The operator image: a --locked release build, then a distroless runtime (glibc, CA bundle,
# non-root 65532, no shell).
#
#   docker build -t mpo-operator:0.1.0 .
#
# The base images are build arguments so that a machine without access to the public ones can
# pass local stand-ins: `bash hack/image.sh` builds them from Debian packages (mmdebstrap) and
# builds this file with podman, exactly as the tests run it.
ARG BUILD_BASE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_BASE} AS build
# aws-lc-sys (the TLS crypto provider) builds with cmake; the public rust image lacks it.
RUN command -v cmake >/dev/null || \
    (apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*)
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared targets must exist for cargo to read the manifest, even when only one binary is built.
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin mpo-operator && \
    cp target/release/mpo-operator /mpo-operator

FROM ${RUNTIME_BASE}
COPY --from=build /mpo-operator /usr/local/bin/mpo-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mpo-operator"]
CMD ["run"]
