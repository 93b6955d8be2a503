#!/usr/bin/env bash
# Builds the images the chart's development profile (deploy/helm/throttle/values-dev.yaml) runs and
# saves each as an image archive, for `ctr -n k8s.io images import ARCHIVE` on a node or
# `kind load image-archive ARCHIVE`; no registry is involved:
#   throttle   localhost/throttle:dev             the runtime image (Dockerfile; no devtools)
#   simulator  localhost/throttle-simulator:dev   the HubSpot simulator (deploy/images/simulator)
#   redis      localhost/throttle-redis:dev       Redis with the AOF on (deploy/images/redis)
#   postgres   localhost/throttle-postgres:dev    PostgreSQL 15 (deploy/images/postgres)
# Usage: scripts/images.sh [NAME...]   (no NAME: all four; `make images`)
# Prints NAME=ARCHIVE lines on stdout, what it does on stderr.
#
# The archives are cached in ~/.cache/throttle/image/oci/NAME-KEY.tar, KEY a hash of the files
# that define the image (its Containerfile and context, the package's sources for throttle and
# simulator) and of the engine and base: an unchanged image is not rebuilt (FORCE=1 rebuilds).
#   ENGINE=podman  (the default when no docker daemon answers) Debian's packages only: the base is
#                  the Debian root scripts/image-base.sh makes with mmdebstrap, the archives are
#                  OCI archives (podman save --format oci-archive).
#   ENGINE=docker  the registry's bases (python:3.11-slim, debian:bookworm-slim), docker-save
#                  archives; what `make kind` uses.
# Cold build times on the 2-core CI machine (podman, base already cached): docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${THROTTLE_CACHE:-$HOME/.cache/throttle}/image/oci"
TAG=dev
ALL=(throttle simulator redis postgres)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")

engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
build_args=()
case "$engine" in
  podman)
    command -v podman >/dev/null 2>&1 || { echo "images: podman missing: run \`make deps\`" >&2; exit 1; }
    source scripts/podman-env.sh
    base="$(bash scripts/image-base.sh)"
    build_args+=(--network host --build-arg "DEBIAN_IMAGE=$base")
    image_base=debian
    save() { podman save --quiet --format oci-archive -o "$2" "$1"; }
    ;;
  docker)
    base=registry
    image_base=official
    save() { docker save -o "$2" "$1"; }
    ;;
  *) echo "images: ENGINE is podman or docker, not '$engine'" >&2; exit 1 ;;
esac

# key FILE_OR_DIR...: 12 hex digits naming the content of these files, the engine and the base.
key() {
  {
    echo "$engine $base"
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-12
}

elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

mkdir -p "$CACHE"
for name in "${names[@]}"; do
  ref="localhost/throttle-$name:$TAG"
  case "$name" in
    throttle)
      ref="localhost/throttle:$TAG"
      k="$(key Dockerfile pyproject.toml requirements.lock README.md throttle)"
      what="the runtime image from the Dockerfile"
      ;;
    simulator)
      k="$(key Dockerfile pyproject.toml requirements.lock README.md throttle devtools/throttle_dev deploy/images/simulator)"
      what="the HubSpot simulator on the runtime image"
      ;;
    redis) k="$(key deploy/images/redis)"; what="Redis with the AOF, from Debian's redis-server" ;;
    postgres) k="$(key deploy/images/postgres)"; what="PostgreSQL 15 from Debian's packages" ;;
    *) echo "images: no image '$name' (one of: ${ALL[*]})" >&2; exit 1 ;;
  esac
  archive="$CACHE/$name-$k.tar"
  if [ -s "$archive" ] && [ -z "${FORCE:-}" ]; then
    echo "images: $name: cached ($archive)" >&2
    echo "$name=$archive"
    continue
  fi
  start=$(date +%s)
  echo "images: $name: building $ref, $what (engine $engine)" >&2
  case "$name" in
    throttle)
      IMAGE="$ref" IMAGE_BASE="$image_base" ENGINE="$engine" bash scripts/image.sh >/dev/null
      ;;
    simulator)
      IMAGE="localhost/throttle:$TAG" IMAGE_BASE="$image_base" ENGINE="$engine" bash scripts/image.sh >/dev/null
      "$engine" build --quiet --build-arg "THROTTLE_IMAGE=localhost/throttle:$TAG" \
        -f deploy/images/simulator/Containerfile -t "$ref" devtools >&2
      ;;
    *)
      "$engine" build --quiet "${build_args[@]}" -t "$ref" "deploy/images/$name" >&2
      ;;
  esac
  echo "images: $name: built in $(elapsed "$start"); saving $archive" >&2
  save "$ref" "$archive.part"
  mv -f "$archive.part" "$archive"
  # Older archives of the same image only take space.
  find "$CACHE" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$k.tar" -delete
  echo "$name=$archive"
done
