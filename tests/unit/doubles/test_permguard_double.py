"""Tests of the Permguard server double (tests/doubles/permguard_double.py) and of the release builder.

The double runs as a real subprocess on free high ports on 127.0.0.1 with a temporary appdata; its behaviour is
checked on the wire (gRPC health over grpclib, raw TLS handshakes with Python's ssl) and on disk.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import empty_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from grpclib.server import Server

from .conftest import (
    DOUBLE,
    SPIFFE_SERVER_ID,
    Pki,
    Runner,
    free_ports,
    new_spire_agent,
    port_is_listening,
    spire_agent_double,
)

BUILD_RELEASE = DOUBLE.parent / "build_release.py"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SERVING = HealthCheckResponse.SERVING
CALL_TIMEOUT = 3.0


# --------------------------------------------------------------------------- helpers


def client_context(
    ca: Optional[Path] = None,
    cert: Optional[Path] = None,
    key: Optional[Path] = None,
    *,
    alpn: bool = True,
    version: Optional[ssl.TLSVersion] = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    if alpn:
        context.set_alpn_protocols(["h2"])
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
            context.minimum_version = version
            context.maximum_version = version
    return context


def tls_exchange(port: int, context: ssl.SSLContext) -> Dict[str, Any]:
    """Handshake, send the HTTP/2 preface, read the answer; report what happened."""
    result: Dict[str, Any] = {"handshake": False, "outcome": None}
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                result.update(
                    handshake=True,
                    alpn=tls.selected_alpn_protocol(),
                    version=tls.version(),
                    peer=tls.getpeercert(binary_form=True),
                )
                tls.sendall(H2_PREFACE)
                data = tls.recv(4096)
                # An HTTP/2 server answers with a SETTINGS frame (type 0x04).
                result["outcome"] = "settings" if len(data) >= 9 and data[3] == 0x04 else f"eof:{data!r}"
        except ssl.SSLError as exc:
            result["outcome"] = f"ssl:{exc.reason or exc}"
        except (ConnectionResetError, BrokenPipeError) as exc:
            result["outcome"] = f"reset:{exc}"
    return result


def health(port: int, context: Optional[ssl.SSLContext] = None, service: str = "") -> int:
    async def check() -> int:
        channel = Channel("127.0.0.1", port, ssl=context)
        try:
            reply = await asyncio.wait_for(HealthStub(channel).Check(HealthCheckRequest(service=service)), CALL_TIMEOUT)
            return reply.status
        finally:
            channel.close()

    return asyncio.run(check())


def health_fails(port: int, context: Optional[ssl.SSLContext]) -> bool:
    try:
        health(port, context)
    except (OSError, asyncio.TimeoutError, GRPCError, Exception):  # any failure counts
        return True
    return False


def not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def three_ports() -> Dict[str, int]:
    zap, pap, pdp = free_ports(3)
    return {"zap": zap, "pap": pap, "pdp": pdp}


def port_args(ports: Dict[str, int]) -> list:
    return [f"--server-{name}-grpc-port={port}" for name, port in ports.items()]


def load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- start-up errors

CONFIG_PREFIX = "Bootstrapper failed initializing server factory configuration "


MODES = "none, tls, mtls, external, spiffe"


def _error_cases(pki: Pki, tmp: Path) -> Dict[str, tuple]:
    missing = tmp / "missing.pem"
    sock = tmp / "agent.sock"
    cert, key, ca = f"--server-tls-cert-file={pki.server.cert}", f"--server-tls-key-file={pki.server.key}", pki.ca.cert
    files_env = {
        "PERMGUARD_SERVER_TLS_CERT_FILE": str(pki.server.cert),
        "PERMGUARD_SERVER_TLS_KEY_FILE": str(pki.server.key),
    }
    spiffe_prefix = "spiffe: failed to create X509 source: "
    return {
        "invalid-mode": (["--server-tls-mode=TLS"], {}, "config", f'tls: invalid mode "TLS", must be one of: {MODES}'),
        "invalid-mode-env": (
            [],
            {"PERMGUARD_SERVER_TLS_MODE": "Mtls"},
            "config",
            f'tls: invalid mode "Mtls", must be one of: {MODES}',
        ),
        "tls-cert-without-key": (
            ["--server-tls-mode", "tls", "--server-tls-cert-file", str(pki.server.cert)],
            {},
            "config",
            "tls: mode=tls requires either cert-file+key-file or auto-cert-dir",
        ),
        "mtls-no-cert": (
            ["--server-tls-mode=mtls", f"--server-tls-ca-file={ca}"],
            {},
            "config",
            "tls: mode=mtls requires cert-file and key-file",
        ),
        "external-no-key": (
            ["--server-tls-mode=external", cert],
            {},
            "config",
            "tls: mode=external requires cert-file and key-file",
        ),
        "mtls-no-ca": (
            ["--server-tls-mode=mtls", cert, key],
            {},
            "config",
            "tls: mode=mtls requires ca-file for client certificate verification",
        ),
        "external-no-ca": (
            [],
            {"PERMGUARD_SERVER_TLS_MODE": "external", **files_env},
            "config",
            "tls: mode=external requires ca-file for client certificate verification",
        ),
        "appdata-missing": (
            [f"--server-appdata={tmp / 'nowhere'}"],
            {},
            "config",
            "server: invalid app data directory",
        ),
        "bad-log-level": (["--log-level=loud"], {}, "config", "cli: invalid log level"),
        "env-number-not-a-number": (
            [],
            {"PERMGUARD_SERVER_NOTP_MAX_PACKET_SIZE": "many"},
            "config",
            "server: invalid notp max packet size",
        ),
        "cert-file-missing": (
            ["--server-tls-mode=tls", f"--server-tls-cert-file={missing}", key],
            {},
            "run",
            f"tls: failed to load server certificate: open {missing}: no such file or directory",
        ),
        "key-mismatch": (
            ["--server-tls-mode=tls", cert, f"--server-tls-key-file={pki.client.key}"],
            {},
            "run",
            "tls: failed to load server certificate: tls: private key does not match public key",
        ),
        "ca-file-missing": (
            ["--server-tls-mode=mtls", cert, key, f"--server-tls-ca-file={missing}"],
            {},
            "run",
            f"tls: failed to read CA file {missing}: open {missing}: no such file or directory",
        ),
        "spiffe-no-socket": (
            ["--server-tls-mode=spiffe"],
            {},
            "run",
            spiffe_prefix + "workload endpoint socket address is not configured",
        ),
        "spiffe-env-without-scheme": (
            ["--server-tls-mode=spiffe"],
            {"SPIFFE_ENDPOINT_SOCKET": str(sock)},
            "run",
            spiffe_prefix + 'workload endpoint socket URI must have a "tcp" or "unix" scheme',
        ),
        "spiffe-env-empty": (
            ["--server-tls-mode=spiffe"],
            {"SPIFFE_ENDPOINT_SOCKET": ""},
            "run",
            spiffe_prefix + 'workload endpoint socket URI must have a "tcp" or "unix" scheme',
        ),
        "spiffe-env-opaque": (
            ["--server-tls-mode=spiffe"],
            {"SPIFFE_ENDPOINT_SOCKET": f"unix:{sock.relative_to('/')}"},
            "run",
            spiffe_prefix + "workload endpoint unix socket URI must not be opaque",
        ),
        "spiffe-flag-given-a-uri": (
            ["--server-tls-mode=spiffe", f"--server-tls-spiffe-socket-path=unix://{sock}"],
            {},
            "run",
            spiffe_prefix + "failed to exit idle mode: failed to start resolver: invalid (non-empty) authority: unix:",
        ),
        "spiffe-flag-relative-path": (
            ["--server-tls-mode=spiffe", "--server-tls-spiffe-socket-path=run/spire/agent.sock"],
            {},
            "run",
            spiffe_prefix + "failed to exit idle mode: failed to start resolver: invalid (non-empty) authority: run",
        ),
    }


ERROR_CASES = (
    "invalid-mode",
    "invalid-mode-env",
    "tls-cert-without-key",
    "mtls-no-cert",
    "external-no-key",
    "mtls-no-ca",
    "external-no-ca",
    "appdata-missing",
    "bad-log-level",
    "env-number-not-a-number",
    "cert-file-missing",
    "key-mismatch",
    "ca-file-missing",
    "spiffe-no-socket",
    "spiffe-env-without-scheme",
    "spiffe-env-empty",
    "spiffe-env-opaque",
    "spiffe-flag-given-a-uri",
    "spiffe-flag-relative-path",
)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_startup_error_texts(case: str, runner: Runner, pki: Pki, tmp_path: Path) -> None:
    args, env, kind, text = _error_cases(pki, tmp_path)[case]
    ports = three_ports()
    appdata = runner.appdata()
    process = runner.run([f"--server-appdata={appdata}", *port_args(ports), *args], env)
    assert process.proc.returncode == 1
    if kind == "config":
        # InitFromViper errors: printed once on stdout, before any log line or listener.
        assert CONFIG_PREFIX + text + "\n" in process.stdout
        assert "Error:" not in process.stderr
    else:
        # Errors returned through cobra's RunE: "Error: ..." then usage on stderr, the bare error on stdout.
        assert f"Error: {text}" in process.stderr
        assert "Usage:\n  all-in-one [flags]" in process.stderr
        assert process.stdout.rstrip("\n").splitlines()[-1].startswith(text)
    assert not any(port_is_listening(p) for p in ports.values())
    assert not (appdata / "certs").exists()


def test_busy_port_fails_and_releases_the_others(runner: Runner) -> None:
    ports = three_ports()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("0.0.0.0", ports["pap"]))
    blocker.listen(1)
    try:
        process = runner.run([f"--server-appdata={runner.appdata()}", *port_args(ports)])
        assert process.proc.returncode == 1
        text = f"listen tcp :{ports['pap']}: bind: address already in use"
        assert f"Error: {text}" in process.stderr
        assert not port_is_listening(ports["zap"])
        assert not port_is_listening(ports["pdp"])
    finally:
        blocker.close()


@pytest.mark.parametrize(
    ("binary", "flag"),
    [
        ("permguard_all_in_one", "--xyz"),
        ("permguard_all_in_one", "--server-pip-grpc-port=9093"),
        ("permguard_all_in_one", "--storage-engine-sqlite-filepath=/tmp/x.db"),
        ("permguard_control_plane", "--server-pdp-grpc-port=9094"),
        ("permguard_data_plane", "--server-zap-grpc-port=9091"),
    ],
)
def test_unknown_flags_are_rejected(binary: str, flag: str, runner: Runner) -> None:
    process = runner.run([flag, "--server-tls-mode=none"], binary=binary)
    name = flag.split("=", maxsplit=1)[0]
    assert process.proc.returncode == 1
    assert process.stderr.startswith(f"Error: unknown flag: {name}\nUsage:\n")
    assert process.stdout == f"unknown flag: {name}\n"


def test_malformed_flag_value_and_help(runner: Runner) -> None:
    bad = runner.run(["--server-zap-grpc-port=abc"])
    assert bad.proc.returncode == 1
    assert 'Error: invalid argument "abc" for "--server-zap-grpc-port" flag: parse error' in bad.stderr
    shown = runner.run(["--help"], binary="permguard_data_plane")
    assert shown.proc.returncode == 0
    assert "Usage:\n  data-plane [flags]" in shown.stdout
    assert "--server-pdp-grpc-port int" in shown.stdout
    assert "--server-zap-grpc-port" not in shown.stdout
    assert 'default "none"' in shown.stdout


# --------------------------------------------------------------------------- mode none


@pytest.fixture(scope="module")
def none_server(module_runner: Runner) -> Dict[str, Any]:
    ports = three_ports()
    (decoy,) = free_ports(1)
    appdata = module_runner.appdata()
    env = {
        "PERMGUARD_SERVER_ZAP_GRPC_PORT": str(ports["zap"]),  # the environment alone sets the ZAP port
        "PERMGUARD_SERVER_PAP_GRPC_PORT": str(decoy),  # overridden by the flag below
        "PERMGUARD_SERVER_APPDATA": str(appdata),
    }
    args = [f"--server-pap-grpc-port={ports['pap']}", "--server-pdp-grpc-port", str(ports["pdp"])]
    process = module_runner.start(args, env)
    process.wait_ready(list(ports.values()))
    yield {"ports": ports, "decoy": decoy, "appdata": appdata, "process": process}
    assert process.stop() == 0


def test_none_serves_health_on_every_port_and_env_rules(none_server: Dict[str, Any]) -> None:
    for port in none_server["ports"].values():
        assert health(port) == SERVING
    assert not port_is_listening(none_server["decoy"]), "a flag must beat its environment variable"
    # The PAP transaction-cleanup job opens <appdata>/permguard.db at start-up, creating it.
    assert (none_server["appdata"] / "permguard.db").exists()
    assert '"mode"' not in none_server["process"].stderr  # no "TLS enabled" line in mode none


def test_health_unknown_service_watch_reflection_and_stubs(none_server: Dict[str, Any]) -> None:
    ports = none_server["ports"]
    with pytest.raises(GRPCError) as raised:
        health(ports["zap"], service="zoneadministrationpoint.V1ZAPService")
    assert raised.value.status == Status.NOT_FOUND
    assert raised.value.message == "unknown service"

    async def call_stub() -> GRPCError:
        channel = Channel("127.0.0.1", ports["pdp"])
        try:
            async with channel.request(
                "/policydecisionpoint.V1PDPService/AuthorizationCheck",
                Cardinality.UNARY_UNARY,
                empty_pb2.Empty,
                empty_pb2.Empty,
            ) as stream:
                await stream.send_message(empty_pb2.Empty(), end=True)
                with pytest.raises(GRPCError) as raised_stub:
                    await asyncio.wait_for(stream.recv_message(), CALL_TIMEOUT)
                return raised_stub.value
        finally:
            channel.close()

    async def watch_and_list() -> tuple:
        channel = Channel("127.0.0.1", ports["pdp"])
        try:
            watched = []
            for service in ("", "policydecisionpoint.V1PDPService"):
                async with HealthStub(channel).Watch.open() as stream:
                    await stream.send_message(HealthCheckRequest(service=service), end=True)
                    watched.append((await asyncio.wait_for(stream.recv_message(), CALL_TIMEOUT)).status)
                    await stream.cancel()
            async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
                await stream.send_message(ServerReflectionRequest(list_services=""), end=True)
                listed = await asyncio.wait_for(stream.recv_message(), CALL_TIMEOUT)
            return watched, listed
        finally:
            channel.close()

    watched, listed = asyncio.run(watch_and_list())
    assert watched == [SERVING, HealthCheckResponse.SERVICE_UNKNOWN]
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "policydecisionpoint.V1PDPService"} <= names
    assert "zoneadministrationpoint.V1ZAPService" not in names
    stub_error = asyncio.run(call_stub())
    assert stub_error.status == Status.UNIMPLEMENTED


# --------------------------------------------------------------------------- mode tls with files


@pytest.fixture(scope="module")
def tls_server(module_runner: Runner, pki: Pki) -> Dict[str, Any]:
    ports = three_ports()
    args = [
        f"--server-appdata={module_runner.appdata('tls-appdata')}",
        "--server-tls-mode=tls",
        f"--server-tls-cert-file={pki.server.cert}",
        f"--server-tls-key-file={pki.server.key}",
        "--server-tls-ca-file=/nonexistent/ignored-in-mode-tls.pem",
        *port_args(ports),
    ]
    process = module_runner.start(args)
    process.wait_ready(list(ports.values()))
    yield {"ports": ports, "process": process}
    assert process.stop() == 0


def test_tls_serves_health_on_every_port(tls_server: Dict[str, Any], pki: Pki) -> None:
    for port in tls_server["ports"].values():
        assert health(port, client_context(pki.ca.cert)) == SERVING
    assert '"msg": "TLS enabled", "mode": "tls"' in tls_server["process"].stderr
    assert health_fails(tls_server["ports"]["zap"], None), "plaintext client against a TLS port"


def test_tls_versions_and_alpn(tls_server: Dict[str, Any], pki: Pki) -> None:
    port = tls_server["ports"]["pdp"]
    ok13 = tls_exchange(port, client_context(pki.ca.cert))
    assert (ok13["version"], ok13["alpn"], ok13["outcome"]) == ("TLSv1.3", "h2", "settings")
    ok12 = tls_exchange(port, client_context(pki.ca.cert, version=ssl.TLSVersion.TLSv1_2))
    assert (ok12["version"], ok12["outcome"]) == ("TLSv1.2", "settings")

    old = tls_exchange(port, client_context(pki.ca.cert, version=ssl.TLSVersion.TLSv1_1))
    if old["outcome"] and "NO_PROTOCOLS_AVAILABLE" in old["outcome"]:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 even at security level 0")
    assert not old["handshake"]
    assert "PROTOCOL_VERSION" in old["outcome"] or "UNSUPPORTED_PROTOCOL" in old["outcome"]

    no_alpn = tls_exchange(port, client_context(pki.ca.cert, alpn=False))
    assert no_alpn["handshake"] and no_alpn["alpn"] is None
    assert no_alpn["outcome"] != "settings", "a TLS client without ALPN h2 must be dropped after the handshake"


def test_replaced_certificate_is_served_only_after_restart(runner: Runner, pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    (port,) = free_ports(1)
    args = [
        f"--server-appdata={runner.appdata()}",
        "--server-tls-mode=tls",
        f"--server-tls-cert-file={cert}",
        f"--server-tls-key-file={key}",
        f"--server-pdp-grpc-port={port}",
    ]
    der_a = pki.server.certificate.public_bytes(serialization.Encoding.DER)
    der_b = pki.server_b.certificate.public_bytes(serialization.Encoding.DER)
    first = runner.start(args, binary="permguard_data_plane")
    first.wait_ready([port])
    assert tls_exchange(port, client_context(pki.ca.cert))["peer"] == der_a
    shutil.copy(pki.server_b.cert, cert)
    shutil.copy(pki.server_b.key, key)
    assert tls_exchange(port, client_context(pki.ca.cert))["peer"] == der_a
    assert first.stop() == 0
    second = runner.start(args, binary="permguard_data_plane")
    second.wait_ready([port])
    assert tls_exchange(port, client_context(pki.ca.cert))["peer"] == der_b
    assert second.stop(signal.SIGINT) == 0


# --------------------------------------------------------------------------- auto-certificates


def _check_auto_certs(certs: Path) -> bytes:
    """Check every auto-certificate property; return the CA certificate's fingerprint."""
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert sorted(p.name for p in certs.iterdir()) == ["ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem"]
    for path in certs.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for name in ("ca-key.pem", "server-key.pem"):
        data = (certs / name).read_bytes()
        assert data.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
        key = serialization.load_pem_private_key(data, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    ca = x509.load_pem_x509_certificate((certs / "ca-cert.pem").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server-cert.pem").read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "PermGuard Auto CA"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "PermGuard"
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "PermGuard Server"
    assert server.issuer == ca.subject == ca.issuer
    assert not_after(ca) - not_before(ca) == datetime.timedelta(days=3650)
    assert not_after(server) - not_before(server) == datetime.timedelta(days=365)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(minutes=2) <= not_before(server) <= now + datetime.timedelta(seconds=5)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 1
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign and not ca_usage.digital_signature
    server_usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert server_usage.critical and server_usage.value.digital_signature and server_usage.value.key_encipherment
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "permguard"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert not sans.get_values_for_type(x509.UniformResourceIdentifier)
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    ca_public.verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    return ca.fingerprint(hashes.SHA256())


def test_auto_certificates_regenerated_at_every_start(runner: Runner) -> None:
    ports = three_ports()
    appdata = runner.appdata()
    args = [f"--server-appdata={appdata}", *port_args(ports)]
    env = {"PERMGUARD_SERVER_TLS_MODE": "tls"}
    fingerprints = []
    for _attempt in range(2):
        process = runner.start(args, env)
        process.wait_ready(list(ports.values()))
        fingerprints.append(_check_auto_certs(appdata / "certs"))
        for port in ports.values():
            assert health(port, client_context(appdata / "certs" / "ca-cert.pem")) == SERVING
        assert process.stop() == 0
    assert fingerprints[0] != fingerprints[1], "a new CA must be generated at every start"


# --------------------------------------------------------------------------- mtls and external


@pytest.fixture(scope="module", params=["mtls", "external"])
def mtls_server(request: pytest.FixtureRequest, module_runner: Runner, pki: Pki) -> Dict[str, Any]:
    ports = three_ports()
    env = {"PERMGUARD_SERVER_TLS_CA_FILE": str(pki.ca.cert)}
    args = [
        f"--server-appdata={module_runner.appdata()}",
        f"--server-tls-mode={request.param}",
        f"--server-tls-cert-file={pki.server.cert}",
        f"--server-tls-key-file={pki.server.key}",
        *port_args(ports),
    ]
    process = module_runner.start(args, env)
    process.wait_ready(list(ports.values()))
    yield {"ports": ports, "mode": request.param}
    assert process.stop() == 0


def test_mtls_serves_health_with_a_client_certificate(mtls_server: Dict[str, Any], pki: Pki) -> None:
    context = client_context(pki.ca.cert, pki.client.cert, pki.client.key)
    for port in mtls_server["ports"].values():
        assert health(port, context) == SERVING


def test_mtls_refuses_missing_and_foreign_client_certificates(mtls_server: Dict[str, Any], pki: Pki) -> None:
    port = mtls_server["ports"]["zap"]
    missing = tls_exchange(port, client_context(pki.ca.cert))
    # TLS 1.3: the handshake completes on the client side, then the server's alert arrives.
    assert "CERTIFICATE_REQUIRED" in str(missing["outcome"])
    foreign = tls_exchange(port, client_context(pki.ca.cert, pki.other_client.cert, pki.other_client.key))
    assert str(foreign["outcome"]).startswith("ssl:") and foreign["outcome"] != "settings"
    assert health_fails(port, client_context(pki.ca.cert))
    assert health_fails(port, client_context(pki.ca.cert, pki.other_client.cert, pki.other_client.key))


# --------------------------------------------------------------------------- binaries and signals


def test_control_plane_serves_zap_and_pap_only(runner: Runner) -> None:
    zap, pap, pdp = free_ports(3)
    appdata = runner.appdata()
    env = {
        "PERMGUARD_SERVER_PDP_GRPC_PORT": str(pdp),  # not a control-plane setting: ignored
        "PERMGUARD_STORAGE_ENGINE_SQLITE_DBNAME": "Policies",  # lower-cased, ".db" appended
    }
    process = runner.start(
        [f"--server-appdata={appdata}", f"--server-zap-grpc-port={zap}", f"--server-pap-grpc-port={pap}"],
        env,
        binary="permguard_control_plane",
    )
    process.wait_ready([zap, pap])
    assert health(zap) == SERVING and health(pap) == SERVING
    assert not port_is_listening(pdp)
    assert [p.name for p in appdata.iterdir()] == ["policies.db"]
    assert process.stop() == 0


def test_data_plane_serves_pdp_only_and_stops_on_sigterm(runner: Runner) -> None:
    zap, pdp = free_ports(2)
    appdata = runner.appdata()
    process = runner.start(
        [f"--server-appdata={appdata}", f"--server-pdp-grpc-port={pdp}"],
        {"PERMGUARD_SERVER_ZAP_GRPC_PORT": str(zap), "PERMGUARD_STORAGE_ENGINE_SQLITE_DBNAME": "Other"},
        binary="permguard_data_plane",
    )
    process.wait_ready([pdp])
    assert health(pdp) == SERVING
    assert not port_is_listening(zap)
    assert not list(appdata.iterdir()), "a data plane touches no database at start-up"
    assert process.stop(signal.SIGTERM) == 0
    assert "Bootstrapper has stopped the server" in process.stderr
    assert not port_is_listening(pdp)


# --------------------------------------------------------------------------- in-process pieces


@pytest.fixture(scope="module")
def double_module() -> Any:
    return load_module(DOUBLE, "permguard_double_under_test")


def test_rotating_context_swaps_certificates_in_memory(double_module: Any, pki: Pki) -> None:
    pairs = [
        double_module.load_x509_key_pair(str(issued.cert), str(issued.key)) for issued in (pki.server, pki.server_b)
    ]
    rotating = double_module.RotatingServerContext(double_module.build_server_context(pairs[0]))

    async def scenario() -> list:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=rotating.outer)
        port = server.sockets[0].getsockname()[1]
        seen = []
        try:
            for index in range(2):
                if index == 1:
                    rotating.update(double_module.build_server_context(pairs[1]))
                _reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(pki.ca.cert), server_hostname="localhost"
                )
                seen.append(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen == [
        pki.server.certificate.public_bytes(serialization.Encoding.DER),
        pki.server_b.certificate.public_bytes(serialization.Encoding.DER),
    ]


@pytest.mark.parametrize("failure", ["no-ipv6-family", "ipv6-disabled"])
def test_listen_falls_back_to_ipv4_without_ipv6(failure: str, double_module: Any, monkeypatch) -> None:
    real_socket = socket.socket

    class WithoutIpv6(real_socket):
        def __init__(self, family: int = -1, *args: Any, **kwargs: Any) -> None:
            if failure == "no-ipv6-family" and family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)

        def bind(self, address: Any) -> None:
            if self.family == socket.AF_INET6:  # a container with net.ipv6.conf.all.disable_ipv6=1
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            super().bind(address)

    (port,) = free_ports(1)
    monkeypatch.setattr(socket, "socket", WithoutIpv6)
    sock = double_module.listen(port)
    monkeypatch.undo()
    try:
        assert sock.family == socket.AF_INET
        assert sock.getsockname() == ("0.0.0.0", port)
        assert port_is_listening(port)
    finally:
        sock.close()


