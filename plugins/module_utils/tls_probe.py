# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove gRPC endpoints with a real TLS handshake and a ``grpc.health.v1.Health/Check``.

The engine behind ``permguard.secure.grpc_tls_probe``, reusable by roles and other plugins:

* :func:`expand_endpoints` and :func:`parse_endpoint` turn ``grpc://`` / ``grpcs://`` URLs, or hosts
  times named ports, into :class:`Endpoint` objects;
* :func:`validate_options` checks a :class:`ProbeOptions` and raises :class:`ProbeArgumentError`
  naming the offending option;
* :func:`run_probes` probes every endpoint concurrently within one overall timeout and returns one
  result dict per endpoint (facts, and a ``diagnosis`` ``{class, message, fix}`` on failure);
* :func:`summary_line` renders a result as one human line.

The RPC runs through grpclib over our own ``ssl.SSLContext`` (grpcio cannot show the peer
certificate, skip verification, or verify a SPIFFE peer without a DNS name). Diagnosis classes are
stable; :data:`DIAGNOSIS_CLASSES` lists them with their fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import hashlib
import inspect
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

try:
    from grpclib.client import Channel
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
except ImportError as exc:  # reported by the module through missing_required_lib
    HAS_GRPCLIB = False
    GRPCLIB_IMPORT_ERROR: Optional[BaseException] = exc
    Channel = object  # keeps the subclass below importable for ansible-test's import check
else:
    HAS_GRPCLIB = True
    GRPCLIB_IMPORT_ERROR = None

try:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
except ImportError as exc:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[BaseException] = exc
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

from ansible_collections.permguard.secure.plugins.module_utils.spiffe_workload import (
    WorkloadApiError,
    check_socket,
)
from ansible_collections.permguard.secure.plugins.module_utils.spiffe_workload import (
    user_label as _user_label,
)

#: Permguard's gRPC ports, by service: zones, ledgers, decisions.
DEFAULT_PORTS: Dict[str, int] = {"zap": 9091, "pap": 9092, "pdp": 9094}
#: Endpoint schemes, as the Permguard CLI spells them: plaintext and TLS.
SCHEMES = ("grpc", "grpcs")
#: Issuer common name of the certificates the server generates in mode tls without cert paths.
AUTO_CA_COMMON_NAME = "PermGuard Auto CA"
#: The SPIRE agent's default Workload API socket.
DEFAULT_SPIFFE_SOCKET = "/tmp/spire-agent/public/api.sock"

# The fix of no_workload_identity; the probe fills in the user it runs as (what SPIRE's unix attestor sees).
_NO_IDENTITY_FIX = (
    "The SPIRE agent answered but has no registration entry for this probe, which runs as {who}: SPIRE "
    "attests a workload by the Unix user of its process. Create an entry for that user, for example "
    "'spire-server entry create -parentID <the agent's SPIFFE ID> -spiffeID spiffe://<trust-domain>/<probe> "
    "-selector unix:uid:{uid}' (the agent needs its unix WorkloadAttestor; in a Kubernetes pod use its k8s:ns "
    "and k8s:sa selectors instead), wait a few seconds for the agent to sync it, and probe again; or run the task "
    "as a user that already has an entry (become_user)."
)

#: Every diagnosis class, with the fix an operator applies. Class names are a stable interface.
DIAGNOSIS_CLASSES: Dict[str, str] = {
    "plaintext_to_tls_server": (
        "The server runs a TLS mode (tls, mtls, external or spiffe): use grpcs:// for this endpoint, with "
        "ca_file (and cert_file/key_file when the server requires client certificates)."
    ),
    "tls_to_plaintext_server": (
        "The server runs in mode none (plaintext): use grpc:// for this endpoint, or start the server with "
        "--server-tls-mode tls (or mtls, external, spiffe) and its certificate."
    ),
    "unknown_authority": (
        "Give ca_file with the CA that issued the server certificate (certificate signed by unknown authority); "
        "skip_verify is for development only."
    ),
    "server_without_cert_paths": (
        "The server runs mode tls without --server-tls-cert-file/--server-tls-key-file, so it generated a new "
        "'PermGuard Auto CA' at start, and does so again at every restart. Give it a certificate and key from "
        "your CA (PERMGUARD_SERVER_TLS_CERT_FILE, PERMGUARD_SERVER_TLS_KEY_FILE); to test, trust "
        "<appdata>/certs/ca-cert.pem as ca_file, knowing it changes on restart."
    ),
    "certificate_expired": (
        "Renew the server certificate and restart the server: Permguard reads certificates only at start-up."
    ),
    "certificate_not_yet_valid": (
        "The certificate becomes valid in the future: check the clocks (NTP) of this host and of the CA host, "
        "or reissue the certificate."
    ),
    "hostname_mismatch": (
        "Connect by a name the certificate lists, set server_name to one of them, or reissue the certificate "
        "with this name in its subject alternative names."
    ),
    "not_valid_for_any_names": (
        "The certificate has no DNS or IP name (an X.509-SVID carries only a spiffe:// URI SAN), so it cannot "
        "pass a host name check: verify it as SPIFFE with expected_spiffe_id or expected_trust_domain (the "
        "chain is still checked against ca_file), or use spiffe_socket for mode spiffe."
    ),
    "certificate_invalid": (
        "Reissue the server certificate from the CA in ca_file for server authentication "
        "(extended key usage serverAuth)."
    ),
    "client_cert_required": (
        "The server (mode mtls, external or spiffe) requires a client certificate: give cert_file and key_file "
        "issued by the CA in its --server-tls-ca-file, or spiffe_socket for mode spiffe."
    ),
    "client_cert_rejected": (
        "The server does not accept this client certificate: issue cert_file from the CA in the server's "
        "--server-tls-ca-file, with extended key usage clientAuth, and check that it has not expired."
    ),
    "unexpected_spiffe_id": (
        "Check the SPIRE registration entry of the server workload, or correct expected_spiffe_id / "
        "expected_trust_domain."
    ),
    "workload_api_unavailable": (
        "Start the SPIRE agent and point spiffe_socket at its Workload API socket "
        "(SPIRE's default is " + DEFAULT_SPIFFE_SOCKET + ")."
    ),
    "no_workload_identity": _NO_IDENTITY_FIX.format(who="the user named in the message", uid="<uid>"),
    "nothing_listening": (
        "Start the server (systemctl status permguard; journalctl -u permguard) and check the port (zap 9091, "
        "pap 9092, pdp 9094). A server with incomplete TLS settings exits at start with errors such as "
        "'tls: mode=mtls requires cert-file and key-file' or "
        "'tls: mode=tls requires either cert-file+key-file or auto-cert-dir'."
    ),
    "host_unreachable": "Check the address, the routes and the firewalls between this host and the server.",
    "name_resolution_failed": "Check the host name: it does not resolve (DNS or /etc/hosts).",
    "timeout": "See the message for the phase that did not finish; raise timeout only for a slow link.",
    "connection_closed": "The server closed the connection: its log says why.",
    "tls_handshake_failed": (
        "Check that this port serves TLS 1.2 or newer with ALPN h2, as every Permguard TLS mode does."
    ),
    "health_not_serving": "The server reports that it is not serving: check its log and its storage (appdata).",
    "health_unimplemented": (
        "This port does not offer grpc.health.v1.Health, which every Permguard port registers: "
        "check the host and the port."
    ),
    "health_service_unknown": (
        "The health server does not know this service name: leave health_service empty "
        '(Permguard registers the overall service "").'
    ),
    "grpc_error": "The server answered Health/Check with an error status: check its log.",
}

