"""On the client host, as root: run the CLI as the identity's user against every server, and report.

``client_check.py USER CONFIG CERT KEY BUNDLE SERVER...`` prints one JSON object: the sha256, mode and owner of
CONFIG before and after the CLI ran (the CLI rewrites it at every start), per server the exit code and output of
``permguard zones list`` run as USER (``sudo -u USER -H``, so HOME and config.toml are USER's) with
``PERMGUARD_ZAP_ENDPOINT=grpcs://SERVER:9091``, the serial of CERT (upper-case hex), the mode and owner of
KEY (never its content) and the number of certificates in BUNDLE. One script instead of a task per check
keeps the scenario fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
from typing import Dict, List

from cryptography import x509


def describe(path: str, digest: bool = True) -> Dict[str, str]:
    """Return mode, owner and (unless told not to read the file) sha256 of a file."""
    info = os.stat(path)
    result = {"mode": format(stat.S_IMODE(info.st_mode), "04o"), "owner": pwd.getpwuid(info.st_uid).pw_name}
    if digest:
        with open(path, "rb") as handle:
            result["sha256"] = hashlib.sha256(handle.read()).hexdigest()
    return result


def main(argv: List[str]) -> int:
    """Run the checks; print the report."""
    user, config, cert, key, bundle, servers = argv[1], argv[2], argv[3], argv[4], argv[5], argv[6:]
    report = {"config_before": describe(config), "cli": []}
    for server in servers:
        endpoint = f"PERMGUARD_ZAP_ENDPOINT=grpcs://{server}:9091"
        proc = subprocess.run(
            ["sudo", "-n", "-u", user, "-H", "env", endpoint, "permguard", "zones", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        report["cli"].append({"server": server, "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})
    report["config_after"] = describe(config)
    with open(cert, "rb") as handle:
        report["cert_serial"] = format(x509.load_pem_x509_certificate(handle.read()).serial_number, "X")
    report["key"] = describe(key, digest=False)
    with open(bundle, "rb") as handle:
        report["bundle_cas"] = handle.read().count(b"-----BEGIN CERTIFICATE-----")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
