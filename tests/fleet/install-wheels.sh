#!/usr/bin/env bash
# mmdebstrap customize hook: unpack pure-python wheels into the root file system's
# /usr/local/lib/python3.X/dist-packages (on Debian's sys.path, outside dpkg's files).
# usage: install-wheels.sh ROOTFS WHEEL_DIR
set -euo pipefail
rootfs="$1"; wheel_dir="$2"
pyver="$(find "$rootfs/usr/lib" -maxdepth 1 -name 'python3.*' -printf '%f\n' | sort -V | tail -n1)"
site="$rootfs/usr/local/lib/$pyver/dist-packages"
mkdir -p "$site"
for whl in "$wheel_dir"/*.whl; do
  python3 -m zipfile -e "$whl" "$site"
done
