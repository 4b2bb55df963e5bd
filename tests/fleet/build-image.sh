#!/usr/bin/env bash
# Build the test fleet's Debian systemd image offline-style: mmdebstrap a root file system from the
# Debian mirror, add the pure-python wheels the test hosts need, and `podman import` it.
# An unchanged recipe is not rebuilt: the image is tagged with a hash of this recipe.
#
# usage: build-image.sh [bookworm|trixie]      (default bookworm)
set -euo pipefail

suite="${1:-bookworm}"
here="$(cd "$(dirname "$0")" && pwd)"
cache="${PG_CACHE:-$HOME/.cache/permguard-secure}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

case "$suite" in
  bookworm) release=debian12 ;;
  trixie) release=debian13 ;;
  *) echo "build-image.sh: unknown suite '$suite' (use bookworm or trixie)" >&2; exit 2 ;;
esac

# Debian packages every fleet host gets: systemd as PID 1, the Python Ansible runs modules with,
# and the libraries the probe module and the server double import (Debian's own builds).
packages=(
  systemd systemd-sysv dbus python3 python3-apt ca-certificates iproute2 procps
  nftables sudo openssl python3-venv
  python3-cryptography python3-h2 python3-protobuf python3-multidict
)
# Pure-python wheels that Debian does not package; unpacked into /usr/local/lib.
wheels=(grpclib==0.4.9)
# py-spiffe needs newer grpcio/protobuf/cryptography than Debian ships: hosts that probe in
# mode spiffe use a virtualenv at /opt/spiffe-venv (as an operator would), installed offline from
# wheels downloaded here for the image's Python.
spiffe_venv_packages=(spiffe==0.3.2 grpclib==0.4.9 protobuf==7.36.2 cryptography==50.0.2 grpcio==1.85.3)

recipe_hash="$(
  { cat "$0" "$here/install-wheels.sh"; printf '%s\n' "$suite" "${packages[@]}" "${wheels[@]}" "${spiffe_venv_packages[@]}"; } | sha256sum | cut -c1-12
)"
image="localhost/permguard-fleet:${release}-${recipe_hash}"
alias_tag="localhost/permguard-fleet:${release}"

if podman image exists "$image"; then
  podman tag "$image" "$alias_tag"
  echo "fleet image up to date: $image"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/permguard-fleet.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache/wheels"

pip_cmd=(python3 -m pip)
[ -x "${VENV:-}/bin/pip" ] && pip_cmd=("$VENV/bin/pip")
"${pip_cmd[@]}" download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" "${wheels[@]}"
case "$suite" in bookworm) pyver=3.11 ;; trixie) pyver=3.13 ;; esac
venv_wheels="$cache/wheels-venv-$pyver-$(uname -m)"
"${pip_cmd[@]}" download --quiet --only-binary=:all: --implementation cp --python-version "$pyver" \
  --platform "manylinux_2_28_$(uname -m)" --platform "manylinux_2_17_$(uname -m)" \
  --platform "manylinux2014_$(uname -m)" -d "$venv_wheels" "${spiffe_venv_packages[@]}"

include="$(IFS=,; echo "${packages[*]}")"
echo "building $image (mmdebstrap $suite) ..."
# The hooks are shell snippets that mmdebstrap runs with the root file system as "$1".
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=apt --include="$include" \
  --customize-hook='rm -f "$1"/etc/machine-id; touch "$1"/etc/machine-id' \
  --customize-hook='chroot "$1" systemctl mask systemd-logind.service getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service >/dev/null 2>&1 || true' \
  --customize-hook='chroot "$1" systemctl set-default multi-user.target' \
  --customize-hook="$here/install-wheels.sh \"\$1\" $cache/wheels" \
  --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp $venv_wheels/*.whl \"\$1/tmp/wheels/\"" \
  --customize-hook='chroot "$1" python3 -m venv /opt/spiffe-venv' \
  --customize-hook="chroot \"\$1\" /opt/spiffe-venv/bin/pip install --quiet --no-index --find-links /tmp/wheels ${spiffe_venv_packages[*]}" \
  --customize-hook='rm -rf "$1/tmp/wheels"' \
  "$suite" "$work/rootfs.tar"

podman import --quiet \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  "$work/rootfs.tar" "$image" >/dev/null
podman tag "$image" "$alias_tag"
echo "fleet image built: $image"

# Drop images of older recipes (kept while a container still uses them).
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/permguard-fleet:${release}-" | grep -vx "$image" |
  xargs -r podman rmi >/dev/null 2>&1 || true
