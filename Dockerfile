# syntax=docker/dockerfile:1
# One image for every Throttle component; the command picks which one runs:
#   docker run IMAGE            -> throttle webhook (the default CMD)
#   docker run IMAGE dispatcher -> throttle dispatcher
#   docker run IMAGE operator   -> throttle operator
#   docker run IMAGE migrate    -> throttle migrate
# Build: docker build -t throttle:dev .   (docs/deploy.md has the details; `make image` too)
#
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (the chart sets them per component).
# The final image runs as uid 10001 and writes nothing outside /tmp, so it works with
# readOnlyRootFilesystem and an emptyDir on /tmp.

# The base of both stages: the official Python slim image by default. Any Debian-like image with
# Python 3.11 (`python`, venv) and groupadd/useradd will do, e.g. the one scripts/image-base.sh
# builds from Debian's packages where no registry is reachable:
#   --build-arg PYTHON_IMAGE=localhost/throttle-base:bookworm-py311-1
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the package as a wheel, installed with its dependencies into a virtualenv --------
FROM ${PYTHON_IMAGE} AS builder
# PIP_CERT: a CA bundle in the base image for pip to trust instead of its own, behind a proxy
# that intercepts TLS (scripts/image.sh passes the base's system bundle when it built that base).
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/throttle
# The dependencies first, the locked ones, each checked against its hash (requirements.lock,
# made by `make lock` from pyproject.toml): a rebuild gets the same packages, a tampered one
# fails, and the layer survives every code change. Every dependency (aiohttp, asyncpg,
# cryptography, hiredis, ...) ships manylinux wheels, so the builder needs no compiler.
COPY requirements.lock ./
RUN /opt/throttle/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY throttle ./throttle
# The wheel is built first so the image holds exactly what a release holds.
RUN /opt/throttle/bin/pip install --no-cache-dir "setuptools>=68" "wheel>=0.42" \
    && /opt/throttle/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /wheels . \
    && /opt/throttle/bin/pip install --no-cache-dir --no-deps /wheels/throttle-*.whl \
    && /opt/throttle/bin/pip check \
    && /opt/throttle/bin/pip uninstall --yes setuptools wheel \
    && /opt/throttle/bin/python -m compileall -q /opt/throttle/lib \
    && /opt/throttle/bin/throttle --version

# ---- final: slim runtime, non-root, nothing to write but /tmp ------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="throttle" \
      org.opencontainers.image.description="HubSpot workflow action that throttles workflow executions" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME points at the one writable place, for any library that caches under ~.
ENV PATH=/opt/throttle/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 throttle \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin throttle
COPY --from=builder /opt/throttle /opt/throttle
# An empty working folder: settings may come from a mounted /app/.env, never from the image.
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["throttle"]
CMD ["webhook"]