def test_go_value_parsing(double_module: Any) -> None:
    assert double_module.go_parse_int("0x10") == 16
    assert double_module.go_parse_int("010") == 8
    assert double_module.go_parse_duration("1h2m3.5s") == 3723_500_000_000
    assert double_module.go_format_duration(5 * 60 * 10**9) == "5m0s"
    spec = double_module.FlagSpec("server-pap-tx-cleanup-interval", "duration", 0, "")
    assert spec.env == "PERMGUARD_SERVER_PAP_TX_CLEANUP_INTERVAL"
    assert double_module.cast_env_value(spec, "300") == 300
    assert double_module.go_quote('a"b\n') == '"a\\"b\\n"'


# --------------------------------------------------------------------------- mode spiffe

SPIFFE_CLIENT_ID = "spiffe://example.org/ops/probe"
SPIFFE_WAIT = 10.0  # the double retries like go-spiffe: 1 s, 2 s, 3 s... after each failed attempt


def wait_for(predicate: Any, timeout: float = SPIFFE_WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:  # a handshake refused while an update is half applied counts as "not yet"
            value, last = predicate(), None
        except AssertionError as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s") from last
        time.sleep(0.02)


def serves(port: int, context: Any) -> bool:
    """Whether a health check over ``context`` answers SERVING (False when the handshake fails)."""
    try:
        return health(port, context) == SERVING
    except AssertionError:
        return False


def svid_context(
    agent: Any,
    directory: Path,
    svid: Any = None,
    *,
    spiffe_id: str = SPIFFE_CLIENT_ID,
    version: Optional[ssl.TLSVersion] = None,
) -> ssl.SSLContext:
    """A client context as a SPIFFE client builds it: its SVID, the agent's bundle, no host name check."""
    svid = svid or agent.issue_svid(spiffe_id)
    stem = f"svid-{time.monotonic_ns()}"
    cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert.write_bytes(svid.chain_pem)
    key.write_bytes(svid.key_pem)
    bundle = directory / f"{stem}-bundle.pem"
    bundle.write_bytes(agent.bundle_pem())
    context = client_context(bundle, cert, key, version=version)
    context.check_hostname = False  # an X509-SVID carries no DNS name
    return context


def sign_leaf(ca: Any, sans: list, *, is_ca: bool = False) -> Any:
    """A leaf signed by a SPIRE double CA with arbitrary SANs (a non-SVID from a trusted CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not an svid")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return spire_agent_double.IssuedSvid("", (cert,), key)


def peer_serial(port: int, context: ssl.SSLContext) -> int:
    exchange = tls_exchange(port, context)
    assert exchange["outcome"] == "settings", exchange
    return x509.load_der_x509_certificate(exchange["peer"]).serial_number


@pytest.fixture(scope="module")
def spiffe_run(module_runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A double in mode spiffe whose start is watched from an absent agent to a registered identity.

    The double starts before the agent exists; the agent then comes up with no identity for the double's uid
    (PermissionDenied); only after ``set_identity`` does the double get its SVID and listen.
    """
    directory = Path(tempfile.mkdtemp(prefix="pg-spire-", dir="/tmp"))
    agent = new_spire_agent(directory, {os.getuid() + 1: "spiffe://example.org/someone/else"})
    ports = three_ports()
    args = [
        f"--server-appdata={module_runner.appdata('spiffe-appdata')}",
        "--server-tls-mode=spiffe",
        f"--server-tls-spiffe-socket-path={agent.socket_path}",
        "--log-level=DEBUG",
        *port_args(ports),
    ]
    process = module_runner.start(args)
    seen: Dict[str, Any] = {"ports": ports, "process": process, "agent": agent}
    try:
        wait_for(lambda: "connect: no such file or directory" in process.stderr, what="a failed dial logged")
        agent.start()
        wait_for(lambda: "PermissionDenied desc = no identity issued" in process.stderr, what="PermissionDenied")
        seen["blocked_alive"] = process.proc.poll() is None
        seen["blocked_listening"] = [p for p in ports.values() if port_is_listening(p)]
        seen["blocked_stderr"] = process.stderr
        agent.set_identity(os.getuid(), SPIFFE_SERVER_ID)
        registered = time.monotonic()
        process.wait_ready(list(ports.values()), timeout=SPIFFE_WAIT)
        seen["ready_after"] = time.monotonic() - registered
        seen["dir"] = tmp_path_factory.mktemp("spiffe-client")
        yield seen
        assert process.stop() == 0
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_spiffe_start_blocks_until_the_agent_issues_an_svid(spiffe_run: Dict[str, Any]) -> None:
    assert spiffe_run["blocked_alive"], "the start must block, not fail"
    assert spiffe_run["blocked_listening"] == [], "nothing listens before the first SVID"
    log = spiffe_run["blocked_stderr"]
    agent = spiffe_run["agent"]
    assert f'"address": "unix://{agent.socket_path}"' in log
    assert f"transport: Error while dialing: dial unix {agent.socket_path}: connect: no such file or directory" in log
    assert "Waiting for the first X509-SVID from the SPIFFE Workload API" in log
    assert f"unix:uid:{os.getuid()}" in log, "the wait names the uid that needs a registration entry"
    assert '"retry_in": "1s"' in log and '"retry_in": "2s"' in log, "go-spiffe's linear backoff"
    assert "TLS enabled" not in log
    assert spiffe_run["ready_after"] < 4.0  # the next retry, at most 3 s later
    assert '"msg": "TLS enabled", "mode": "spiffe"' in spiffe_run["process"].stderr


def test_spiffe_serves_every_port_to_a_client_svid(spiffe_run: Dict[str, Any]) -> None:
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    context = svid_context(agent, directory)
    for port in spiffe_run["ports"].values():
        assert health(port, context) == SERVING
    for version in (None, ssl.TLSVersion.TLSv1_2):
        exchange = tls_exchange(spiffe_run["ports"]["pdp"], svid_context(agent, directory, version=version))
        assert exchange["outcome"] == "settings"
        assert exchange["alpn"] == "h2"
        assert exchange["version"] == ("TLSv1.2" if version else "TLSv1.3")
    server_cert = x509.load_der_x509_certificate(exchange["peer"])
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_SERVER_ID]
    assert sans.get_values_for_type(x509.DNSName) == []
    assert server_cert.serial_number == agent.svid(SPIFFE_SERVER_ID).serial_number


