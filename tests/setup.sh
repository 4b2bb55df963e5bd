#!/usr/bin/env bash
# Prepare this machine for `make test` / `make demo`: Debian packages, the Python virtualenv,
# the collection on ANSIBLE_COLLECTIONS_PATH, the fleet image, the podman network and the
# release-shaped assets of the Permguard double. Every step is skipped when already done.
#
# usage: tests/setup.sh [apt] [venv] [collection] [sanity] [image] [network] [release]   (default: all)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${PG_CACHE:-$HOME/.cache/permguard-secure}"
venv="${VENV:-$root/.venv}"
collections="${PG_COLLECTIONS:-$cache/collections-$(printf %s "$root" | sha256sum | cut -c1-12)}"
network="${PG_NETWORK:-permguard-fleet}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/tests/fleet/containers.conf}"
mkdir -p "$cache"

log() { printf '==> %s\n' "$*"; }

step_apt() {
  local need=() cmd
  for cmd in podman:podman runc:runc mmdebstrap:mmdebstrap newuidmap:uidmap git:git rsync:rsync shellcheck:shellcheck; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
  done
  dpkg -s aardvark-dns >/dev/null 2>&1 || need+=(aardvark-dns)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "setup: installing ${need[*]} needs root" >&2; exit 1; }
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

step_venv() {
  local stamp
  stamp="$venv/.requirements-$(cat "$root/requirements.txt" "$root/requirements-test.txt" | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  log "virtualenv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$root/requirements-test.txt"
  touch "$stamp"
}

step_collection() {
  # Ansible finds the collection under <path>/ansible_collections/permguard/secure.
  mkdir -p "$collections/ansible_collections/permguard"
  ln -sfn "$root" "$collections/ansible_collections/permguard/secure"
}

step_sanity() {
  # ansible-test bootstraps pip from a cached get-pip script before trying to download one.
  local version
  version="$("$venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
class P: version = "3.11"
print(g(P())["pip"])')"
  mkdir -p "$HOME/.ansible/test/cache"
  install -m 0644 "$root/tests/sanity/get_pip_offline.py" "$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
}

step_image() {
  VENV="$venv" PG_CACHE="$cache" "$root/tests/fleet/build-image.sh" "${PG_SUITE:-bookworm}"
}

step_network() {
  podman network exists "$network" || podman network create "$network" >/dev/null
}

step_release() {
  # The role keeps a release's checksums.txt once fetched (a published release never changes);
  # the double's assets do change, so a rebuilt release also empties the controller cache.
  local sums="$cache/release/v0.0.52/checksums.txt" before=""
  [ -f "$sums" ] && before="$(sha256sum <"$sums")"
  "$venv/bin/python" "$root/tests/doubles/build_release.py" --out "$cache/release" >/dev/null
  if [ "$before" != "$(sha256sum <"$sums")" ]; then
    rm -rf "$cache/controller"
  fi
}

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(apt venv collection sanity image network release)
for s in "${steps[@]}"; do "step_$s"; done
