#!/usr/bin/env bash
# Build promtool (Prometheus's rule checker) from the Go module proxy, once, into a cache folder
# outside the repo, for the chart's alert tests (`promtool check rules`):
#
#   ${THROTTLE_CACHE:-$HOME/.cache/throttle}/tools/promtool-<version>/promtool
#
# A warm run only checks the file. The last line printed is the binary's path. PROMTOOL set to an
# executable skips the build. Overrides: THROTTLE_PROMTOOL_VERSION (a Go module version of
# github.com/prometheus/prometheus: v0.315.1 is Prometheus v3.15.1), THROTTLE_CACHE, GO.
set -euo pipefail

VERSION="${THROTTLE_PROMTOOL_VERSION:-v0.315.1}"
TOOLS_ROOT="${THROTTLE_CACHE:-$HOME/.cache/throttle}/tools"
DIR="$TOOLS_ROOT/promtool-$VERSION"

log() { printf '[promtool] %s\n' "$*" >&2; }

if [[ -n "${PROMTOOL:-}" && -x "${PROMTOOL}" ]]; then
    log "PROMTOOL is set: nothing to build"
    echo "$PROMTOOL"
    exit 0
fi
if [[ -x "$DIR/promtool" ]]; then
    log "cached: promtool $VERSION"
    echo "$DIR/promtool"
    exit 0
fi

# shellcheck source=scripts/go-build.sh
. "$(dirname "$0")/go-build.sh"
go_toolchain
go_lock "$TOOLS_ROOT" .promtool.lock
if [[ -x "$DIR/promtool" ]]; then  # built by whoever held the lock
    echo "$DIR/promtool"
    exit 0
fi

log "building promtool $VERSION with $("$GO" version) (a cold build takes several minutes)"
# `go install pkg@version` refuses modules with replace directives (Prometheus has one), so build
# inside the downloaded module as the main module, with its own go.mod, go.sum and replaces.
SRC="$("$GO" mod download -json "github.com/prometheus/prometheus@$VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$SRC" ]] || { log "could not download github.com/prometheus/prometheus@$VERSION"; exit 1; }
# -p 1 keeps the build to one package at a time: the machine is shared with the test suite.
(cd "$SRC" && GOWORK=off "$GO" build -mod=readonly -p "${THROTTLE_GO_BUILD_JOBS:-1}" -trimpath \
    -ldflags="-s -w" -o "$WORK/promtool" ./cmd/promtool)
mkdir -p "$DIR"
mv "$WORK/promtool" "$DIR/promtool.tmp"
mv "$DIR/promtool.tmp" "$DIR/promtool"
"$DIR/promtool" --version >&2 || true
echo "$DIR/promtool"
