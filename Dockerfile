# syntax=docker/dockerfile:1
# The credit-sidecar image: docker build -t credit-sidecar:0.1.0 .
# Built on Debian bookworm and run on distroless cc-debian12 (the same glibc, plus libgcc; no
# shell) as the distroless "nonroot" user 65532, which the Helm chart's securityContext expects.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# BuildKit cache mounts keep downloaded crates and target/ between builds; the binary is copied
# out of the cached target/ in the same step. protoc is not needed (build.rs uses protox) and
# SQLite is compiled in.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin credit-sidecar \
 && cp target/release/credit-sidecar /usr/local/bin/credit-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/credit-sidecar /credit-sidecar
# The one directory user 65532 may write in this image: run outside Kubernetes, the default
# ledger sqlite://credit-sidecar.db lands here (the chart points it at an emptyDir instead).
WORKDIR /home/nonroot
USER 65532:65532
# gRPC, and HTTP /metrics, /livez, /readyz. Both listen on 127.0.0.1 unless told otherwise, and
# gRPC on another address needs a tokens file (or auth_disabled), e.g.
#   docker run -p 50051:50051 -p 9464:9464 -v "$PWD/tokens.toml:/tokens.toml:ro" \
#     credit-sidecar:0.1.0 serve --listen 0.0.0.0:50051 --metrics-listen 0.0.0.0:9464 \
#     --auth-tokens-file /tokens.toml
EXPOSE 50051 9464
ENTRYPOINT ["/credit-sidecar"]