_TIMEOUT_FIXES = {
    "connect": "Nothing answered the TCP connection: a firewall drops packets to this port, or the host is down.",
    "handshake": (
        "The port accepted TCP but never finished a TLS handshake: check that it is the Permguard port "
        "and not a proxy or a stuck process."
    ),
    "rpc": "The server accepted the connection but did not answer Health/Check in time: check its load and log.",
}

# OpenSSL verification codes (X509_V_ERR_*) mapped to diagnosis classes.
_VERIFY_CLASSES = {
    2: "unknown_authority",
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    18: "unknown_authority",
    19: "unknown_authority",
    20: "unknown_authority",
    21: "unknown_authority",
    62: "hostname_mismatch",
    64: "hostname_mismatch",
}

# TLS alert descriptions (RFC 8446 section 6) a probe may meet.
_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    80: "internal_error",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}
_ALERT_CERT_REQUIRED = 116
_ALERTS_REJECTING_CLIENT_CERT = {42, 43, 44, 45, 46, 48, 49}

_TLS_CONTENT_ALERT = 21
_TLS_CONTENT_HANDSHAKE = 22
_TLS_SERVER_HELLO = 2
_TLS_CERTIFICATE_REQUEST = 13

_HEALTH_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_FOLLOW_UP_BUDGET = 2.0  # seconds a failure may spend on a second look at the port
_LINGER_AFTER_HANDSHAKE = 1.0  # seconds to wait for a TLS 1.3 server's post-handshake alert


