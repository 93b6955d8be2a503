# shellcheck shell=bash
# Sourced by the scripts that build Go tools from the Go module proxy into a cache folder outside
# the repo (testenv.sh, node-build.sh, promtool.sh): finding the toolchain, one builder per cache
# folder, a scratch folder removed on exit, and the recipe for a `k8s.io/kubernetes` command.
# The caller defines `log`.

# go_toolchain: set GO to this machine's Go (GO=/path/to/go overrides) and build static binaries
# with exactly that toolchain (no toolchain download). GOPATH, GOMODCACHE and GOCACHE keep their
# defaults (~/go, ~/.cache/go-build) so later builds are warm.
go_toolchain() {
    GO="${GO:-$(command -v go || true)}"
    [[ -n "$GO" ]] || GO=/usr/local/go/bin/go
    [[ -x "$GO" ]] || { log "no Go toolchain found (set GO=/path/to/go)"; exit 1; }
    export GOTOOLCHAIN=local CGO_ENABLED=0
}

# go_lock DIR LOCKNAME: wait until no other build (parallel pytest workers, two terminals) holds
# DIR/LOCKNAME, then set WORK to a scratch folder in DIR that is removed when the script exits.
go_lock() {
    mkdir -p "$1"
    exec 9>"$1/$2"
    if ! flock -n 9; then
        log "another build holds $1/$2; waiting for it"
        flock 9
    fi
    WORK="$(mktemp -d "$1/.build-XXXXXX")"
    # shellcheck disable=SC2064  # expand WORK now: the trap outlives this function's locals
    trap "rm -rf '$WORK'" EXIT
}

# k8s_module MODULE VERSION: make the current folder a Go module that can build commands of
# k8s.io/kubernetes at VERSION (vMAJOR.MINOR.PATCH). Its go.mod replaces the staging modules
# (k8s.io/api, k8s.io/client-go, ...) with local folders, which a dependent module does not
# inherit: pin each one to its published tag, v0.MINOR.PATCH. Sets K8S_MINOR and K8S_PATCH.
k8s_module() {
    local module="$1" version="$2" gomod staging m args=()
    IFS=. read -r _ K8S_MINOR K8S_PATCH <<<"${version#v}"
    "$GO" mod init "$module" >/dev/null 2>&1
    gomod="$("$GO" list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$version")"
    staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")"
    [[ -n "$staging" ]] || { log "found no staging replaces in $gomod"; exit 1; }
    for m in $staging; do args+=("-replace=$m=$m@v0.$K8S_MINOR.$K8S_PATCH"); done
    "$GO" mod edit "${args[@]}"
    log "pinned $(wc -w <<<"$staging") staging modules to v0.$K8S_MINOR.$K8S_PATCH"
}

# k8s_build VERSION OUT COMMAND...: `go build` these k8s.io/kubernetes commands into OUT, stamped
# with VERSION the way the release builds stamp it (`kubectl version` and the API server report it).
k8s_build() {
    local version="$1" out="$2" c pkgs=()
    shift 2
    for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    "$GO" get -tool "${pkgs[@]/%/@$version}"
    "$GO" mod tidy
    log "compiling $*"
    mkdir -p "$out"
    "$GO" build -trimpath -o "$out/" -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=$version \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$K8S_MINOR \
        -X k8s.io/component-base/version.gitTreeState=clean" "${pkgs[@]}"
}
