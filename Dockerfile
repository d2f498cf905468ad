# One image with the three binaries; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/command-api /src/target/release/projector /src/target/release/query-api /usr/local/bin/