class ProbeArgumentError(ValueError):
    """An invalid probe argument; ``option`` names it, ``str()`` reads ``"<option>: <problem>"``."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """One gRPC endpoint: ``grpc://`` (plaintext) or ``grpcs://`` (TLS), host and port, optional name."""

    scheme: str
    host: str
    port: int
    name: Optional[str] = None

    @property
    def tls(self) -> bool:
        """Whether this endpoint speaks TLS."""
        return self.scheme == "grpcs"

    @property
    def url(self) -> str:
        """The endpoint as a URL; IPv6 literals are bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(url: str, name: Optional[str] = None, option: str = "endpoints") -> Endpoint:
    """Parse ``grpc://host:port`` or ``grpcs://host:port``; raise :class:`ProbeArgumentError` otherwise."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError as exc:
        raise ProbeArgumentError(option, f"{url!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in SCHEMES:
        raise ProbeArgumentError(
            option, f"{url!r} has unknown scheme {parts.scheme!r}: use grpc:// (plaintext) or grpcs:// (TLS)"
        )
    if not parts.hostname:
        raise ProbeArgumentError(option, f"{url!r} has no host")
    if port is None:
        raise ProbeArgumentError(option, f"{url!r} has no port (Permguard uses zap 9091, pap 9092, pdp 9094)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ProbeArgumentError(option, f"{url!r} must be only scheme://host:port")
    return Endpoint(parts.scheme, parts.hostname, port, name)


def expand_endpoints(
    endpoints: Optional[List[str]] = None,
    hosts: Optional[List[str]] = None,
    ports: Optional[Dict[str, int]] = None,
    scheme: str = "grpcs",
) -> List[Endpoint]:
    """Return the endpoint list: ``endpoints`` as given, then every host times every named port."""
    result = [parse_endpoint(url) for url in endpoints or []]
    if hosts:
        if scheme not in SCHEMES:
            raise ProbeArgumentError("scheme", f"{scheme!r} is not one of {', '.join(SCHEMES)}")
        ports = DEFAULT_PORTS if ports is None else ports
        if not ports:
            raise ProbeArgumentError("ports", "needs at least one name: port pair when hosts is given")
        for host in hosts:
            for name, port in ports.items():
                result.append(Endpoint(scheme, str(host).strip("[]"), _port_number(name, port), str(name)))
    if not result:
        raise ProbeArgumentError("endpoints", "give at least one endpoint, or hosts")
    return result


def _port_number(name: str, port: Any) -> int:
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = 0
    if not 0 < number < 65536:
        raise ProbeArgumentError("ports", f"{name}: {port!r} is not a port number (1-65535)")
    return number


# --------------------------------------------------------------------------- options


@dataclass
class WorkloadIdentity:
    """An X.509-SVID with its key and the trust bundle, in PEM, as a SPIFFE Workload API hands them out."""

    spiffe_id: str
    cert_chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes


@dataclass
class ProbeOptions:
    """How to probe: trust, client identity, SPIFFE expectations, health service and the overall timeout.

    ``identity`` is filled from ``spiffe_socket`` by :func:`probe_all`, or given directly by a caller that
    already holds an X.509-SVID; it replaces ``ca_file``, ``cert_file`` and ``key_file``.
    """

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None
    skip_verify: bool = False
    health_service: str = ""
    timeout: float = 10.0
    expected_spiffe_id: Optional[str] = None
    expected_trust_domain: Optional[str] = None
    spiffe_socket: Optional[str] = None
    identity: Optional[WorkloadIdentity] = None

    @property
    def spiffe(self) -> bool:
        """Whether the peer is verified as a SPIFFE workload (chain plus ID) rather than by host name."""
        return bool(self.expected_spiffe_id or self.expected_trust_domain or self.spiffe_socket or self.identity)

    @property
    def has_client_identity(self) -> bool:
        """Whether the probe presents a client certificate (files, Workload API or a given identity)."""
        return bool(self.cert_file or self.spiffe_socket or self.identity)

    @property
    def verification(self) -> str:
        """How a TLS peer is verified: ``skipped``, ``spiffe`` or ``hostname``."""
        if self.skip_verify:
            return "skipped"
        return "spiffe" if self.spiffe else "hostname"


def validate_options(opts: ProbeOptions) -> None:
    """Check option combinations and files; raise :class:`ProbeArgumentError` naming the option."""
    _validate_combinations(opts)
    for option in ("ca_file", "cert_file", "key_file"):
        path = getattr(opts, option)
        if path:
            _check_readable(option, path)
    if opts.spiffe_socket:
        _check_socket_path(opts.spiffe_socket)
    _validate_spiffe_values(opts)
    build_ssl_context(opts)  # loads the CA, the certificate and the key, so bad PEM is caught here


def _validate_combinations(opts: ProbeOptions) -> None:
    if opts.skip_verify and opts.ca_file:
        raise ProbeArgumentError(
            "skip_verify", "cannot be combined with ca_file: either verify against the CA or skip verification"
        )
    if bool(opts.cert_file) != bool(opts.key_file):
        given, missing = ("cert_file", "key_file") if opts.cert_file else ("key_file", "cert_file")
        raise ProbeArgumentError(missing, f"is required with {given}: a client certificate needs its key")
    if opts.skip_verify and (opts.expected_spiffe_id or opts.expected_trust_domain):
        raise ProbeArgumentError("skip_verify", "cannot be combined with expected_spiffe_id/expected_trust_domain")
    if opts.spiffe_socket:
        clash = [name for name in ("ca_file", "cert_file", "key_file", "skip_verify") if getattr(opts, name)]
        if clash:
            raise ProbeArgumentError(
                "spiffe_socket", f"takes trust and identity from the Workload API; drop {', '.join(clash)}"
            )
    if not opts.timeout or opts.timeout <= 0:
        raise ProbeArgumentError("timeout", f"must be a positive number of seconds, not {opts.timeout!r}")


def _validate_spiffe_values(opts: ProbeOptions) -> None:
    spiffe_id = opts.expected_spiffe_id
    if spiffe_id and (not spiffe_id.startswith("spiffe://") or not _trust_domain_of(spiffe_id)):
        raise ProbeArgumentError("expected_spiffe_id", f"{spiffe_id!r} is not a spiffe://trust-domain/path ID")
    domain = opts.expected_trust_domain
    if domain and ("/" in domain.replace("spiffe://", "", 1) or not domain.replace("spiffe://", "", 1)):
        raise ProbeArgumentError("expected_trust_domain", f"{domain!r} is not a trust domain name")


def _check_readable(option: str, path: str) -> None:
    if not os.path.exists(path):
        raise ProbeArgumentError(option, f"{path} does not exist")
    if not os.path.isfile(path):
        raise ProbeArgumentError(option, f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ProbeArgumentError(option, f"cannot read {path}: {exc.strerror}") from exc


def _socket_path(value: str) -> str:
    # SPIFFE_ENDPOINT_SOCKET holds unix:///path; the server flag holds a bare path. Accept both.
    return value[len("unix://") :] if value.startswith("unix://") else value


def _check_socket_path(value: str) -> None:
    path = _socket_path(value)
    if not os.path.isabs(path):
        raise ProbeArgumentError("spiffe_socket", f"{value!r} must be an absolute path (or unix:///path)")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # a missing socket is a finding (workload_api_unavailable), not an argument error
    except OSError as exc:
        raise ProbeArgumentError("spiffe_socket", f"cannot access {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise ProbeArgumentError("spiffe_socket", f"{path} is not a Unix socket")


# --------------------------------------------------------------------------- TLS context


class _TLSRecorder:
    """Watches handshake messages and alerts through OpenSSL's message callback."""

    def __init__(self) -> None:
        self.active = False
        self.server_hello = False
        self.cert_requested = False
        self.alerts_received: List[int] = []

    def attach(self, ctx: ssl.SSLContext) -> None:
        # _msg_callback is CPython's (3.8+) only hook that sees a TLS 1.3 CertificateRequest and alerts.
        if hasattr(ctx, "_msg_callback"):
            ctx._msg_callback = self  # type: ignore[attr-defined]
            self.active = True

    def __call__(  # noqa: PLR0917 - the signature is ssl's message callback
        self, conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: Any
    ) -> None:
        if direction != "read":
            return
        if content_type == _TLS_CONTENT_HANDSHAKE:
            self.server_hello = self.server_hello or msg_type == _TLS_SERVER_HELLO
            self.cert_requested = self.cert_requested or msg_type == _TLS_CERTIFICATE_REQUEST
        elif content_type == _TLS_CONTENT_ALERT and len(data) >= 2:
            self.alerts_received.append(data[1])


def build_ssl_context(opts: ProbeOptions, verify: bool = True, recorder: Optional[Any] = None) -> ssl.SSLContext:
    """Build the client context: TLS >= 1.2, ALPN ``h2``, trust, optional client certificate.

    Host names are checked in ``hostname`` verification only, and never against the subject CN (as Go
    clients do). With ``verify=False`` the chain is not checked either (used by second looks at a failed
    port). ``recorder`` (internal) is attached as the TLS message callback.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if hasattr(ctx, "hostname_checks_common_name"):
        ctx.hostname_checks_common_name = False
    if verify and not opts.skip_verify:
        ctx.check_hostname = opts.verification == "hostname"
        _load_trust(ctx, opts)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if opts.identity is not None:
        load_client_identity_from_memory(ctx, opts.identity.cert_chain_pem, opts.identity.key_pem)
    elif opts.cert_file and opts.key_file:
        _load_client_identity(ctx, opts.cert_file, opts.key_file)
    if recorder is not None:
        recorder.attach(ctx)
    return ctx


def _load_trust(ctx: ssl.SSLContext, opts: ProbeOptions) -> None:
    if opts.identity is not None:
        ctx.load_verify_locations(cadata=opts.identity.bundle_pem.decode("ascii"))
        return
    if not opts.ca_file:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    try:
        ctx.load_verify_locations(cafile=opts.ca_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ProbeArgumentError("ca_file", f"{opts.ca_file} holds no usable PEM CA certificate ({exc})") from exc


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def _load_client_identity(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ProbeArgumentError("key_file", f"{key_file} does not match the certificate in {cert_file}") from exc
        if not _is_pem_certificate(cert_file):
            raise ProbeArgumentError("cert_file", f"{cert_file} holds no PEM certificate") from exc
        raise ProbeArgumentError(
            "key_file", f"{key_file} holds no usable unencrypted PEM private key ({_reason(exc)})"
        ) from exc


def _is_pem_certificate(path: str) -> bool:
    with open(path, "rb") as handle:
        data = handle.read()
    if not HAS_CRYPTOGRAPHY:
        return b"-----BEGIN CERTIFICATE-----" in data
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        return False
    return True


def load_client_identity_from_memory(ctx: ssl.SSLContext, cert_chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key held in memory (for example an X.509-SVID) into ``ctx``.

    Python's ``ssl`` loads identities only from files, so they pass through a private (0700) temporary
    directory that is removed at once.
    """
    with tempfile.TemporaryDirectory(prefix="grpc-tls-probe-") as directory:
        cert_file = os.path.join(directory, "cert.pem")
        key_file = os.path.join(directory, "key.pem")
        for path, data in ((cert_file, cert_chain_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        ctx.load_cert_chain(cert_file, key_file)


# --------------------------------------------------------------------------- certificate facts


def certificate_facts(der: bytes, chain_length: Optional[int] = None, now: Optional[datetime.datetime] = None) -> dict:
    """Describe a DER certificate: subject, issuer, serial, validity, days left, SHA-256 and SANs.

    Works with cryptography 38 (Debian 12) and newer: the ``*_utc`` date properties are used when present.
    """
    cert = x509.load_der_x509_certificate(der)
    not_before, not_after = _validity(cert)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    dns, ips, uris = _subject_alt_names(cert)
    spiffe_ids = [uri for uri in uris if uri.lower().startswith("spiffe://")]
    digest = hashlib.sha256(der).hexdigest().upper()
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "issuer_common_name": _common_name(cert.issuer),
        "serial": format(cert.serial_number, "X"),
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "days_left": (not_after - now).days,
        "sha256": ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
        "dns_sans": dns,
        "ip_sans": ips,
        "uri_sans": uris,
        "spiffe_id": spiffe_ids[0] if len(spiffe_ids) == 1 else None,
        "chain_length": chain_length,
    }


def _validity(cert: Any) -> Tuple[datetime.datetime, datetime.datetime]:
    utc = datetime.timezone.utc
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=utc)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=utc)
    return before, after


def _subject_alt_names(cert: Any) -> Tuple[List[str], List[str], List[str]]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    dns = list(sans.get_values_for_type(x509.DNSName))
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    uris = list(sans.get_values_for_type(x509.UniformResourceIdentifier))
    return dns, ips, uris


def _common_name(name: Any) -> Optional[str]:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else None


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _trust_domain_of(spiffe_id: str) -> str:
    return spiffe_id[len("spiffe://") :].split("/", 1)[0].lower()


def _chain_length(ssl_object: Any) -> Optional[int]:
    # Public since Python 3.13; the same method sits on the private _sslobj from 3.10 on.
    for owner in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(owner, "get_unverified_chain", None)
        if getter is not None:
            chain = getter()
            return len(chain) if chain is not None else None
    return None


def _peer_facts(ssl_object: Any) -> Optional[dict]:
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, AttributeError):  # the server already tore the connection down
        return None
    if not der or not HAS_CRYPTOGRAPHY:
        return None
    return certificate_facts(der, _chain_length(ssl_object))


def _tls_facts(ssl_object: Any, recorder: _TLSRecorder, opts: ProbeOptions) -> dict:
    cipher = ssl_object.cipher()
    requested = recorder.cert_requested if recorder.active else None
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": ssl_object.selected_alpn_protocol(),
        "client_cert_requested": requested,
        "client_cert_presented": opts.has_client_identity and requested is not False,
        "client_spiffe_id": opts.identity.spiffe_id if opts.identity is not None else None,
    }


# --------------------------------------------------------------------------- connection


class _Trace:
    """Phase, timings and transport observations of one probe attempt."""

    def __init__(self) -> None:
        self.phase = "connect"
        self.marks: Dict[str, float] = {"start": time.perf_counter()}
        self.transport: Any = None
        self.first_bytes = b""
        self.lost: Optional[BaseException] = None

    def enter(self, phase: str) -> None:
        self.marks[phase] = time.perf_counter()
        self.phase = phase

    def timings(self) -> dict:
        marks = dict(self.marks)
        marks.setdefault("end", time.perf_counter())

        def span(first: str, last: str) -> Optional[float]:
            if first not in marks or last not in marks:
                return None
            return round((marks[last] - marks[first]) * 1000, 1)

        after_connect = "handshake" if "handshake" in marks else "rpc"
        return {
            "connect_ms": span("connect", after_connect),
            "handshake_ms": span("handshake", "rpc"),
            "rpc_ms": span("rpc", "done"),
            "total_ms": span("start", "end"),
        }

    def observe(self, protocol: Any) -> Any:
        """Wrap the HTTP/2 protocol to keep the first bytes the server sent and why the connection ended."""
        lost, received = protocol.connection_lost, protocol.data_received

        def connection_lost(exc: Optional[BaseException]) -> None:
            self.lost = exc
            lost(exc)

        def data_received(data: bytes) -> None:
            if not self.first_bytes:
                self.first_bytes = bytes(data[:16])
            received(data)

        protocol.connection_lost = connection_lost
        protocol.data_received = data_received
        return protocol


async def _addresses(host: str, port: int) -> List[Tuple[Any, ...]]:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]  # no resolver round trip


