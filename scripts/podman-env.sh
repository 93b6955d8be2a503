# Sourced by the image scripts: podman settings that work on CI machines (exports CONTAINERS_CONF).
# podman's default ulimits (nofile 1048576, ...) are above these machines' hard limits, so the
# defaults here stay below them: nofile at most 65536, nproc at most 16384 (this sandbox's kernel
# also refuses an nproc above pid_max, 32768). And crun cannot run under their hybrid cgroups, so
# runc runs the containers when it is installed (`make deps` installs it).
CONTAINERS_CONF="${THROTTLE_CACHE:-$HOME/.cache/throttle}/image/containers.conf"
mkdir -p "$(dirname "$CONTAINERS_CONF")"
_nofile=$(ulimit -Hn); [ "$_nofile" = unlimited ] || [ "$_nofile" -gt 65536 ] && _nofile=65536
_nproc=$(ulimit -Hu); [ "$_nproc" = unlimited ] || [ "$_nproc" -gt 16384 ] && _nproc=16384
{
  echo "[containers]"
  echo "default_ulimits = [\"nofile=$_nofile:$_nofile\", \"nproc=$_nproc:$_nproc\"]"
  if command -v runc >/dev/null 2>&1; then
    echo "[engine]"
    echo "runtime = \"runc\""
  fi
} > "$CONTAINERS_CONF.$$"
mv "$CONTAINERS_CONF.$$" "$CONTAINERS_CONF"
unset _nofile _nproc
export CONTAINERS_CONF
