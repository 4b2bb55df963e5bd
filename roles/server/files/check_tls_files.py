# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check bring-your-own TLS files on a host, with the Python standard library only.

Run by the server role's preflight (``python3 -c <this file> <json>``). The argument maps role
variable names to host paths, plus ``user``: the service user. Prints one JSON object:
``errors`` (sentences naming the variable and the fix) and ``sha256`` (path to digest), so the
role can restart the server when a file changes. Reads only; never prints key material.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import ssl
import stat
import sys


def _refuse_password() -> bytes:
    raise ValueError("encrypted")


def _readers(user: str) -> tuple[int, set[int]] | None:
    """(uid, gids) of the service user, or None when it does not exist yet."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    gids = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if user in group.gr_mem}
    return entry.pw_uid, gids


def _can(info: os.stat_result, who: tuple[int, set[int]], bit_user: int, bit_group: int, bit_other: int) -> bool:
    uid, gids = who
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & bit_user)
    if info.st_gid in gids:
        return bool(info.st_mode & bit_group)
    return bool(info.st_mode & bit_other)


def _readable_by(path: str, who: tuple[int, set[int]]) -> bool:
    """Whether the service user can reach and read ``path`` (every parent searchable, the file readable)."""
    parent = os.path.dirname(path)
    while parent and parent != "/":
        if not _can(os.stat(parent), who, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
        parent = os.path.dirname(parent)
    return _can(os.stat(path), who, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _check_paths(files: dict[str, str], user: str) -> tuple[list[str], dict[str, str]]:
    """Each file exists, is regular and readable by the service user; its sha256."""
    errors, digests = [], {}
    who = _readers(user)
    for variable, path in files.items():
        if not os.path.isabs(path):
            errors.append(f"{variable}='{path}' must be an absolute path on the host.")
        elif not os.path.isfile(path):
            errors.append(f"{variable}={path} does not exist on the host (or is not a regular file).")
        else:
            with open(path, "rb") as handle:
                digests[path] = hashlib.sha256(handle.read()).hexdigest()
            if who is not None and not _readable_by(path, who):
                errors.append(
                    f"{variable}={path} cannot be read by the service user {user}: Permguard reads it at start-up"
                    " as that user."
                )
    return errors, digests


def _check_key_pair(cert: str, key: str) -> list[str]:
    """The certificate and an unencrypted key that belongs to it."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_refuse_password)
    except (ssl.SSLError, ValueError) as exc:
        reason = str(exc)
        if "encrypted" in reason:
            return [f"permguard_server_tls_key_file={key} is encrypted: Permguard needs an unencrypted PEM key."]
        if "KEY_VALUES_MISMATCH" in reason or "values mismatch" in reason:
            return [f"permguard_server_tls_key_file={key} is not the key of permguard_server_tls_cert_file={cert}."]
        return [
            f"permguard_server_tls_cert_file={cert} / permguard_server_tls_key_file={key} are not a PEM certificate"
            f" and its private key ({reason})."
        ]
    return []


def _check_bundle(bundle: str) -> list[str]:
    """A bundle of CA certificates only (a leaf in it would not verify anything)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=bundle)
    except ssl.SSLError as exc:
        return [f"permguard_server_tls_ca_file={bundle} is not a PEM bundle of CA certificates ({exc})."]
    stats = context.cert_store_stats()
    if stats["x509"] == 0:
        return [f"permguard_server_tls_ca_file={bundle} holds no certificate."]
    if stats["x509_ca"] < stats["x509"]:
        return [
            f"permguard_server_tls_ca_file={bundle} holds {stats['x509'] - stats['x509_ca']} certificate(s) that"
            " are not CAs (no CA:TRUE): give the bundle of the CAs that issue the certificates, not a leaf."
        ]
    return []


def check(files: dict[str, str], user: str) -> tuple[list[str], dict[str, str]]:
    """Errors and digests for the files given as {variable: path}."""
    errors, digests = _check_paths(files, user)
    if errors:
        return errors, digests
    errors = _check_key_pair(files["permguard_server_tls_cert_file"], files["permguard_server_tls_key_file"])
    if files.get("permguard_server_tls_ca_file"):
        errors += _check_bundle(files["permguard_server_tls_ca_file"])
    return errors, digests


def main() -> None:
    """Check the files named in the JSON argument and print the result as JSON."""
    request = json.loads(sys.argv[1])
    files = {name: path for name, path in request["files"].items() if path}
    errors, digests = check(files, request["user"])
    print(json.dumps({"errors": errors, "sha256": digests}))


main()