async def _tcp_connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await _addresses(host, port)
    error: Optional[BaseException] = None
    for family, kind, proto, _canonical, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small HTTP/2 frames must not wait
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")


class _ProbeChannel(Channel):  # type: ignore[misc,valid-type]
    """A grpclib channel that connects in timed steps (TCP, then TLS) and records what it sees.

    It replaces grpclib 0.4's ``_create_connection`` (the one place that opens the transport) so the
    TCP connect and the TLS handshake are timed apart and the server name override reaches SNI.
    """

    def __init__(self, endpoint: Endpoint, ctx: Optional[ssl.SSLContext], server_name: str, trace: _Trace) -> None:
        super().__init__(endpoint.host, endpoint.port, ssl=ctx)
        self._probe = (endpoint, ctx, server_name, trace)

    async def _create_connection(self) -> Any:
        endpoint, ctx, server_name, trace = self._probe
        loop = asyncio.get_running_loop()
        trace.enter("connect")
        sock = await _tcp_connect(endpoint.host, endpoint.port)
        trace.enter("handshake" if ctx else "rpc")
        try:
            transport, protocol = await loop.create_connection(
                lambda: trace.observe(self._protocol_factory()),
                sock=sock,
                ssl=ctx,
                server_hostname=server_name if ctx else None,
            )
        except BaseException:
            sock.close()
            raise
        trace.transport = transport
        if ctx:
            trace.enter("rpc")
        return protocol


