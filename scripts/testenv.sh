#!/usr/bin/env bash
# Build the binaries of the real-Kubernetes test environment (envtest style) from the Go module
# proxy with this machine's Go toolchain, once, into a cache folder outside the repo:
#
#   ${THROTTLE_CACHE:-$HOME/.cache/throttle}/testenv/
#     k8s-<version>/{kube-apiserver,kubectl}
#     etcd-<version>/etcd
#     helm-<version>/helm
#     assets-k8s-<v>_etcd-<v>_helm-<v>/{kube-apiserver,kubectl,etcd,helm}   (symlinks)
#
# Only what is missing gets built; a warm run just checks files. The last line printed is
# `KUBEBUILDER_ASSETS=<folder>` (the assets folder), for `export` or for the pytest fixture.
# If KUBEBUILDER_ASSETS is already set and holds kube-apiserver, etcd and kubectl, nothing is built.
#
# Overrides: THROTTLE_K8S_VERSION, THROTTLE_ETCD_VERSION, THROTTLE_HELM_VERSION, THROTTLE_CACHE, GO.
set -euo pipefail

K8S_VERSION="${THROTTLE_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${THROTTLE_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${THROTTLE_HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${THROTTLE_CACHE:-$HOME/.cache/throttle}/testenv"

log() { printf '[testenv] %s\n' "$*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] \
    && [[ -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" && -x "$KUBEBUILDER_ASSETS/kubectl" ]]; then
    log "KUBEBUILDER_ASSETS is set and holds kube-apiserver, etcd and kubectl: nothing to build"
    [[ -x "$KUBEBUILDER_ASSETS/helm" ]] || log "note: no helm in $KUBEBUILDER_ASSETS (helm tests will look on PATH / TEST_ASSET_HELM)"
    echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    exit 0
fi

K8S_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
ASSETS_DIR="$CACHE_ROOT/assets-k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"

have_all() {
    [[ -x "$K8S_DIR/kube-apiserver" && -x "$K8S_DIR/kubectl" && -x "$ETCD_DIR/etcd" && -x "$HELM_DIR/helm" ]]
}

link_assets() {
    mkdir -p "$ASSETS_DIR"
    ln -sfn "$K8S_DIR/kube-apiserver" "$ASSETS_DIR/kube-apiserver"
    ln -sfn "$K8S_DIR/kubectl" "$ASSETS_DIR/kubectl"
    ln -sfn "$ETCD_DIR/etcd" "$ASSETS_DIR/etcd"
    ln -sfn "$HELM_DIR/helm" "$ASSETS_DIR/helm"
}

# Warm path: no Go, no lock, no network.
if have_all; then
    [[ -e "$ASSETS_DIR/helm" ]] || link_assets
    log "cached: kube-apiserver+kubectl $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION"
    echo "KUBEBUILDER_ASSETS=$ASSETS_DIR"
    exit 0
fi

# shellcheck source=scripts/go-build.sh
. "$(dirname "$0")/go-build.sh"
go_toolchain
go_lock "$CACHE_ROOT" .lock
log "using $("$GO" version); building in $WORK"

build_k8s() {
    [[ -x "$K8S_DIR/kube-apiserver" && -x "$K8S_DIR/kubectl" ]] && { log "cached: k8s $K8S_VERSION"; return; }
    local start=$SECONDS dir="$WORK/k8s"
    log "building kube-apiserver + kubectl $K8S_VERSION; a cold build takes many minutes"
    mkdir -p "$dir" && cd "$dir"
    k8s_module throttle.local/testenv/k8s "$K8S_VERSION"
    k8s_build "$K8S_VERSION" out kube-apiserver kubectl
    mkdir -p "$K8S_DIR"
    mv -f out/kube-apiserver out/kubectl "$K8S_DIR/"
    log "built k8s $K8S_VERSION in $((SECONDS - start))s → $K8S_DIR"
}

build_etcd() {
    [[ -x "$ETCD_DIR/etcd" ]] && { log "cached: etcd $ETCD_VERSION"; return; }
    local start=$SECONDS dir="$WORK/etcd"
    log "building etcd $ETCD_VERSION"
    mkdir -p "$dir" && cd "$dir"
    "$GO" mod init throttle.local/testenv/etcd >/dev/null 2>&1
    "$GO" get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    "$GO" mod tidy
    mkdir -p out
    "$GO" build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o out/etcd go.etcd.io/etcd/server/v3
    mkdir -p "$ETCD_DIR"
    mv -f out/etcd "$ETCD_DIR/etcd"
    log "built etcd $ETCD_VERSION in $((SECONDS - start))s → $ETCD_DIR"
}

build_helm() {
    [[ -x "$HELM_DIR/helm" ]] && { log "cached: helm $HELM_VERSION"; return; }
    local start=$SECONDS dir="$WORK/helm"
    log "building helm $HELM_VERSION"
    mkdir -p "$dir" && cd "$dir"
    "$GO" mod init throttle.local/testenv/helm >/dev/null 2>&1
    "$GO" get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    "$GO" mod tidy
    mkdir -p out
    local major="${HELM_VERSION#v}"; major="${major%%.*}"
    "$GO" build -trimpath -ldflags "-s -w -X helm.sh/helm/v$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/v$major/internal/version.gitTreeState=clean" -o out/helm "helm.sh/helm/v$major/cmd/helm"
    mkdir -p "$HELM_DIR"
    mv -f out/helm "$HELM_DIR/helm"
    log "built helm $HELM_VERSION in $((SECONDS - start))s → $HELM_DIR"
}

total_start=$SECONDS
build_etcd
build_helm
build_k8s
link_assets
log "done in $((SECONDS - total_start))s"
echo "KUBEBUILDER_ASSETS=$ASSETS_DIR"
