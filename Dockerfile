# netsy's container image: `make image` (or `docker build -t netsy .`).
# Build stage: the Rust toolchain; the protos compile with protox (no protoc needed).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY proto proto
COPY src src
# The workspace's other members (never shipped): cargo reads their manifests.
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
COPY testkit testkit
RUN cargo build --release --locked --bin netsy && strip target/release/netsy

# Run stage: glibc and nothing else, as the non-root user 65532 (the chart's runAsUser).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/netsy /usr/bin/netsy
USER 65532:65532
EXPOSE 2378 2381 8080 8443
ENTRYPOINT ["/usr/bin/netsy"]
CMD ["serve", "--config", "/etc/netsy/config/config.jsonc"]
