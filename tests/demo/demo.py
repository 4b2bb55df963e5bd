"""`make demo`: provision a small local fleet with ``permguard.secure.site`` and probe it.

The fleet is N systemd containers (default 3) from the test-fleet image on the project's podman
network. The server artifact is the Permguard transport double's release-shaped asset (built by
``tests/setup.sh``), downloaded and checksum-verified by the role like a real release; set
``PERMGUARD_ARTIFACT=/path/to/permguard_all_in_one_Linux_x86_64.tar.gz`` to install a real release
asset instead (``PERMGUARD_DB=/path/to/permguard.db`` seeds its database). Every port of every host
is then probed with ``permguard.secure.grpc_tls_probe`` from the controller and shown as a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PG_CACHE", Path.home() / ".cache" / "permguard-secure"))
IMAGE = "localhost/permguard-fleet:debian12"
NETWORK = os.environ.get("PG_NETWORK", "permguard-fleet")
LABEL = "permguard.secure=demo"
PORTS = {"zap": 9091, "pap": 9092, "pdp": 9094}
VERSION = "0.0.52"


def sh(cmd: list[str], check: bool = True, capture: bool = True) -> str:
    """Run a command and return its standard output."""
    proc = subprocess.run(cmd, check=False, text=True, capture_output=capture)
    if check and proc.returncode != 0:
        sys.exit(f"demo: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout or ''}{proc.stderr or ''}")
    return proc.stdout or ""


def host_names(count: int) -> list[str]:
    """Names of the demo hosts."""
    return [f"permguard-demo-{i}" for i in range(1, count + 1)]


def destroy() -> None:
    """Remove every demo container."""
    names = sh(["podman", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"]).split()
    if names:
        sh(["podman", "rm", "-f", "-t", "5", *names])
    print(f"removed {len(names)} demo host(s)")


def boot(name: str) -> None:
    """Start one systemd container unless it already runs."""
    state = sh(["podman", "inspect", "-f", "{{.State.Running}}", name], check=False).strip()
    if state == "true":
        return
    if state:
        sh(["podman", "rm", "-f", name])
    sh(["podman", "run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
        "--network", NETWORK, "--systemd=always", IMAGE, "/sbin/init"])  # fmt: skip


def wait_booted(name: str, timeout: float = 60.0) -> None:
    """Wait (bounded) until systemd inside the container has finished booting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sh(["podman", "exec", name, "systemctl", "is-system-running"], check=False).strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    sys.exit(f"demo: {name} did not finish booting within {timeout:.0f}s")


def address(name: str) -> str:
    """The container's address on the project network."""
    info = json.loads(sh(["podman", "inspect", name]))[0]
    return info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def artifact_vars() -> tuple[dict[str, str], str]:
    """Role variables choosing the server artifact, and a sentence saying which it is."""
    real = os.environ.get("PERMGUARD_ARTIFACT")
    if real:
        path = Path(real).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        variables = {"permguard_server_artifact": str(path), "permguard_server_artifact_sha256": digest}
        if os.environ.get("PERMGUARD_DB"):
            variables["permguard_server_database_seed"] = str(Path(os.environ["PERMGUARD_DB"]).resolve())
        return variables, f"server artifact: {path} (sha256 {digest[:16]}...), given by PERMGUARD_ARTIFACT"
    release = CACHE / "release" / f"v{VERSION}"
    variables = {
        "permguard_server_release_url": f"file://{release}",
        "permguard_server_controller_cache_dir": str(CACHE / "controller"),
    }
    return variables, (
        f"server artifact: the Permguard transport DOUBLE (tests/doubles/permguard_double.py) packaged as "
        f"release v{VERSION} in {release}; set PERMGUARD_ARTIFACT=/path/to/asset.tar.gz for a real release"
    )


def write_inventory(names: list[str], variables: dict[str, str]) -> Path:
    """An inventory reaching the containers through podman, like VMs through SSH."""
    inventory = {
        "permguard_servers": {
            "hosts": {n: {"ansible_connection": "containers.podman.podman"} for n in names},
            "vars": {"ansible_python_interpreter": "/usr/bin/python3", "permguard_server_tls_mode": "none",
                     "permguard_server_allow_plaintext": True,
                     **variables},
        }
    }  # fmt: skip
    path = CACHE / "demo" / "inventory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inventory, indent=2))
    return path


def converge(inventory: Path) -> None:
    """Run the collection's site playbook by its FQCN."""
    print(f"\n$ ansible-playbook -i {inventory} permguard.secure.site", flush=True)
    code = subprocess.call(["ansible-playbook", "-i", str(inventory), "permguard.secure.site"])
    if code != 0:
        sys.exit(f"demo: permguard.secure.site failed ({code})")


def probe(addresses: dict[str, str]) -> list[dict]:
    """Probe every port of every host from the controller in one task; return its results."""
    endpoints = [f"grpc://{ip}:{port}" for ip in addresses.values() for port in PORTS.values()]
    args = json.dumps({"endpoints": endpoints, "fail_on_error": False})
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    out = subprocess.run(
        ["ansible", "localhost", "-m", "permguard.secure.grpc_tls_probe", "-a", args],
        check=False, text=True, capture_output=True, env=env,
    ).stdout  # fmt: skip
    result = json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    if "results" not in result:
        sys.exit(f"demo: probe failed: {result.get('msg')}")
    return result["results"]


def print_table(addresses: dict[str, str], results: list[dict]) -> int:
    """Print one row per host and port; return the number of failed endpoints."""
    by_ip = {ip: name for name, ip in addresses.items()}
    port_name = {port: name for name, port in PORTS.items()}
    header = (
        f"{'host':<18} {'address':<15} {'endpoint':<5} {'port':>5} {'transport':<9} {'health':<11} {'ms':>6}  result"
    )
    print("\n" + header + "\n" + "-" * len(header))
    failed = 0
    for res in results:
        host, port = res["host"], int(res["port"])
        ok = bool(res.get("ok"))
        failed += not ok
        detail = "ok" if ok else f"{res['diagnosis']['class']}: {res['diagnosis']['fix']}"
        ms = res.get("timings", {}).get("total_ms")
        print(
            f"{by_ip.get(host, host):<18} {host:<15} {port_name.get(port, '?'):<5} {port:>5} "
            f"{'plaintext' if res['scheme'] == 'grpc' else 'tls':<9} {res.get('health_status')!s:<11} "
            f"{(f'{ms:.1f}' if ms is not None else '-'):>6}  {detail}"
        )
    print(f"\n{len(results) - failed} of {len(results)} endpoints SERVING")
    return failed


def main() -> int:
    """Build the fleet, converge it and print the probe table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=3, help="number of server hosts (default 3)")
    parser.add_argument("--destroy", action="store_true", help="remove the demo fleet and exit")
    args = parser.parse_args()
    if args.destroy:
        destroy()
        return 0
    variables, which = artifact_vars()
    print(which)
    names = host_names(args.hosts)
    for name in names:
        boot(name)
    for name in names:
        wait_booted(name)
    converge(write_inventory(names, variables))
    addresses = {name: address(name) for name in names}
    failed = print_table(addresses, probe(addresses))
    print(which)
    print("remove the fleet with: make demo-clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
