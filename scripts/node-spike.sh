#!/usr/bin/env bash
# The real-node spike of the node issue, reproducible: a kubelet and containerd on this machine
# run one pod to Ready against the test kube-apiserver. Not used by `make test` yet; the node
# fixture will grow from it. What it found (2026-12-07, Debian 12 VM, cgroup v1, 2 cores):
# - kubelet v1.35.4 (built here from the Go module proxy, CGO off, ~2.5 min warm) talks to
#   Debian's containerd 1.6.20 over CRI v1 (it logs "RuntimeConfig ... Unimplemented": harmless);
# - on cgroup v1 the kubelet needs `failCgroupV1: false`; `cgroupsPerQOS: false` and no
#   enforced node allocatable keep it out of the cgroup tree it cannot manage in this VM;
# - runc 1.1.5 refuses the sandbox's oom_score_adj of -998 ("failed to update
#   /proc/self/oom_score_adj: Permission denied", seen by wrapping runc with --debug): containerd
#   needs `restrict_oom_score_adj = true`;
# - no registry: the sandbox image is a 1.4 MB static Go `pause` put in an image by podman
#   (`FROM scratch`) and imported with `ctr images import`;
# - pods get addresses from Debian's CNI plugins (bridge + host-local + portmap + loopback).
# Left for the node issue: a network namespace of the run's own for the bridge and Services
# (today the bridge `thr0` is on the host), kube-controller-manager, kube-scheduler, kube-proxy,
# images for Redis/PostgreSQL/the simulator, the chart's development profile, `make kind`.
#
#   scripts/node-spike.sh up     # build what is missing, start containerd + kubelet + a pod
#   scripts/node-spike.sh down   # stop them, remove the bridge
set -euo pipefail

K8S_VERSION="${THROTTLE_K8S_VERSION:-v1.35.4}"
CACHE="${THROTTLE_CACHE:-$HOME/.cache/throttle}/node"
RUN="${THROTTLE_NODE_RUN:-/tmp/throttle-node}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KUBELET="$CACHE/kubelet-$K8S_VERSION"
PAUSE_TAR="$CACHE/pause-3.10.oci.tar"
log() { printf '[node] %s\n' "$*" >&2; }

build_kubelet() {
    [[ -x "$KUBELET" ]] && { log "cached: kubelet $K8S_VERSION"; return; }
    local minor patch work gomod staging args=() m
    IFS=. read -r _ minor patch <<<"${K8S_VERSION#v}"
    work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
    log "building kubelet $K8S_VERSION (a few minutes)"
    (
        cd "$work" && export GOTOOLCHAIN=local CGO_ENABLED=0
        go mod init throttle.local/node/kubelet >/dev/null 2>&1
        gomod="$(go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$K8S_VERSION")"
        staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod")"
        for m in $staging; do args+=("-replace=$m=$m@v0.$minor.$patch"); done
        go mod edit "${args[@]}"
        go get -tool "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION" && go mod tidy
        go build -trimpath -o kubelet -ldflags "-s -w \
            -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
            -X k8s.io/component-base/version.gitMajor=1 \
            -X k8s.io/component-base/version.gitMinor=$minor" k8s.io/kubernetes/cmd/kubelet
    )
    mkdir -p "$CACHE" && mv "$work/kubelet" "$KUBELET"
}

