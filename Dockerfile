# syntax=docker/dockerfile:1.7
#
# One build for every service: the workspace is compiled once (dependencies in their
# own cached layer via cargo-chef), then each service gets a small non-root runtime
# image. Pick one with --target:
#
#   docker buildx build --target order -t localhost:5002/exchange/order:v1 .
#
# scripts/build-images builds and pushes all of them (and multi-arch with
# --platforms linux/amd64,linux/arm64; non-native platforms build under QEMU).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG CARGO_CHEF_VERSION=0.1.71

# --- toolchain + cargo-chef ------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# --- dependency recipe (changes only when Cargo.toml/Cargo.lock change) ----------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- build ------------------------------------------------------------------------
FROM chef AS builder
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until the recipe changes.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# Every binary in one cargo invocation, so shared crates compile once. Migrations are
# embedded (sqlx::migrate!) and protoc is vendored: nothing else is needed at runtime.
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for bin in gateway market-data order inventory user ingestor upbit-sim; do \
      cp "target/release/${bin}" /out/ ; \
    done

# --- runtime base: glibc + libgcc, no shell, uid 65532 ------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="exchange" \
      org.opencontainers.image.description="Upbit-compatible paper-trading exchange (one service per target)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# MIMALLOC_ARENA_EAGER_COMMIT=0: mimalloc's first arena committed lazily, so the
# kernel does not back it with huge pages (about 20 MB less memory per service).
ENV LOG_FORMAT=json MIMALLOC_ARENA_EAGER_COMMIT=0

# --- one small image per service (keep the names equal to the binaries) ------------
FROM runtime AS upbit-sim
COPY --from=builder /out/upbit-sim /usr/local/bin/upbit-sim
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/upbit-sim"]

FROM runtime AS ingestor
COPY --from=builder /out/ingestor /usr/local/bin/ingestor
EXPOSE 50055 9105
ENTRYPOINT ["/usr/local/bin/ingestor"]

FROM runtime AS market-data
COPY --from=builder /out/market-data /usr/local/bin/market-data
EXPOSE 50051 9101
ENTRYPOINT ["/usr/local/bin/market-data"]

FROM runtime AS inventory
COPY --from=builder /out/inventory /usr/local/bin/inventory
EXPOSE 50053 9103
ENTRYPOINT ["/usr/local/bin/inventory"]

FROM runtime AS user
COPY --from=builder /out/user /usr/local/bin/user
EXPOSE 50054 9104
ENTRYPOINT ["/usr/local/bin/user"]

FROM runtime AS order
COPY --from=builder /out/order /usr/local/bin/order
EXPOSE 50052 9102
ENTRYPOINT ["/usr/local/bin/order"]

# Last stage = default target.
FROM runtime AS gateway
COPY --from=builder /out/gateway /usr/local/bin/gateway
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/gateway"]
