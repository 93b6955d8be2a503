#!/usr/bin/env bash
# Installs the server binaries the tests and the demo run as child processes: Redis, PostgreSQL and
# nginx (the reverse proxy in front of the webhook in tests/deploy/test_proxy.py), and the container
# tools that build and run the image (tests/deploy/test_image_run.py, `make image`): podman, runc
# and mmdebstrap, and what the real test node runs (tests/fixtures/kube_node.py): containerd, the
# CNI plugins, iptables (kube-proxy's rules) and iproute2 (its network namespace), and headless
# Chromium with its WebDriver (the console's browser tests, tests/fixtures/browser.py: Selenium
# drives Debian's build, never a browser it downloads), all from Debian's packages. Does nothing
# when they are already there.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql postgresql-client)
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
for tool in podman runc mmdebstrap containerd iptables; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need+=("$tool")
done
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then
  echo "deps: redis-server, PostgreSQL, nginx, podman, runc, mmdebstrap, containerd, CNI plugins, iptables, chromium and chromedriver already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: need root or sudo to install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "deps: installing ${need[*]} from Debian's packages"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged services; the project runs its own on free ports, so stop those.
for svc in redis-server postgresql nginx containerd; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
echo "deps: done"
