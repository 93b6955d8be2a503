# syntax=docker/dockerfile:1
# One image for every Throttle component; the command picks which one runs:
#   docker run IMAGE            -> throttle webhook (the default CMD)
#   docker run IMAGE dispatcher -> throttle dispatcher
#   docker run IMAGE operator   -> throttle operator
#   docker run IMAGE migrate    -> throttle migrate
# Build: docker build -t throttle:dev .   (docs/deploy.md has the details)
#
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (the chart sets them per component).
# The final image runs as uid 10001 and writes nothing outside /tmp, so it works with
# readOnlyRootFilesystem and an emptyDir on /tmp.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the package as a wheel, installed with its dependencies into a virtualenv --------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/throttle
COPY requirements.lock pyproject.toml README.md ./
COPY throttle ./throttle
# The dependencies are the locked ones, each checked against its hash (requirements.lock, made by
# `make lock` from pyproject.toml): a rebuild gets the same packages, and a tampered one fails.
# Every dependency (aiohttp, asyncpg, cryptography, hiredis, ...) ships manylinux wheels, so the
# builder needs no compiler. The wheel is built first so the image holds exactly what a release holds.
RUN /opt/throttle/bin/pip install --no-cache-dir --require-hashes -r requirements.lock \
    && /opt/throttle/bin/pip install --no-cache-dir "setuptools>=68" "wheel>=0.42" \
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
