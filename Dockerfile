# sidewatch: one static binary and a CA bundle on an empty image, as a numeric non-root user.
# Build: docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/sidewatch:0.1.0 --push .
# Without a registry, scripts/image builds the final stage from a binary built on the host.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# glibc linked statically (crt-static): no libc in the image, and no extra toolchain to fetch.
# The build stage runs on the target platform (buildx with QEMU for arm64): pick its triple.
RUN target="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin sidewatch \
    && mkdir /out \
    && cp "target/$target/release/sidewatch" /out/sidewatch \
    && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM scratch AS final
LABEL org.opencontainers.image.title="sidewatch" \
      org.opencontainers.image.description="Kubernetes sidecar that takes a pod out of rotation before its clients see 502s" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# For probes of https:// and grpcs:// targets that trust the system's roots.
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/sidewatch /sidewatch
# By number, so runAsNonRoot can check it without /etc/passwd (distroless's nonroot uid).
USER 65532:65532
EXPOSE 9102
ENTRYPOINT ["/sidewatch"]
CMD ["run"]
