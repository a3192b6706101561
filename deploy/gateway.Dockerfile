# syntax=docker/dockerfile:1
# The gateway image: `docker run -p 127.0.0.1:8080:8080 -p 127.0.0.1:8500:8500 IMAGE` serves
# the demo model with the embedded config (deploy/container/gateway.toml); compose.yaml and
# deploy/kubernetes mount their own. Build from the repository root (.dockerignore keeps the
# context to what is copied below):
#   docker build -f deploy/gateway.Dockerfile -t inference-gateway:0.1.0 .
# The base is pinned by tag and by the digest of its multi-architecture index; bump both.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- builder: the package and its dependencies in a venv (every dependency ships wheels, so
# no compiler is needed). pip compiles the bytecode here: the runtime's root is read-only.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
COPY protos protos
RUN /opt/venv/bin/pip install /src

# --- runtime: the venv, the demo model and the default config; no build tools, no pip cache
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
# Owned by root and read-only to the gateway: the model repository and config are data the
# image ships, not state (mount a writable volume at /app/models to allow uploads).
COPY models /app/models
COPY policies /etc/gateway/policies
COPY deploy/container/gateway.toml /etc/gateway/gateway.toml
COPY deploy/container/healthcheck.py /app/healthcheck.py
WORKDIR /app
USER 10001:10001
EXPOSE 8080 8500
# Healthy = ready: models loaded (503 while they load, within the start period).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
STOPSIGNAL SIGTERM
CMD ["gateway", "serve", "--config", "/etc/gateway/gateway.toml"]
