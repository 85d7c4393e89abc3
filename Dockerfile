# Build: docker build -t mpo-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
# aws-lc-sys (the TLS crypto provider) builds with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin mpo-operator

# Minimal runtime: glibc and CA certificates, no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mpo-operator /usr/local/bin/mpo-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mpo-operator"]
CMD ["run"]