def test_spiffe_accepts_any_spiffe_id_of_a_trusted_trust_domain(spiffe_run: Dict[str, Any]) -> None:
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    port = spiffe_run["ports"]["zap"]
    for spiffe_id in ("spiffe://example.org/a", "spiffe://example.org/team/b/c"):
        assert health(port, svid_context(agent, directory, spiffe_id=spiffe_id)) == SERVING, spiffe_id
    # The trust domain's own ID is a valid SPIFFE ID for go-spiffe too (the SPIRE double will not issue one).
    domain_svid = sign_leaf(agent.ca, [x509.UniformResourceIdentifier("spiffe://example.org")])
    assert health(port, svid_context(agent, directory, domain_svid)) == SERVING


def test_spiffe_refuses_a_client_without_a_certificate(spiffe_run: Dict[str, Any]) -> None:
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    bundle = directory / "bundle-only.pem"
    bundle.write_bytes(agent.bundle_pem())
    context = client_context(bundle)
    context.check_hostname = False
    port = spiffe_run["ports"]["pap"]
    assert "CERTIFICATE_REQUIRED" in str(tls_exchange(port, context)["outcome"])  # TLS 1.3 alert 116, as Go
    assert health_fails(port, context)


def test_spiffe_refuses_an_svid_from_another_ca(spiffe_run: Dict[str, Any]) -> None:
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    stranger = spire_agent_double.CertificateAuthority.generate("example.org", 3600)
    svid = stranger.issue_svid(SPIFFE_CLIENT_ID, 600)  # a well-formed SVID of the same trust domain name
    context = svid_context(agent, directory, svid)
    outcome = str(tls_exchange(spiffe_run["ports"]["zap"], context)["outcome"])
    assert outcome.startswith("ssl:") and "UNKNOWN_CA" in outcome, outcome
    assert health_fails(spiffe_run["ports"]["zap"], context)