# --------------------------------------------------------------------------- probing


class _Failure(Exception):
    """Ends a probe with a finished diagnosis."""

    def __init__(self, diagnosis: dict) -> None:
        super().__init__(diagnosis["message"])
        self.diagnosis = diagnosis


def diagnosis(klass: str, message: str, fix: Optional[str] = None) -> dict:
    """Build a diagnosis dict ``{class, message, fix}``; ``fix`` defaults to the class's standard fix."""
    return {"class": klass, "message": message, "fix": fix or DIAGNOSIS_CLASSES[klass]}


class _Probe:
    """The state of one endpoint's probe: options, deadline, the result being filled, trace and TLS record."""

    def __init__(self, endpoint: Endpoint, opts: ProbeOptions, deadline: float) -> None:
        self.endpoint = endpoint
        self.opts = opts
        self.deadline = deadline
        self.result = _new_result(endpoint, opts)
        self.trace = _Trace()
        self.recorder = _TLSRecorder()

    @property
    def server_name(self) -> str:
        return self.opts.server_name or self.endpoint.host

    def remaining(self) -> float:
        return _remaining(self.deadline)


def _new_result(endpoint: Endpoint, opts: ProbeOptions) -> dict:
    return {
        "endpoint": endpoint.url,
        "name": endpoint.name,
        "scheme": endpoint.scheme,
        "host": endpoint.host,
        "port": endpoint.port,
        "server_name": (opts.server_name or endpoint.host) if endpoint.tls else None,
        "ok": False,
        "verified": False,
        "verification": opts.verification if endpoint.tls else "none",
        "health_service": opts.health_service,
        "health_status": None,
        "timings": None,
        "tls": None,
        "peer_certificate": None,
        "diagnosis": None,
        "warnings": [],
    }


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def probe_endpoint(endpoint: Endpoint, opts: ProbeOptions, deadline: float) -> dict:
    """Probe one endpoint before ``deadline`` (``time.monotonic()`` seconds); never raises for the peer's faults."""
    probe = _Probe(endpoint, opts, deadline)
    result = probe.result
    try:
        ctx = build_ssl_context(opts, recorder=probe.recorder) if endpoint.tls else None
        await asyncio.wait_for(_attempt(probe, ctx), probe.remaining())
    except asyncio.TimeoutError:
        result["diagnosis"] = _timeout_diagnosis(probe.trace.phase, opts.timeout)
    except _Failure as failure:
        result["diagnosis"] = failure.diagnosis
    except Exception as exc:  # every other failure is the peer's or the network's: classify it
        result["diagnosis"] = await _diagnose(exc, probe)
    probe.trace.marks.setdefault("end", time.perf_counter())
    result["timings"] = probe.trace.timings()
    result["ok"] = result["diagnosis"] is None
    result["verified"] = bool(result["ok"] and endpoint.tls and opts.verification != "skipped")
    _add_warnings(result, endpoint, opts)
    return result


async def _attempt(probe: _Probe, ctx: Optional[ssl.SSLContext]) -> None:
    opts, result = probe.opts, probe.result
    channel = _ProbeChannel(probe.endpoint, ctx, probe.server_name, probe.trace)
    try:
        await channel.__connect__()
        if ctx is not None:
            ssl_object = probe.trace.transport.get_extra_info("ssl_object")
            result["tls"] = _tls_facts(ssl_object, probe.recorder, opts)
            result["peer_certificate"] = _peer_facts(ssl_object)
            _check_spiffe_identity(result, opts)
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=opts.health_service))
        probe.trace.enter("done")
    finally:
        channel.close()
        _abort(probe.trace.transport)
    result["health_status"] = _HEALTH_STATUS_NAMES.get(reply.status, str(reply.status))
    if reply.status != HealthCheckResponse.SERVING:
        message = f"Health/Check for service {opts.health_service!r} answered {result['health_status']}"
        raise _Failure(diagnosis("health_not_serving", message))


def _check_spiffe_identity(result: dict, opts: ProbeOptions) -> None:
    # Like go-spiffe's authorizers: a SPIFFE peer needs exactly one spiffe:// ID, then the expected one if given.
    if opts.verification != "spiffe":
        return
    cert = result["peer_certificate"] or {}
    actual = cert.get("spiffe_id")
    if not actual:
        message = f"the server certificate carries no single spiffe:// URI SAN (URI SANs: {cert.get('uri_sans')})"
        raise _Failure(diagnosis("unexpected_spiffe_id", message))
    if opts.expected_spiffe_id and actual != opts.expected_spiffe_id:
        message = f"the server presents SPIFFE ID {actual}, expected {opts.expected_spiffe_id}"
        raise _Failure(diagnosis("unexpected_spiffe_id", message))
    domain = (opts.expected_trust_domain or "").replace("spiffe://", "", 1).lower()
    if domain and _trust_domain_of(actual) != domain:
        message = f"the server presents SPIFFE ID {actual}, outside the expected trust domain {domain}"
        raise _Failure(diagnosis("unexpected_spiffe_id", message))


def _add_warnings(result: dict, endpoint: Endpoint, opts: ProbeOptions) -> None:
    cert = result["peer_certificate"]
    if endpoint.tls and opts.skip_verify:
        result["warnings"].append("certificate verification was skipped: this result is unverified")
    if cert and cert.get("issuer_common_name") == AUTO_CA_COMMON_NAME:
        result["warnings"].append(
            "the server presents an auto-generated certificate (mode tls without cert paths); "
            "it gets a new CA at every restart"
        )
    if result["ok"] and result["tls"] and result["tls"]["alpn"] != "h2":
        result["warnings"].append("the server did not negotiate ALPN h2; grpc-go clients refuse such servers")


