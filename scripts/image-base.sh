#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made from Debian's packages (mmdebstrap) and
# imported into podman, for building the Throttle image where no image registry is reachable:
#   scripts/image-base.sh    -> prints the tag, e.g. localhost/throttle-base:bookworm-py311-1
# The root filesystem is cached under ~/.cache/throttle/image/ and the image is built once per
# BASE_VERSION: bump it when the package list below changes. The base trusts the build machine's
# extra CAs (/usr/local/share/ca-certificates), so pip works behind a TLS-intercepting proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_VERSION=1
TAG="localhost/throttle-base:bookworm-py311-${BASE_VERSION}"
CACHE="${THROTTLE_CACHE:-$HOME/.cache/throttle}/image"
ROOTFS="$CACHE/base-bookworm-py311-${BASE_VERSION}.tar"
source scripts/podman-env.sh

if podman image exists "$TAG"; then
  echo "$TAG"
  exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || { echo "image-base: mmdebstrap missing: run \`make deps\`" >&2; exit 1; }
mkdir -p "$CACHE"
if [ ! -s "$ROOTFS" ]; then
  echo "image-base: building a Debian root filesystem with Python (mmdebstrap, ~30 s)" >&2
  # minbase plus what the Dockerfile uses: python (venv, pip), groupadd/useradd, CA certificates.
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='for ca in /usr/local/share/ca-certificates/*.crt; do [ -e "$ca" ] && cp "$ca" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$ROOTFS.tmp" >&2
  mv "$ROOTFS.tmp" "$ROOTFS"
fi
echo "image-base: importing $ROOTFS as $TAG" >&2
podman import --quiet --change 'CMD ["python3"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' "$ROOTFS" "$TAG" >/dev/null
echo "$TAG"