build_pause() {
    [[ -f "$PAUSE_TAR" ]] && { log "cached: pause image"; return; }
    local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
    log "building the pause image"
    cat >"$work/main.go" <<'GO'
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
    printf 'module throttle.local/pause\n\ngo 1.22\n' >"$work/go.mod"
    (cd "$work" && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w" -o pause .)
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$work/Containerfile"
    # shellcheck source=scripts/podman-env.sh
    . "$ROOT/scripts/podman-env.sh"
    podman build -q -t localhost/pause:3.10 "$work" >/dev/null
    mkdir -p "$CACHE" && podman save --format oci-archive -o "$PAUSE_TAR" localhost/pause:3.10
}

up() {
    command -v containerd >/dev/null || { log "needs containerd: apt-get install -y containerd"; exit 1; }
    build_kubelet
    build_pause
    mkdir -p "$RUN/cni-conf" "$RUN/manifests" "$RUN/kubelet-root"
    containerd config default \
        | sed -e "s#^root = .*#root = \"$RUN/containerd-root\"#" \
              -e "s#^state = .*#state = \"$RUN/containerd-state\"#" \
              -e "s#address = \"/run/containerd/containerd.sock\"#address = \"$RUN/containerd.sock\"#" \
              -e "s#sandbox_image = .*#sandbox_image = \"localhost/pause:3.10\"#" \
              -e "s#restrict_oom_score_adj = false#restrict_oom_score_adj = true#" \
              -e "s#bin_dir = \"/opt/cni/bin\"#bin_dir = \"/usr/lib/cni\"#" \
              -e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$RUN/cni-conf\"#" >"$RUN/containerd.toml"
    cat >"$RUN/cni-conf/10-bridge.conflist" <<'JSON'
{"cniVersion": "1.0.0", "name": "throttle-node", "plugins": [
  {"type": "bridge", "bridge": "thr0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
    cat >"$RUN/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: 127.0.0.1
port: 10350
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10348
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$RUN/containerd.sock
staticPodPath: $RUN/manifests
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
YAML
    log "starting containerd"
    containerd --config "$RUN/containerd.toml" >"$RUN/containerd.log" 2>&1 &
    echo $! >"$RUN/containerd.pid"
    for _ in $(seq 50); do [[ -S "$RUN/containerd.sock" ]] && break; sleep 0.2; done
    ctr --address "$RUN/containerd.sock" -n k8s.io images import "$PAUSE_TAR" >/dev/null
    log "starting the test kube-apiserver"
    KUBEBUILDER_ASSETS="$("$ROOT/scripts/testenv.sh" | sed -n 's/^KUBEBUILDER_ASSETS=//p')" \
        "$ROOT/.venv/bin/python" - "$RUN" >"$RUN/control-plane.log" 2>&1 <<'PY' &
import shutil, sys, time
from pathlib import Path
sys.path[:0] = [".", "devtools"]
from tests.fixtures.kube_control_plane import find_binaries, start_control_plane
work = Path(sys.argv[1]) / "control-plane"
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
env = start_control_plane(work, find_binaries())
print("KUBECONFIG", env.kubeconfig, flush=True)
while True:
    time.sleep(3600)
PY
    echo $! >"$RUN/control-plane.pid"
    for _ in $(seq 150); do grep -q KUBECONFIG "$RUN/control-plane.log" && break; sleep 0.2; done
    local kubeconfig="$RUN/control-plane/kubeconfig"
    log "starting the kubelet"
    "$KUBELET" --config "$RUN/kubelet.yaml" --kubeconfig "$kubeconfig" --root-dir "$RUN/kubelet-root" \
        --hostname-override throttle-node >"$RUN/kubelet.log" 2>&1 &
    echo $! >"$RUN/kubelet.pid"
    local kubectl=("$HOME/.cache/throttle/testenv/k8s-$K8S_VERSION/kubectl" --kubeconfig "$kubeconfig")
    for _ in $(seq 60); do "${kubectl[@]}" get node throttle-node >/dev/null 2>&1 && break; sleep 1; done
    "${kubectl[@]}" apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: spike, namespace: default}
spec:
  nodeName: throttle-node
  containers: [{name: pause, image: "localhost/pause:3.10", imagePullPolicy: Never}]
YAML
    "${kubectl[@]}" wait --for=condition=Ready pod/spike --timeout=120s
    "${kubectl[@]}" get nodes,pods -o wide
    log "up; KUBECONFIG=$kubeconfig; logs in $RUN; stop with: $0 down"
}

down() {
    local p m ctr=(ctr --address "$RUN/containerd.sock" -n k8s.io)
    [[ -f "$RUN/kubelet.pid" ]] && kill "$(cat "$RUN/kubelet.pid")" 2>/dev/null || true
    # The containers outlive containerd and their shims: stop them first.
    for p in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s KILL "$p" || true; done
    sleep 1
    for p in control-plane containerd; do
        [[ -f "$RUN/$p.pid" ]] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
    done
    sleep 2
    pkill -f "containerd-shim-runc-v2 -namespace k8s.io -address $RUN/" 2>/dev/null || true
    ip link del thr0 2>/dev/null || true
    for m in $(awk -v run="$RUN" 'index($2, run) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
    log "down (left $RUN for its logs)"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
