# syntax=docker/dockerfile:1
# The ironclad-rls image: a static musl binary on distroless/static, running as uid 65532.
# Build from the repository root (no Docker engine is needed for anything else in the repo):
#   docker build -t ironclad-rls:0.1.0 .
# The result holds the binary, CA certificates (for rediss://), /etc/passwd's nonroot entry
# and nothing else: no shell, no package manager.

# Must equal rust-toolchain.toml's channel (checked below).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-alpine AS build
ARG RUST_VERSION
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
# Alpine's Rust targets musl, whose binaries are statically linked; ring needs a C compiler.
# Unpinned: Alpine drops old package versions from its mirrors, so a pin would break the build
# within weeks; the compiler does not end up in the image.
# hadolint ignore=DL3018
RUN apk add --no-cache gcc musl-dev
WORKDIR /src
COPY . .
RUN grep -q "channel = \"${RUST_VERSION}\"" rust-toolchain.toml \
    || { echo "RUST_VERSION ${RUST_VERSION} differs from rust-toolchain.toml" >&2; exit 1; }
# /links/bin/ratelimit: the same binary under envoyproxy/ratelimit's name, so a Deployment
# written for the reference (Envoy Gateway's runs `/bin/ratelimit`, configured by environment
# variables) works with only the image changed (docs/envoy-gateway.md). A symlink made here,
# as the final image has no shell, and copied as a directory so that it stays a link.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ironclad-rls \
    && if readelf -d target/release/ironclad-rls | grep -q NEEDED; then \
         echo "ironclad-rls is not statically linked" >&2; exit 1; \
       fi \
    && cp target/release/ironclad-rls /ironclad-rls \
    && mkdir -p /links/bin && ln -s /usr/local/bin/ironclad-rls /links/bin/ratelimit

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ironclad-rls /usr/local/bin/ironclad-rls
COPY --from=build /links/ /
# distroless's nonroot user, numeric so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# gRPC (RateLimitService, health, reflection) and admin HTTP (/healthz, /readyz, /healthcheck,
# /metrics).
EXPOSE 8081 8080
ENTRYPOINT ["/usr/local/bin/ironclad-rls"]
CMD ["serve", "--config", "/etc/ironclad-rls/limits"]
