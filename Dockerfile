# sidewatch: a static (musl) binary on distroless static, as a numeric non-root user.
# Build: docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/sidewatch:0.1.0 --push .

FROM rust:1.95-bookworm AS build
# musl-gcc builds ring's C parts for the static target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The build stage runs on the target platform (buildx with QEMU for arm64): pick its musl triple.
RUN target="$(uname -m)-unknown-linux-musl" \
    && rustup target add "$target" \
    && cargo build --release --locked --target "$target" \
    && cp "target/$target/release/sidewatch" /sidewatch

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="sidewatch" \
      org.opencontainers.image.description="Kubernetes sidecar that takes a pod out of rotation before its clients see 502s" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /sidewatch /sidewatch
# distroless's nonroot user, by number so runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
EXPOSE 9102
ENTRYPOINT ["/sidewatch"]
CMD ["run"]