# --------------------------------------------------------------------------- diagnosis


def _timeout_diagnosis(phase: str, timeout: float) -> dict:
    names = {"connect": "the TCP connect", "handshake": "the TLS handshake", "rpc": "Health/Check"}
    message = f"no answer within the {timeout:g} s timeout, during {names.get(phase, phase)}"
    return diagnosis("timeout", message, _TIMEOUT_FIXES.get(phase))


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "verify_message", None) or getattr(exc, "strerror", None) or str(exc) or ""
    text = text.split(" (_ssl.c:")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _diagnose(exc: BaseException, probe: _Probe) -> dict:
    """Turn a failed attempt into a diagnosis, taking a second look at the port when that settles it."""
    found = _diagnose_network(exc, probe.trace) or _diagnose_grpc(exc, probe.opts)
    if found:
        return found
    if isinstance(exc, ssl.SSLCertVerificationError):
        return await _diagnose_verification(exc, probe)
    reason = _reason(exc if probe.trace.lost is None else probe.trace.lost)
    if probe.endpoint.tls:
        return await _diagnose_tls_drop(reason, probe)
    return await _diagnose_plaintext_drop(reason, probe)


def _diagnose_network(exc: BaseException, trace: _Trace) -> Optional[dict]:
    if trace.phase != "connect":
        return None
    if isinstance(exc, socket.gaierror):
        return diagnosis("name_resolution_failed", _reason(exc))
    if isinstance(exc, ConnectionRefusedError):
        return diagnosis("nothing_listening", f"connection refused ({_reason(exc)})")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return diagnosis("host_unreachable", _reason(exc))
    return None


def _diagnose_grpc(exc: BaseException, opts: ProbeOptions) -> Optional[dict]:
    if not isinstance(exc, GRPCError):
        return None
    status = exc.status
    text = f"Health/Check ended with gRPC status {status.name}" + (f": {exc.message}" if exc.message else "")
    if status is Status.UNIMPLEMENTED:
        return diagnosis("health_unimplemented", text)
    if status is Status.NOT_FOUND:
        return diagnosis("health_service_unknown", f"{text} (service {opts.health_service!r})")
    if status is Status.DEADLINE_EXCEEDED:
        return _timeout_diagnosis("rpc", opts.timeout)
    return diagnosis("grpc_error", text)


async def _diagnose_verification(exc: ssl.SSLCertVerificationError, probe: _Probe) -> dict:
    klass = _VERIFY_CLASSES.get(getattr(exc, "verify_code", None), "certificate_invalid")
    cert = (await _tls_peek(probe, linger=False)).certificate
    if cert:
        probe.result["peer_certificate"] = cert
    message = f"certificate verification failed: {_reason(exc)}"
    auto = bool(cert and cert.get("issuer_common_name") == AUTO_CA_COMMON_NAME)
    if auto and klass in ("unknown_authority", "hostname_mismatch"):
        return diagnosis("server_without_cert_paths", f"{message}; the certificate was issued by {cert['issuer']}")
    if klass == "hostname_mismatch":
        return _diagnose_names(message, probe.server_name, cert)
    if cert:
        message += f"; server certificate {cert['subject'] or '(empty subject)'} issued by {cert['issuer']}"
        if klass == "certificate_expired":
            message += f", expired {cert['not_after']}"
        elif klass == "certificate_not_yet_valid":
            message += f", valid from {cert['not_before']}"
    return diagnosis(klass, message)


def _diagnose_names(message: str, name: str, cert: Optional[dict]) -> dict:
    if cert is None:
        return diagnosis("hostname_mismatch", message)
    if not cert["dns_sans"] and not cert["ip_sans"]:
        uris = ", ".join(cert["uri_sans"]) or "none"
        return diagnosis(
            "not_valid_for_any_names",
            f"{message}; the certificate is not valid for any names (URI SANs: {uris}), so {name!r} cannot match",
        )
    listed = ", ".join(cert["dns_sans"] + cert["ip_sans"])
    fix = f"{DIAGNOSIS_CLASSES['hostname_mismatch']} The certificate lists: {listed}."
    return diagnosis("hostname_mismatch", f"{message}; {name!r} is not among {listed}", fix)


async def _diagnose_tls_drop(reason: str, probe: _Probe) -> dict:
    recorder = probe.recorder
    if recorder.cert_requested or _ALERT_CERT_REQUIRED in recorder.alerts_received:
        return await _diagnose_client_auth(reason, probe)
    if recorder.active and not recorder.server_hello:
        if await _speaks_plaintext_grpc(probe):
            return diagnosis(
                "tls_to_plaintext_server",
                f"TLS handshake failed ({reason}) and the port answers gRPC in plaintext "
                "(Go clients: 'first record does not look like a TLS handshake')",
            )
        return diagnosis("tls_handshake_failed", f"the port did not answer with TLS ({reason})")
    if probe.trace.phase == "handshake":
        alerts = _alerts_text(recorder.alerts_received)
        return diagnosis("tls_handshake_failed", f"TLS handshake failed: {reason}{alerts}")
    return diagnosis("connection_closed", f"the server closed the connection after the TLS handshake ({reason})")


async def _diagnose_client_auth(reason: str, probe: _Probe) -> dict:
    opts = probe.opts
    alerts = list(probe.recorder.alerts_received)
    if not alerts:
        # A server that closes while the client's HTTP/2 preface is unread resets the connection and the alert
        # is lost; a second handshake that sends nothing reads the alert (or the silent close) reliably.
        peek = await _tls_peek(probe, linger=True)
        alerts = peek.alerts
        reason = peek.after_handshake or reason
    told = _alerts_text(alerts) or f"; the server closed the connection without an alert ({reason})"
    if not opts.has_client_identity or _ALERT_CERT_REQUIRED in alerts:
        return diagnosis("client_cert_required", f"the server asked for a client certificate and got none{told}")
    if not alerts or any(alert in _ALERTS_REJECTING_CLIENT_CERT for alert in alerts):
        which = opts.identity.spiffe_id if opts.identity else opts.cert_file
        return diagnosis("client_cert_rejected", f"the server refused the client certificate {which}{told}")
    return diagnosis("tls_handshake_failed", f"TLS failed after the server asked for a client certificate{told}")