@pytest.mark.parametrize(
    ("sans", "error"),
    [
        ([], "x509svid: could not get leaf SPIFFE ID: certificate contains no URI SAN"),
        ([x509.DNSName("localhost")], "x509svid: could not get leaf SPIFFE ID: certificate contains no URI SAN"),
        (
            [
                x509.UniformResourceIdentifier("spiffe://example.org/a"),
                x509.UniformResourceIdentifier("spiffe://example.org/b"),
            ],
            "x509svid: could not get leaf SPIFFE ID: certificate contains more than one URI SAN",
        ),
        (
            [x509.UniformResourceIdentifier("https://example.org/a")],
            "x509svid: could not get leaf SPIFFE ID: scheme is missing or invalid",
        ),
        (
            [x509.UniformResourceIdentifier("spiffe://other.org/a")],
            'x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "other.org"',
        ),
    ],
    ids=["no-san", "dns-only", "two-uris", "not-spiffe", "unknown-trust-domain"],
)
def test_spiffe_refuses_a_trusted_certificate_that_is_not_an_svid(
    spiffe_run: Dict[str, Any], sans: list, error: str
) -> None:
    """go-spiffe's tlsconfig verifies the peer as an X509-SVID: a certificate from the trusted CA is not enough."""
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    context = svid_context(agent, directory, sign_leaf(agent.ca, sans))
    port = spiffe_run["ports"]["pdp"]
    exchange = tls_exchange(port, context)
    assert exchange["outcome"] != "settings", "the connection must be closed before HTTP/2"
    assert health_fails(port, context)
    assert json.dumps(error) in spiffe_run["process"].stderr  # as the JSON log line quotes it


