#!/usr/bin/env bash
# Build what the real node of the tests (tests/fixtures/kube_node.py) runs beside the test
# kube-apiserver and etcd (scripts/testenv.sh), from the Go module proxy with this machine's Go
# toolchain, once, into a cache folder outside the repo keyed by version:
#
#   ${THROTTLE_CACHE:-$HOME/.cache/throttle}/node/
#     k8s-<version>/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy}
#     coredns-<version>/coredns          (only the plugins a test cluster's DNS needs)
#     images/pause-3.10.oci.tar          (a static Go `pause`, FROM scratch)
#     images/coredns-<version>.oci.tar   (the coredns binary, FROM scratch)
#     images/netcheck-1.oci.tar          (the node test's TCP server and Service-name client)
#
# Only what is missing gets built; a warm run just checks files. The images are built with podman
# (no registry is reachable) and saved as OCI archives that the fixture imports into containerd.
# Cold build minutes on the 2-core CI machines, measured with the Go build cache already holding
# kube-apiserver (scripts/testenv.sh runs first in `make test`): see docs/deploy.md.
#
# Overrides: THROTTLE_K8S_VERSION, THROTTLE_COREDNS_VERSION, THROTTLE_CACHE, GO.
set -euo pipefail

K8S_VERSION="${THROTTLE_K8S_VERSION:-v1.35.4}"
COREDNS_VERSION="${THROTTLE_COREDNS_VERSION:-v1.15.0}"
CACHE="${THROTTLE_CACHE:-$HOME/.cache/throttle}/node"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
COREDNS_DIR="$CACHE/coredns-$COREDNS_VERSION"
IMAGES="$CACHE/images"
K8S_COMMANDS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
log() { printf '[node-build] %s\n' "$*" >&2; }

missing_k8s() {
    local c
    for c in "${K8S_COMMANDS[@]}"; do [[ -x "$K8S_DIR/$c" ]] || echo "$c"; done
}

have_all() {
    [[ -z "$(missing_k8s)" && -x "$COREDNS_DIR/coredns" && -f "$IMAGES/pause-3.10.oci.tar" \
        && -f "$IMAGES/coredns-$COREDNS_VERSION.oci.tar" && -f "$IMAGES/netcheck-1.oci.tar" ]]
}

if have_all; then
    log "cached: ${K8S_COMMANDS[*]} $K8S_VERSION, coredns $COREDNS_VERSION, pause, coredns and netcheck images"
    echo "THROTTLE_NODE_ASSETS=$CACHE"
    exit 0
fi

# shellcheck source=scripts/go-build.sh
. "$ROOT/scripts/go-build.sh"
go_toolchain
go_lock "$CACHE" .lock