def _alerts_text(alerts: List[int]) -> str:
    named = [f"{_ALERTS.get(alert, 'alert')} ({alert})" for alert in alerts if alert]
    return f"; the server sent TLS alert {', '.join(named)}" if named else ""


async def _diagnose_plaintext_drop(reason: str, probe: _Probe) -> dict:
    if _looks_like_tls_record(probe.trace.first_bytes):
        return diagnosis("plaintext_to_tls_server", f"the server answered HTTP/2 with a TLS record ({reason})")
    if not probe.trace.first_bytes and (await _tls_peek(probe, linger=False)).server_hello:
        return diagnosis(
            "plaintext_to_tls_server",
            f"the server dropped the plaintext connection ({reason}) but completes a TLS handshake "
            "(Go clients: 'connection reset by peer' or 'EOF')",
        )
    return diagnosis("connection_closed", f"the server closed the plaintext connection ({reason})")


def _looks_like_tls_record(data: bytes) -> bool:
    return len(data) >= 3 and data[0] in (_TLS_CONTENT_ALERT, _TLS_CONTENT_HANDSHAKE) and data[1] == 3


# --------------------------------------------------------------------------- second looks


@dataclass
class _Peek:
    server_hello: bool = False
    certificate: Optional[dict] = None
    alerts: List[int] = field(default_factory=list)
    after_handshake: Optional[str] = None


async def _tls_peek(probe: _Probe, linger: bool) -> _Peek:
    """Handshake again without verifying, to read the server certificate and, with ``linger``, its verdict."""
    budget = min(probe.remaining(), _FOLLOW_UP_BUDGET)
    recorder = _TLSRecorder()
    peek = _Peek()
    if budget <= 0.01:
        return peek
    ctx = build_ssl_context(probe.opts, verify=False, recorder=recorder)
    host, port = probe.endpoint.host, probe.endpoint.port
    writer = None
    try:
        connecting = asyncio.open_connection(host, port, ssl=ctx, server_hostname=probe.server_name)
        reader, writer = await asyncio.wait_for(connecting, budget)
        peek.certificate = _peer_facts(writer.get_extra_info("ssl_object"))
        if linger:
            peek.after_handshake = await _read_verdict(reader, min(_LINGER_AFTER_HANDSHAKE, probe.remaining()))
    except (OSError, asyncio.TimeoutError, ssl.SSLError, EOFError):
        pass  # a second look that fails adds nothing to the first one
    finally:
        _abort(writer.transport if writer is not None else None)
    peek.server_hello = recorder.server_hello
    peek.alerts = recorder.alerts_received
    return peek


def _abort(transport: Any) -> None:
    # A probe has nothing more to say: drop the connection now rather than wait for a TLS close_notify
    # exchange that could outlive the event loop.
    if transport is not None:
        transport.abort()


async def _read_verdict(reader: asyncio.StreamReader, budget: float) -> str:
    try:
        data = await asyncio.wait_for(reader.read(1), budget)
    except asyncio.TimeoutError:
        return "the connection stayed open"
    except (OSError, ssl.SSLError) as exc:
        return _reason(exc)
    return "end of stream" if not data else "the server sent data"


async def _speaks_plaintext_grpc(probe: _Probe) -> bool:
    """Whether the port answers a plaintext Health/Check with anything gRPC-shaped."""
    budget = min(probe.remaining(), _FOLLOW_UP_BUDGET)
    if budget <= 0.01:
        return False
    channel = Channel(probe.endpoint.host, probe.endpoint.port)
    try:
        await HealthStub(channel).Check(HealthCheckRequest(), timeout=budget)
    except GRPCError:
        return True
    except Exception:  # any other failure means "no plaintext gRPC here"
        return False
    finally:
        channel.close()
    return True


# --------------------------------------------------------------------------- many endpoints


async def probe_all(endpoints: List[Endpoint], opts: ProbeOptions) -> List[dict]:
    """Probe all endpoints concurrently within ``opts.timeout`` seconds overall; results keep input order.

    With ``spiffe_socket`` the X.509-SVID and bundle are fetched once first, within the same timeout; when the
    Workload API is not there, every endpoint reports ``workload_api_unavailable`` (or ``no_workload_identity``
    when the agent has no registration entry for this probe's user) without being contacted.
    """
    deadline = time.monotonic() + opts.timeout
    if opts.spiffe_socket and opts.identity is None:
        try:
            opts = await _with_workload_identity(opts, deadline)
        except _Failure as failure:
            return [_unprobed(endpoint, opts, failure.diagnosis) for endpoint in endpoints]
    return list(await asyncio.gather(*(probe_endpoint(endpoint, opts, deadline) for endpoint in endpoints)))


def _unprobed(endpoint: Endpoint, opts: ProbeOptions, found: dict) -> dict:
    result = _new_result(endpoint, opts)
    result["diagnosis"] = found
    return result


# --------------------------------------------------------------------------- SPIFFE Workload API


def workload_api_problem(socket_value: str, timeout: float = _FOLLOW_UP_BUDGET) -> Optional[str]:
    """Say why nothing can serve the Workload API at ``socket_value`` (path or unix:// URI), or None."""
    try:
        check_socket(_socket_path(socket_value), timeout)
    except WorkloadApiError as exc:
        return str(exc)
    return None


def _import_spiffe() -> Any:
    """Return py-spiffe's ``WorkloadApiClient``; when it cannot be imported, the ImportError names ``spiffe``."""
    try:
        from spiffe import WorkloadApiClient  # noqa: PLC0415 - optional, needed with spiffe_socket only
    except ImportError as exc:
        raise ImportError(f"spiffe_socket needs the spiffe package (py-spiffe): {exc}", name="spiffe") from exc
    return WorkloadApiClient


