# Images of projstore (issue #8). Build from the repository root:
#   docker build --target controller -t projstore-controller .
#   docker build --target agent      -t projstore-agent .
# (No container engine runs on the development machines; CI does not build these.)

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The controller is static (musl) for a distroless base; the agent links glibc like its tools.
RUN cargo build --release --locked -p projstore-controller --target x86_64-unknown-linux-musl \
    && cargo build --release --locked -p projstore-agent

# Controller: static binary, no shell, non-root.
FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/projstore-controller /projstore-controller
USER 65532:65532
ENTRYPOINT ["/projstore-controller"]

# Agent: Debian slim with the ZFS userland, sshfs, bindfs and the sftp server it runs.
FROM debian:bookworm-slim AS agent
RUN sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/debian.sources \
    && apt-get update \
    && apt-get install -y --no-install-recommends zfsutils-linux sshfs bindfs fuse3 \
       openssh-server openssh-client ca-certificates util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd \
    && sed -i 's/^#user_allow_other/user_allow_other/' /etc/fuse.conf
COPY --from=build /src/target/release/projstore-agent /usr/local/bin/projstore-agent
ENTRYPOINT ["/usr/local/bin/projstore-agent"]
