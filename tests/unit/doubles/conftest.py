"""Fixtures for the Permguard server double tests: a throw-away PKI, free ports, a process runner, a SPIRE agent.

The double runs as a subprocess of the test interpreter (``sys.executable``; set ``DOUBLE_PYTHON`` to run it on
another one, e.g. Debian's ``/usr/bin/python3``) through symlinks named like the real binaries, so its ``argv[0]``
picks the binary it stands in for. Every wait is bounded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOUBLE = Path(__file__).resolve().parents[2] / "doubles" / "permguard_double.py"
if str(DOUBLE.parent) not in sys.path:
    sys.path.insert(0, str(DOUBLE.parent))

import spire_agent_double  # noqa: E402 - the one SPIRE agent double, in-process (tests only)

SPIFFE_SERVER_ID = "spiffe://example.org/permguard/server"
BINARIES = ("permguard_all_in_one", "permguard_control_plane", "permguard_data_plane")
DOUBLE_PYTHON = os.environ.get("DOUBLE_PYTHON") or sys.executable
START_TIMEOUT = 6.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Issued:
    """A certificate and key written as PEM files."""

    cert: Path
    key: Path
    certificate: x509.Certificate


@dataclass(frozen=True)
class Pki:
    """Two unrelated CAs with server and client certificates."""

    ca: Issued
    server: Issued
    server_b: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path = directory / f"{stem}-cert.pem"
    key_path = directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Issued(cert_path, key_path, cert)


def _issue(
    directory: Path,
    stem: str,
    common_name: str,
    issuer: Optional[tuple] = None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return _write(directory, stem, cert, key), (cert, key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_pair = _issue(directory, "ca", "Double Test CA", ca=True)
    server, _server_pair = _issue(directory, "server", "double server A", ca_pair, server=True)
    server_b, _server_b_pair = _issue(directory, "server-b", "double server B", ca_pair, server=True)
    client, _client_pair = _issue(directory, "client", "double client", ca_pair)
    other_ca, other_pair = _issue(directory, "other-ca", "Another CA", ca=True)
    other_client, _other_client_pair = _issue(directory, "other-client", "stranger", other_pair)
    return Pki(ca, server, server_b, client, other_ca, other_client)


# --------------------------------------------------------------------------- ports and binaries


def _port_is_free(port: int) -> bool:
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
        except OSError:
            return False
        finally:
            sock.close()
        return True
    return False


_handed_out: set = set()


def free_ports(count: int) -> List[int]:
    """Return distinct high ports that are free on every interface now."""
    ports: List[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 20000 or port in _handed_out or not _port_is_free(port):
            continue
        _handed_out.add(port)
        ports.append(port)
    return ports


def port_is_listening(port: int) -> bool:
    """Return True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    directory = tmp_path_factory.mktemp("bin")
    links = {}
    for name in BINARIES:
        link = directory / name
        link.symlink_to(DOUBLE)
        links[name] = link
    return links


# --------------------------------------------------------------------------- process runner


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the environment without any PERMGUARD_* or SPIFFE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERMGUARD_", "SPIFFE_"))}
    env.update(extra or {})
    return env


class DoubleProcess:
    """One run of the double."""

    def __init__(self, binary: Path, args: Sequence[str], env: Optional[Dict[str, str]], workdir: Path) -> None:
        self.binary = binary
        self.args = list(args)
        self.workdir = workdir
        self.stdout_path = workdir / f"stdout-{time.monotonic_ns()}.txt"
        self.stderr_path = workdir / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [DOUBLE_PYTHON, str(binary), *self.args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=clean_env(env),
                cwd=workdir,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, ports: Sequence[int], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(f"double exited {self.proc.returncode}:\n{self.stdout}\n{self.stderr}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"ports {pending} not listening after {timeout}s:\n{self.stderr}")
            pending = [p for p in pending if not port_is_listening(p)]
            if pending:
                time.sleep(0.05)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise AssertionError(f"double did not exit within {timeout}s:\n{self.stderr}") from None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait_exit()


class Runner:
    """Starts doubles and makes sure none outlives its test."""

    def __init__(self, binaries: Dict[str, Path], workdir: Path) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.started: List[DoubleProcess] = []

    def appdata(self, name: str = "appdata") -> Path:
        path = self.workdir / name
        path.mkdir(exist_ok=True)
        return path

    def start(
        self, args: Sequence[str], env: Optional[Dict[str, str]] = None, binary: str = "permguard_all_in_one"
    ) -> DoubleProcess:
        process = DoubleProcess(self.binaries[binary], args, env, self.workdir)
        self.started.append(process)
        return process

    def run(
        self, args: Sequence[str], env: Optional[Dict[str, str]] = None, binary: str = "permguard_all_in_one"
    ) -> DoubleProcess:
        process = self.start(args, env, binary)
        process.wait_exit()
        return process

    def close(self) -> None:
        for process in self.started:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def runner(binaries: Dict[str, Path], tmp_path: Path) -> Iterator[Runner]:
    instance = Runner(binaries, tmp_path)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def module_runner(binaries: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    instance = Runner(binaries, tmp_path_factory.mktemp("double"))
    yield instance
    instance.close()


# --------------------------------------------------------------------------- SPIFFE


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="pg-spire-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def new_spire_agent(directory: Path, identities: Optional[Dict[int, str]] = None) -> Any:
    """The SPIRE agent double (not started) on ``<directory>/public/api.sock``; scheduled rotation off."""
    socket_path = str(directory / "public" / "api.sock")
    return spire_agent_double.WorkloadApiDouble(socket_path, identities or {}, rotate_every=0)