def _accepts(function: Any, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def fetch_workload_identity(socket_value: str, timeout: float) -> WorkloadIdentity:
    """Fetch the default X.509-SVID, its key and all trust bundles from a SPIFFE Workload API socket.

    One ``FetchX509SVID`` call with a deadline of ``timeout`` seconds (py-spiffe's one-shot fetch does not retry:
    a caller with no registered identity gets PermissionDenied at once). Needs the ``spiffe`` package (py-spiffe),
    imported here so that only SPIFFE probes require it.
    """
    client_class = _import_spiffe()
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - SPIFFE only

    pem = serialization.Encoding.PEM
    client = client_class("unix://" + _socket_path(socket_value))
    try:
        fetch = client.fetch_x509_context
        # py-spiffe before 0.3 has no per-call deadline; the caller bounds the wait all the same.
        context = fetch(timeout=timeout) if _accepts(fetch, "timeout") else fetch()
    finally:
        client.close()
    svid = context.default_svid
    key = svid.private_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    authorities = [cert for bundle in context.x509_bundle_set.bundles for cert in bundle.x509_authorities]
    return WorkloadIdentity(
        spiffe_id=str(svid.spiffe_id),
        cert_chain_pem=b"".join(cert.public_bytes(pem) for cert in svid.cert_chain),
        key_pem=key,
        bundle_pem=b"".join(cert.public_bytes(pem) for cert in authorities),
    )


async def _in_daemon_thread(function: Any, *args: Any, timeout: float) -> Any:
    """Run a blocking call in a daemon thread and wait at most ``timeout`` seconds for it.

    Unlike the loop's default executor, which ``asyncio.run`` joins on exit, a call that outlives the timeout
    cannot hold the probe (or the module's exit) up: its late result is dropped.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(exception: Optional[BaseException], value: Any) -> None:
        if future.done():  # the wait timed out already
            return
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            outcome: Tuple[Optional[BaseException], Any] = (None, function(*args))
        except Exception as exc:  # handed to the waiting coroutine
            outcome = (exc, None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=run, name="grpc-tls-probe-workload-api", daemon=True).start()
    return await asyncio.wait_for(future, timeout)


async def _with_workload_identity(opts: ProbeOptions, deadline: float) -> ProbeOptions:
    _import_spiffe()  # a missing package is an error of the task, whether or not the socket is there
    path = _socket_path(opts.spiffe_socket or "")
    problem = workload_api_problem(path, min(_remaining(deadline), _FOLLOW_UP_BUDGET))
    if problem:
        raise _Failure(diagnosis("workload_api_unavailable", problem))
    budget = _remaining(deadline)
    try:
        identity = await _in_daemon_thread(fetch_workload_identity, path, budget, timeout=budget)
    except asyncio.TimeoutError as exc:
        raise _Failure(_workload_api_silent(path, opts.timeout)) from exc
    except ImportError:
        raise
    except Exception as exc:  # py-spiffe wraps gRPC failures in its own errors
        raise _Failure(_workload_api_diagnosis(exc, path, opts.timeout)) from exc
    return replace(opts, identity=identity)


def _workload_api_silent(path: str, timeout: float) -> dict:
    message = f"the Workload API at {path} handed out no X.509-SVID within the {timeout:g} s timeout"
    return diagnosis("workload_api_unavailable", message)


def _workload_api_diagnosis(exc: BaseException, path: str, timeout: float) -> dict:
    code = _grpc_status_name(exc)
    text = str(exc) or type(exc).__name__
    if code == "PERMISSION_DENIED" or (code is None and "PERMISSION_DENIED" in text):
        uid = os.geteuid()
        who = _user_label(uid)
        message = f"the SPIRE agent at {path} issues no X.509-SVID to this probe ({who}): {text}"
        return diagnosis("no_workload_identity", message, _NO_IDENTITY_FIX.format(who=who, uid=uid))
    if code == "DEADLINE_EXCEEDED":
        return _workload_api_silent(path, timeout)
    return diagnosis("workload_api_unavailable", f"fetching the X.509-SVID from {path} failed: {text}")


def _grpc_status_name(exc: Optional[BaseException]) -> Optional[str]:
    """The gRPC status code name (``PERMISSION_DENIED``...) of a grpcio error anywhere in ``exc``'s chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                name = getattr(code(), "name", None)
            except Exception:  # not a grpc.Call after all
                name = None
            if isinstance(name, str):
                return name
        exc = exc.__cause__ or exc.__context__
    return None


def run_probes(endpoints: List[Endpoint], opts: ProbeOptions) -> List[dict]:
    """Validate ``opts`` and probe ``endpoints`` from synchronous code (runs its own event loop)."""
    if not HAS_GRPCLIB:
        raise ImportError(f"grpclib is required: {GRPCLIB_IMPORT_ERROR}")
    validate_options(opts)
    return asyncio.run(probe_all(endpoints, opts))


def summary_line(result: dict) -> str:
    """One human line for a probe result: state, endpoint, and health and TLS facts, or diagnosis and fix."""
    label = f"{result['endpoint']}" + (f" ({result['name']})" if result.get("name") else "")
    found = result.get("diagnosis")
    if found:
        return f"FAIL {label}: {found['class']} - {found['message']}. Fix: {found['fix']}"
    parts = [str(result.get("health_status"))]
    tls = result.get("tls")
    if tls:
        parts.append(f"{tls['version']} {tls['alpn'] or 'no-ALPN'}")
        parts.append(
            "verified" + (" (SPIFFE)" if result["verification"] == "spiffe" else "")
            if result["verified"]
            else "UNVERIFIED"
        )
        if tls.get("client_cert_requested"):
            parts.append("client certificate required")
    else:
        parts.append("plaintext")
    cert = result.get("peer_certificate")
    if cert:
        parts.append(f"certificate expires in {cert['days_left']} days ({cert['not_after']})")
    total = (result.get("timings") or {}).get("total_ms")
    if total is not None:
        parts.append(f"{total:g} ms")
    return f"OK   {label}: {', '.join(parts)}"


__all__ = [
    "AUTO_CA_COMMON_NAME",
    "DEFAULT_PORTS",
    "DIAGNOSIS_CLASSES",
    "HAS_CRYPTOGRAPHY",
    "HAS_GRPCLIB",
    "SCHEMES",
    "Endpoint",
    "ProbeArgumentError",
    "ProbeOptions",
    "WorkloadIdentity",
    "build_ssl_context",
    "certificate_facts",
    "diagnosis",
    "expand_endpoints",
    "fetch_workload_identity",
    "load_client_identity_from_memory",
    "parse_endpoint",
    "probe_all",
    "probe_endpoint",
    "run_probes",
    "summary_line",
    "validate_options",
    "workload_api_problem",
]