def test_spiffe_rotation_is_served_in_memory(spiffe_run: Dict[str, Any]) -> None:
    agent, directory, process = spiffe_run["agent"], spiffe_run["dir"], spiffe_run["process"]
    port = spiffe_run["ports"]["zap"]
    client = svid_context(agent, directory)
    before = peer_serial(port, client)
    pid = process.proc.pid
    started = time.monotonic()
    serials = agent.rotate()
    new_serial = serials[SPIFFE_SERVER_ID]
    assert new_serial != before
    wait_for(lambda: peer_serial(port, client) == new_serial, timeout=5, what="the rotated SVID served")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"rotation took {elapsed:.3f}s"
    assert process.proc.pid == pid and process.proc.poll() is None, "no restart"
    for other in spiffe_run["ports"].values():
        assert peer_serial(other, client) == new_serial
        assert health(other, client) == SERVING
    assert "X509-SVID rotated in memory" in process.stderr


def test_spiffe_bundle_rotation_is_served_in_memory(spiffe_run: Dict[str, Any]) -> None:
    """A CA rotation changes the bundle: new client SVIDs are trusted, and a dropped CA no longer is."""
    agent, directory = spiffe_run["agent"], spiffe_run["dir"]
    port = spiffe_run["ports"]["pap"]
    old_ca_svid = agent.issue_svid(SPIFFE_CLIENT_ID)
    agent.rotate_ca()  # the old CA stays in the bundle
    new_ca_svid = agent.issue_svid(SPIFFE_CLIENT_ID)
    assert new_ca_svid.leaf.issuer != old_ca_svid.leaf.issuer
    server_serial = agent.svid(SPIFFE_SERVER_ID).serial_number
    wait_for(lambda: peer_serial(port, svid_context(agent, directory, new_ca_svid)) == server_serial, timeout=5)
    # The SVID and the bundle may reach the double in separate updates: wait until both apply.
    for svid in (new_ca_svid, old_ca_svid):
        ctx = svid_context(agent, directory, svid)
        wait_for(lambda ctx=ctx: serves(port, ctx), timeout=5, what="a client SVID from either CA is served")
    agent.rotate_ca(keep_previous=False)  # a trust break: only the newest CA remains
    server_serial = agent.svid(SPIFFE_SERVER_ID).serial_number
    newest = svid_context(agent, directory)
    wait_for(lambda: peer_serial(port, newest) == server_serial, timeout=5)
    assert health_fails(port, svid_context(agent, directory, old_ca_svid))


