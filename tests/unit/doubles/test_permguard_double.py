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
import shutil
import signal
import socket
import ssl
import stat
import sys
import tarfile
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
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from .conftest import DOUBLE, Pki, Runner, free_ports, port_is_listening

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
        "spiffe-socket": (
            ["--server-tls-mode=spiffe", f"--server-tls-spiffe-socket-path={sock}"],
            {},
            "run",
            spiffe_prefix,
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
    "spiffe-socket",
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
    if case == "spiffe-socket":
        assert f"unix://{tmp_path / 'agent.sock'}" in process.stdout
        assert "not implemented by this double" in process.stdout
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
