"""Build release-shaped assets of the Permguard server and CLI doubles.

``python tests/doubles/build_release.py --out DIR [--version 0.0.52]`` writes ``DIR/v<version>/`` laid out like a
Permguard GitHub release (tag ``v<version>``): for each server binary (``permguard_all_in_one``,
``permguard_control_plane``, ``permguard_data_plane``) and each Linux architecture (``x86_64``, ``arm64``) a
``<binary>_Linux_<arch>.tar.gz`` whose archive root holds the binary; the same for the CLI, whose assets are
``permguard_cli_Linux_<arch>.tar.gz`` holding the executable ``permguard``; plus ``checksums.txt`` with
``<sha256 hex>  <asset>`` lines, sorted. A server "binary" is ``permguard_double.py``, the CLI is
``permguard_cli_double.py`` (executable, mode 0755, ``#!/usr/bin/python3`` prepended) with its ``__version__`` set
to the release version. Like GoReleaser's default archives, each archive also carries ``LICENSE`` and ``README.md``
at its root (here: short notes saying what the asset is; the README names the architecture, so the two
architectures' archives differ and a mix-up shows in the checksums).

:func:`build_release` packages the server binaries unless told otherwise (``products``); the command line packages
every product, servers and CLI.

Builds are byte-reproducible: fixed member order and mtimes, uid/gid 0 with no owner names, ustar format, gzip
header with mtime 0 and no file name.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

DOUBLE = Path(__file__).resolve().parent / "permguard_double.py"
CLI_DOUBLE = Path(__file__).resolve().parent / "permguard_cli_double.py"
BINARIES = ("permguard_all_in_one", "permguard_control_plane", "permguard_data_plane")
#: Asset prefix -> (executable at the archive root, double it is built from).
PRODUCTS: Dict[str, Tuple[str, Path]] = {
    **{binary: (binary, DOUBLE) for binary in BINARIES},
    "permguard_cli": ("permguard", CLI_DOUBLE),
}
SERVER_PRODUCTS = BINARIES
ALL_PRODUCTS = tuple(PRODUCTS)
ARCHES = ("x86_64", "arm64")
DEFAULT_VERSION = "0.0.52"
# 2024-01-01T00:00:00Z: a fixed timestamp for every archive member.
FIXED_MTIME = 1704067200

LICENSE_TEXT = """This archive is a TEST DOUBLE of a Permguard server release asset, built by the permguard.secure
Ansible collection's test suite (tests/doubles/build_release.py). It contains no Permguard code.
Permguard itself is licensed under the Apache License 2.0: https://github.com/permguard/permguard
"""

README_TEXT = """# {binary} (test double)

A stand-in for Permguard's `{binary}` v{version} (Linux {arch}), for the permguard.secure collection's tests.
It serves gRPC health and reflection with the real server's flags, environment variables and transport
security, but none of Permguard's business RPCs. Run `./{binary} --help`.
"""

CLI_README_TEXT = """# permguard (test double)

A stand-in for Permguard's command-line client `permguard` v{version} (Linux {arch}), for the permguard.secure
collection's tests. It reads and rewrites `~/.permguard/config.toml` as the real CLI does and proves the
transport with `permguard zones list` (TLS, mTLS and the real error texts), but has no other command.
"""

_VERSION_RE = re.compile(r'^__version__ = "[^"\n]*"$', re.MULTILINE)


#: The packaged "binary" runs on the host's system Python (the source carries no shebang of its own).
SHEBANG = "#!/usr/bin/python3\n"


def versioned_double(version: str, double: Path = DOUBLE) -> bytes:
    """Return a double as an executable script with ``__version__`` set to ``version``."""
    source = double.read_text(encoding="utf-8")
    stamped, count = _VERSION_RE.subn(f'__version__ = "{version}"', source, count=1)
    if count != 1:
        raise RuntimeError(f"no __version__ line in {double}")
    return (SHEBANG + stamped).encode("utf-8")


def _member(name: str, data: bytes, mode: int) -> Tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info, data


def archive_bytes(members: Sequence[Tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """Return a reproducible tar.gz holding ``members`` in the given order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


def asset_name(binary: str, arch: str) -> str:
    """Return the release asset name Permguard uses for a binary and architecture."""
    return f"{binary}_Linux_{arch}.tar.gz"


def build_release(out: Path, version: str = DEFAULT_VERSION, products: Sequence[str] = SERVER_PRODUCTS) -> Path:
    """Write the assets of ``products`` and checksums.txt under ``out/v<version>``; return that directory."""
    version = version[1:] if version.startswith("v") else version
    target = Path(out) / f"v{version}"
    target.mkdir(parents=True, exist_ok=True)
    checksums: List[str] = []
    for product in products:
        executable, double = PRODUCTS[product]
        payload = versioned_double(version, double)
        for arch in ARCHES:
            template = CLI_README_TEXT if double == CLI_DOUBLE else README_TEXT
            readme = template.format(binary=executable, version=version, arch=arch).encode("utf-8")
            data = archive_bytes(
                [
                    _member(executable, payload, 0o755),
                    _member("LICENSE", LICENSE_TEXT.encode("utf-8"), 0o644),
                    _member("README.md", readme, 0o644),
                ]
            )
            name = asset_name(product, arch)
            (target / name).write_bytes(data)
            checksums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    (target / "checksums.txt").write_text("".join(line + "\n" for line in sorted(checksums)), encoding="utf-8")
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Build release-shaped assets of the Permguard server and CLI doubles.")
    parser.add_argument("--out", required=True, type=Path, help="directory that receives v<version>/")
    parser.add_argument("--version", default=DEFAULT_VERSION, help=f"release version (default {DEFAULT_VERSION})")
    args = parser.parse_args(argv)
    print(build_release(args.out, args.version, ALL_PRODUCTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