def test_spiffe_endpoint_socket_environment(runner: Runner, short_dir: Path) -> None:
    """Without the flag the double reads SPIFFE_ENDPOINT_SOCKET, a full unix:/// URI (the agent up already)."""
    (port,) = free_ports(1)
    with new_spire_agent(short_dir, {os.getuid(): SPIFFE_SERVER_ID}) as agent:
        process = runner.start(
            [f"--server-appdata={runner.appdata()}", f"--server-pdp-grpc-port={port}"],
            {"PERMGUARD_SERVER_TLS_MODE": "spiffe", "SPIFFE_ENDPOINT_SOCKET": agent.endpoint},
            binary="permguard_data_plane",
        )
        process.wait_ready([port], timeout=SPIFFE_WAIT)
        assert health(port, svid_context(agent, short_dir)) == SERVING
        assert f'"address": "{agent.endpoint}"' in process.stderr
        assert "Waiting for the first X509-SVID" not in process.stderr, "an issued identity is served at once"
        assert process.stop() == 0


def test_spiffe_sigterm_while_blocked_ends_the_process(runner: Runner, short_dir: Path) -> None:
    """Like the real server, which subscribes to signals only after building its credentials: killed by SIGTERM."""
    (port,) = free_ports(1)
    socket_path = short_dir / "absent" / "api.sock"
    process = runner.start(
        [
            f"--server-appdata={runner.appdata()}",
            f"--server-pdp-grpc-port={port}",
            "--server-tls-mode=spiffe",
            f"--server-tls-spiffe-socket-path={socket_path}",
        ],
        binary="permguard_data_plane",
    )
    wait_for(lambda: "Waiting for the first X509-SVID" in process.stderr, what="the wait logged")
    assert process.proc.poll() is None
    assert process.stop(signal.SIGTERM) == -signal.SIGTERM
    assert not port_is_listening(port)
    assert "terminated by it" in process.stderr and "Traceback" not in process.stderr