build_k8s() {
    local missing start=$SECONDS c
    mapfile -t missing < <(missing_k8s)
    [[ ${#missing[@]} -eq 0 ]] && { log "cached: ${K8S_COMMANDS[*]} $K8S_VERSION"; return; }
    # The spike's kubelet (node/kubelet-<version>) is the same build: reuse it.
    if [[ ! -x "$K8S_DIR/kubelet" && -x "$CACHE/kubelet-$K8S_VERSION" ]]; then
        mkdir -p "$K8S_DIR" && mv "$CACHE/kubelet-$K8S_VERSION" "$K8S_DIR/kubelet"
        mapfile -t missing < <(missing_k8s)
        [[ ${#missing[@]} -eq 0 ]] && return
    fi
    log "building ${missing[*]} $K8S_VERSION (a cold build takes many minutes)"
    mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
    k8s_module throttle.local/node/k8s "$K8S_VERSION"
    k8s_build "$K8S_VERSION" out "${missing[@]}"
    mkdir -p "$K8S_DIR"
    for c in "${missing[@]}"; do mv -f "out/$c" "$K8S_DIR/$c"; done
    log "built ${missing[*]} $K8S_VERSION in $((SECONDS - start))s → $K8S_DIR"
}

build_coredns() {
    [[ -x "$COREDNS_DIR/coredns" ]] && { log "cached: coredns $COREDNS_VERSION"; return; }
    local start=$SECONDS
    log "building coredns $COREDNS_VERSION (kubernetes, cache, errors, health, ready, log plugins)"
    mkdir -p "$WORK/coredns" && cd "$WORK/coredns"
    "$GO" mod init throttle.local/node/coredns >/dev/null 2>&1
    # CoreDNS's own main links every plugin (the cloud DNS SDKs too); this one links the few
    # that answer Service names inside the test cluster. No `forward`: nothing leaves the run.
    cat >main.go <<'GO'
// coredns for the test node: only the plugins its Corefile uses.
package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
    "$GO" get "github.com/coredns/coredns@$COREDNS_VERSION" && "$GO" mod tidy
    "$GO" build -trimpath -ldflags "-s -w" -o coredns .
    mkdir -p "$COREDNS_DIR" && mv -f coredns "$COREDNS_DIR/coredns"
    log "built coredns $COREDNS_VERSION in $((SECONDS - start))s → $COREDNS_DIR"
}

# save_image NAME:TAG ARCHIVE BUILD_CONTEXT: a FROM-scratch image as an OCI archive.
save_image() {
    # shellcheck source=scripts/podman-env.sh
    . "$ROOT/scripts/podman-env.sh"
    podman build -q -t "$1" "$3" >/dev/null
    mkdir -p "$IMAGES" && podman save --quiet --format oci-archive -o "$2.part" "$1" && mv -f "$2.part" "$2"
    podman rmi -f "$1" >/dev/null 2>&1 || true
}

build_pause() {
    local archive="$IMAGES/pause-3.10.oci.tar"
    [[ -f "$archive" ]] && { log "cached: pause image"; return; }
    if [[ -f "$CACHE/pause-3.10.oci.tar" ]]; then  # the spike's archive: same image
        mkdir -p "$IMAGES" && mv "$CACHE/pause-3.10.oci.tar" "$archive" && return
    fi
    log "building the pause image"
    mkdir -p "$WORK/pause" && cd "$WORK/pause"
    cat >main.go <<'GO'
// pause holds the pod's namespaces until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
GO
    printf 'module throttle.local/pause\n\ngo 1.22\n' >go.mod
    "$GO" build -trimpath -ldflags "-s -w" -o pause .
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >Containerfile
    save_image localhost/pause:3.10 "$archive" "$WORK/pause"
}

build_coredns_image() {
    local archive="$IMAGES/coredns-$COREDNS_VERSION.oci.tar"
    [[ -f "$archive" ]] && { log "cached: coredns image"; return; }
    log "building the coredns image"
    mkdir -p "$WORK/coredns-image" && cp "$COREDNS_DIR/coredns" "$WORK/coredns-image/"
    printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' \
        >"$WORK/coredns-image/Containerfile"
    save_image "localhost/coredns:$COREDNS_VERSION" "$archive" "$WORK/coredns-image"
}

build_netcheck() {
    local archive="$IMAGES/netcheck-1.oci.tar"
    [[ -f "$archive" ]] && { log "cached: netcheck image"; return; }
    log "building the netcheck image"
    mkdir -p "$WORK/netcheck" && cd "$WORK/netcheck"
    cat >main.go <<'GO'
// netcheck is the node test's workload: `serve ADDR` answers every TCP connection with a line
// naming the pod; `connect HOST:PORT` resolves HOST (a Service name, through the cluster's DNS),
// connects and exits 0 once it read that line, non-zero otherwise.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"time"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "netcheck:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netcheck serve ADDR | netcheck connect HOST:PORT")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		l, err := net.Listen("tcp", os.Args[2])
		if err != nil {
			fail(err)
		}
		host, _ := os.Hostname()
		for {
			c, err := l.Accept()
			if err != nil {
				continue
			}
			go func(c net.Conn) {
				defer c.Close()
				fmt.Fprintf(c, "served by %s\n", host)
			}(c)
		}
	case "connect":
		c, err := net.DialTimeout("tcp", os.Args[2], 5*time.Second)
		if err != nil {
			fail(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s via %s: %s", os.Args[2], c.RemoteAddr(), line)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
GO
    printf 'module throttle.local/netcheck\n\ngo 1.22\n' >go.mod
    "$GO" build -trimpath -ldflags "-s -w" -o netcheck .
    printf 'FROM scratch\nCOPY netcheck /netcheck\nENTRYPOINT ["/netcheck"]\n' >Containerfile
    save_image localhost/netcheck:1 "$archive" "$WORK/netcheck"
}

total_start=$SECONDS
build_k8s
build_coredns
build_pause
build_coredns_image
build_netcheck
log "done in $((SECONDS - total_start))s"
echo "THROTTLE_NODE_ASSETS=$CACHE"
