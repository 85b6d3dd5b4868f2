# syntax=docker/dockerfile:1
# One image recipe for every Python service of the uv workspace; the service is a build argument.
# Build from the repository root (the workspace and its single uv.lock are needed), for example:
#   docker build --build-arg PACKAGE=brokerlink-account-api --build-arg COMMAND=account-api \
#     --build-arg HEALTH_URL=http://127.0.0.1:8000/livez -t brokerlink/account-api:dev .
#   docker build --build-arg PACKAGE=brokerlink-simulators --build-arg COMMAND=schwab-api-sim \
#     --target simulators -t brokerlink/simulators:dev .
# docker-compose.yml lists the arguments of every image. The image holds the package's runtime
# dependencies only (`uv sync --no-dev`), compiled to bytecode, and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# uv comes from its own pinned image; nothing is downloaded at build time but the locked wheels.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS builder
ARG PACKAGE
COPY --from=uv /uv /uvx /usr/local/bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# 1) third-party dependencies only (cached while uv.lock and the manifests are unchanged)
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
# the dev-only kit: its manifest completes the workspace; its code never enters an image
COPY shared-dev/pyproject.toml shared-dev/pyproject.toml
COPY services/account-api/pyproject.toml services/account-api/pyproject.toml
COPY services/ib-connector/pyproject.toml services/ib-connector/pyproject.toml
COPY services/schwab-connector/pyproject.toml services/schwab-connector/pyproject.toml
COPY services/migrator/pyproject.toml services/migrator/pyproject.toml
COPY simulators/pyproject.toml simulators/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package "${PACKAGE}"
# 2) the workspace packages themselves, installed non-editable so the venv is self-contained
COPY shared shared
COPY services services
COPY simulators simulators
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "${PACKAGE}"

FROM ${PYTHON_IMAGE} AS runtime
ARG PACKAGE
ARG COMMAND
ARG HEALTH_URL=""
LABEL org.opencontainers.image.title="${PACKAGE}"
RUN groupadd --system --gid 10001 brokerlink \
    && useradd --system --uid 10001 --gid brokerlink --no-create-home --shell /usr/sbin/nologin brokerlink
COPY --from=builder --chown=10001:10001 /app/.venv /app/.venv
# the image's default command: the service's console script under one fixed name
RUN ln -s "/app/.venv/bin/${COMMAND}" /app/service
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BROKERLINK_HEALTH_URL=${HEALTH_URL}
WORKDIR /app
USER 10001:10001
# Liveness of a long-running service (HEALTH_URL); one-shot images leave it empty and pass.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('BROKERLINK_HEALTH_URL'); sys.exit(0 if not url or urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
CMD ["/app/service"]

# the simulators also need their demo scenarios (never part of a production image)
FROM runtime AS simulators
COPY --chown=10001:10001 simulators/scenarios /app/simulators/scenarios

# the default target: a production service image
FROM runtime AS service