def test_spiffe_invalid_argument_from_the_agent_fails_the_start(runner: Runner, short_dir: Path) -> None:
    """InvalidArgument is the one answer go-spiffe does not retry: the source is not created."""
    socket_path = str(short_dir / "picky.sock")

    async def refuse(stream: Any) -> None:
        await stream.recv_message()
        raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")

    class Picky:
        def __mapping__(self) -> Dict[str, Any]:
            return {
                "/SpiffeWorkloadAPI/FetchX509SVID": Handler(
                    refuse, Cardinality.UNARY_STREAM, empty_pb2.Empty, empty_pb2.Empty
                )
            }

    async def serve() -> Server:
        server = Server([Picky()])
        await server.start(path=socket_path)
        return server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
    try:
        (port,) = free_ports(1)
        process = runner.run(
            [
                f"--server-appdata={runner.appdata()}",
                f"--server-pdp-grpc-port={port}",
                "--server-tls-mode=spiffe",
                f"--server-tls-spiffe-socket-path={socket_path}",
            ],
            binary="permguard_data_plane",
        )
    finally:
        loop.call_soon_threadsafe(server.close)
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    text = (
        "spiffe: failed to create X509 source: rpc error: code = InvalidArgument desc = security header missing "
        "from request"
    )
    assert process.proc.returncode == 1
    assert f"Error: {text}" in process.stderr
    assert process.stdout.rstrip("\n").splitlines()[-1] == text


