# syntax=docker/dockerfile:1
# x0tta6bl4 image: `x0tta6bl4 controller`, `x0tta6bl4 node`, `x0tta6bl4 check` in one image.
#
# Debian trixie's Python image ships OpenSSL 3.5, whose TLS stack has the post-quantum hybrid
# groups (X25519MLKEM768). The runtime stage holds only the virtualenv built in the first
# stage, runs as UID/GID 65532 and writes nowhere but /tmp and /var/lib/x0tta6bl4, which the
# Helm chart mounts as volumes, so the root filesystem can be read-only.
#
#   docker build -t x0tta6bl4/mesh:v0.1.0 .
#
# The native data plane (native/: Rust, PyO3) is built in the same stage with the Rust
# toolchain copied from the official rust image (cargo + rustc; ring needs a C compiler) and
# installed into the virtualenv as the `x0tta6bl4-native` distribution (an abi3 wheel built
# by maturin from PyPI); the runtime stage carries only the virtualenv, so no toolchain.
ARG PYTHON_IMAGE=python:3.13-slim-trixie
ARG RUST_IMAGE=rust:1-slim-trixie

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY native ./native
RUN python -m venv /opt/x0tta6bl4 \
 && /opt/x0tta6bl4/bin/pip install --upgrade pip \
 && /opt/x0tta6bl4/bin/pip install . ./native \
 && /opt/x0tta6bl4/bin/python -m compileall -q /opt/x0tta6bl4/lib \
 && /opt/x0tta6bl4/bin/x0tta6bl4 version \
 && /opt/x0tta6bl4/bin/python -c 'import x0tta6bl4_native'

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="x0tta6bl4" \
      org.opencontainers.image.description="Post-quantum, zero-trust, self-healing overlay mesh for Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/x0tta6bl4/x0tta6bl4" \
      org.opencontainers.image.base.name="docker.io/library/python:3.13-slim-trixie"
RUN groupadd --gid 65532 x0tta6bl4 \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /var/lib/x0tta6bl4 \
      --shell /usr/sbin/nologin x0tta6bl4 \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/x0tta6bl4
COPY --from=build /opt/x0tta6bl4 /opt/x0tta6bl4
ENV PATH=/opt/x0tta6bl4/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    X0_STATE_DIR=/var/lib/x0tta6bl4
VOLUME ["/var/lib/x0tta6bl4"]
WORKDIR /var/lib/x0tta6bl4
USER 65532:65532
EXPOSE 8080/tcp 7810/udp 7811/tcp
ENTRYPOINT ["x0tta6bl4"]
CMD ["--help"]
