# Builds both binaries; the same image runs `billing-api` or `billing-worker`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p api -p worker --bins \
    && cp target/release/billing-api target/release/billing-worker /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/billing-api /usr/local/bin/billing-api
COPY --from=build /usr/local/bin/billing-worker /usr/local/bin/billing-worker
USER nobody
EXPOSE 8080 8081
CMD ["/usr/local/bin/billing-api"]