def test_spiffe_context_parsing_and_peer_checks(double_module: Any) -> None:
    """In-process: hints, federated bundles, and the trust-domain binding of a client SVID."""
    local = spire_agent_double.CertificateAuthority.generate("example.org", 3600)
    remote = spire_agent_double.CertificateAuthority.generate("partner.net", 3600)
    first = local.issue_svid(SPIFFE_SERVER_ID, 600)
    second = local.issue_svid("spiffe://example.org/second", 600)
    response = double_module.X509SVIDResponse()
    der = serialization.Encoding.DER
    for svid, hint in ((first, "internal"), (second, "internal")):
        response.svids.add(
            spiffe_id=svid.spiffe_id,
            x509_svid=svid.chain_der,
            x509_svid_key=svid.key_der,
            bundle=local.certificate.public_bytes(der),
            hint=hint,
        )
    response.federated_bundles["spiffe://partner.net"] = remote.certificate.public_bytes(der)
    context = double_module.parse_x509_context(response)
    assert [s.spiffe_id for s in context.svids] == [SPIFFE_SERVER_ID], "the first SVID of a hint wins"
    assert sorted(context.bundles) == ["example.org", "partner.net"]

    def check(svid: Any) -> Optional[str]:
        return double_module.verify_peer_svid(svid.leaf.public_bytes(der), context)

    assert check(remote.issue_svid("spiffe://partner.net/client", 600)) is None, "a federated SPIFFE ID is accepted"
    forged = remote.issue_svid("spiffe://example.org/forged", 600)  # partner's CA vouching for our trust domain
    assert check(forged) == "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"
    assert check(local.issue_svid("spiffe://example.org/any/one", 600)) is None
    assert double_module.verify_peer_svid(None, context) == "tls: client didn't provide a certificate"

    broken = double_module.X509SVIDResponse()
    broken.svids.add(spiffe_id=SPIFFE_SERVER_ID, x509_svid=first.chain_der, x509_svid_key=second.key_der)
    with pytest.raises(double_module.DoubleError, match="leaf certificate does not match private key"):
        double_module.parse_x509_context(broken)
    with pytest.raises(double_module.DoubleError, match="no SVIDs in response"):
        double_module.parse_x509_context(double_module.X509SVIDResponse())


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:///run/spire/agent.sock", ("/run/spire/agent.sock", None, None)),
        ("unix:/run/spire/agent.sock", ("/run/spire/agent.sock", None, None)),
        ("tcp://127.0.0.1:8081", (None, "127.0.0.1", 8081)),
        ("tcp://[::1]:8081", (None, "::1", 8081)),
    ],
)
def test_spiffe_dial_targets(double_module: Any, address: str, expected: tuple) -> None:
    target = double_module.spiffe_dial_target(address)
    assert (target.path, target.host, target.port) == expected


# --------------------------------------------------------------------------- release builder

ASSETS = [
    f"{binary}_Linux_{arch}.tar.gz"
    for binary in ("permguard_all_in_one", "permguard_control_plane", "permguard_data_plane")
    for arch in ("x86_64", "arm64")
]


def test_build_release_assets_checksums_and_reproducibility(tmp_path: Path) -> None:
    builder = load_module(BUILD_RELEASE, "permguard_build_release_under_test")
    first = builder.build_release(tmp_path / "one", "0.0.52")
    second = builder.build_release(tmp_path / "two", "0.0.52")
    assert first == tmp_path / "one" / "v0.0.52"
    assert sorted(p.name for p in first.iterdir()) == sorted([*ASSETS, "checksums.txt"])
    lines = (first / "checksums.txt").read_text().splitlines()
    assert lines == sorted(lines) and len(lines) == len(ASSETS)
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((first / name).read_bytes()).hexdigest() == digest
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} is not reproducible"
    for asset in ASSETS:
        binary = asset.split("_Linux_")[0]
        with tarfile.open(first / asset, "r:gz") as archive:
            member = archive.getmember(binary)
            assert member.isfile() and member.mode == 0o755
            assert (member.uid, member.gid) == (0, 0)
            assert all("/" not in m.name for m in archive.getmembers())
            payload = archive.extractfile(member).read()
        assert payload.startswith(b"#!/usr/bin/python3\n")
        assert b'__version__ = "0.0.52"' in payload
    with (first / ASSETS[0]).open("rb") as handle:
        assert handle.read(10)[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0"
