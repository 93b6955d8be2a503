#!/usr/bin/env bash
# Builds the Throttle image with whichever engine is here: docker (when its daemon answers), else
# podman. Prints the image's tag last.
#   IMAGE=throttle:dev          the tag
#   ENGINE=docker|podman        the engine, instead of the first one found
#   IMAGE_BASE=official         the Dockerfile's default base, the official Python slim image
#   IMAGE_BASE=debian           a base made here from Debian's packages (scripts/image-base.sh,
#                               podman only): for machines that reach no image registry
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-throttle:dev}"
IMAGE_BASE="${IMAGE_BASE:-official}"
args=()
engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  else
    echo "image: neither a docker daemon nor podman here: run \`make deps\` (installs podman)" >&2
    exit 1
  fi
fi
if [ "$engine" = podman ]; then
  command -v podman >/dev/null 2>&1 || { echo "image: podman missing: run \`make deps\`" >&2; exit 1; }
  source scripts/podman-env.sh
  args+=(--network host)   # the builder's pip reaches PyPI as this machine does
fi
case "$IMAGE_BASE" in
  official) ;;
  debian)
    [ "$engine" = podman ] || { echo "image: IMAGE_BASE=debian needs podman" >&2; exit 1; }
    base="$(bash scripts/image-base.sh)"
    args+=(--build-arg "PYTHON_IMAGE=$base" --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    ;;
  *) echo "image: IMAGE_BASE is official or debian, not '$IMAGE_BASE'" >&2; exit 1 ;;
esac
echo "image: building $IMAGE with $engine (base: $IMAGE_BASE)" >&2
"$engine" build --quiet "${args[@]}" -t "$IMAGE" . >&2
echo "$IMAGE"
