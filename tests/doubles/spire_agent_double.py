r"""Test double of the SPIRE agent's SPIFFE Workload API (X.509 part), on a Unix socket.

One self-contained file, used two ways:

* as a program (a systemd unit on the test hosts)::

      spire_agent_double.py --socket-path /tmp/spire-agent/public/api.sock --trust-domain example.org \
          --identity permguard=spiffe://example.org/permguard/server --identity 0=spiffe://example.org/ops/probe

* in-process, from unit tests (the server runs in a background thread with its own event loop)::

      with WorkloadApiDouble(socket_path, identities={os.getuid(): "spiffe://example.org/ops/probe"}) as agent:
          ...  # point the spiffe client at agent.endpoint ("unix:///...")
          agent.rotate()  # new SVIDs, pushed to every open stream

  or, inside a running event loop: ``await agent.start_async()`` / ``await agent.stop_async()``.

It needs only the standard library, cryptography (>= 38), protobuf (>= 3.21, i.e. Debian 12's python3-protobuf
3.21.12, up to 7.x), h2, multidict and the pure-python grpclib 0.4.9; it runs on Debian 12's system Python 3.11. The
Workload API messages are described at run time (a ``FileDescriptorProto`` built in code with the field numbers of
the public ``workload.proto``, in a private descriptor pool, so it never clashes with the ``spiffe`` package's own
generated module); no generated code and no grpcio.

What it copies from SPIRE (read from the public spiffe/spire and spiffe/go-spiffe sources, nothing copied verbatim)
-------------------------------------------------------------------------------------------------------------------
* The service: gRPC ``SpiffeWorkloadAPI`` with no proto package, on a Unix socket. ``FetchX509SVID`` and
  ``FetchX509Bundles`` are server-streaming: the full current state is sent as soon as the call arrives, then again
  (full state, never a delta) on every change, until the client goes away or the agent stops. As in SPIRE,
  ``FetchX509Bundles`` only sends a message when the bundle set actually changed (an SVID rotation alone sends
  nothing on it), and ``FetchX509SVID`` sends when the caller's SVIDs or the bundle changed.
* Messages and field numbers of ``workload.proto``: ``X509SVIDResponse{svids=1, crl=2, federated_bundles=3}``,
  ``X509SVID{spiffe_id=1, x509_svid=2 (DER chain, leaf first), x509_svid_key=3 (unencrypted PKCS#8 DER), bundle=4
  (concatenated DER CA certificates of the trust domain), hint=5}``, ``X509BundlesResponse{crl=1, bundles=2}`` with
  the bundle keyed by the trust domain's SPIFFE ID (``spiffe://example.org``).
* The security header: every call must carry exactly one ``workload.spiffe.io`` metadata value, ``true``; otherwise
  InvalidArgument ``security header missing from request`` (checked first, on every method, JWT ones included).
* Workload attestation by the Unix peer credentials of the connection (``SO_PEERCRED``): the caller's uid selects its
  identities (like SPIRE's ``unix:uid`` / ``unix:user`` selectors; a user name is resolved at each call, so a user
  created after the agent started is found). No identity: PermissionDenied ``no identity issued`` (on
  ``FetchX509Bundles`` too, as SPIRE does unless ``allow_unauthenticated_verifiers``, which is an option here too).
  Credentials that cannot be read: Unavailable ``workload attestation failed``. A stream whose caller loses its
  identity at run time ends with PermissionDenied, as in SPIRE. Several uids may share one SPIFFE ID (they then get
  the same SVID, as workloads matching one registration entry do) and one uid may have several SPIFFE IDs (one
  ``X509SVID`` each, in registration order; the first is the default one).
* A real X.509 CA: ECDSA P-256, self-signed, subject ``C=US, O=SPIFFE, serialNumber=<serial>``, URI SAN
  ``spiffe://<trust-domain>``, critical basicConstraints CA:TRUE, critical keyUsage keyCertSign+cRLSign, subject key
  identifier; backdated 10 s.
* X509-SVIDs like SPIRE's: ECDSA P-256 key, random serial, subject ``C=US, O=SPIRE, x500UniqueIdentifier=<first 16
  bytes of SHA-256 of the SPIFFE ID, hex>``, EXACTLY one URI SAN (the SPIFFE ID) and no DNS SAN, critical
  basicConstraints CA:FALSE, critical keyUsage digitalSignature+keyEncipherment+keyAgreement, extKeyUsage
  serverAuth+clientAuth, subject and authority key identifiers; not-before backdated 10 s, not-after capped at the
  CA's not-after. The chain sent is the leaf alone (the CA is a root in the bundle, as with a SPIRE server that has
  no upstream authority). Short-lived (``svid_ttl``, default 120 s) and renewed at half their lifetime, as the SPIRE
  agent does, or on a configurable period.
* The socket: the parent directory is created if missing (0755), a stale socket is removed at start, the socket is
  made world-writable (0777). It is removed on a clean stop (SIGTERM/SIGINT for the program).
* CA rotation keeps the previous CA in the bundle (as SPIRE's bundle carries old and new X.509 authorities), so
  SVIDs issued by the old CA still verify while new ones come from the new CA.

What it leaves out
------------------
* JWT and WIT profiles: ``FetchJWTSVID``, ``FetchJWTBundles``, ``ValidateJWTSVID``, ``FetchWITSVID``,
  ``FetchWITBundles`` answer UNIMPLEMENTED (after the security-header check). The real agent implements the JWT ones.
* No SPIRE server, no node attestation, no registration API or entries, no selectors other than the uid (no pid,
  gid, path, sha256, Docker or Kubernetes selectors), no hints, no DNS names, no federation (``federated_bundles`` is
  always empty), no CRLs, no rate limiting, no admin socket, no health endpoint, no telemetry, no ``spire-agent``
  sub-commands (``api fetch``, ``healthcheck``...). Identities come from the command line or the constructor.
* SPIRE's CA is usually an intermediate under the SPIRE server's root, prepared and published in the bundle some time
  before it is activated; here the CA is a single self-signed root and a CA rotation publishes and activates the new
  CA in one step (the old one stays in the bundle until it expires; at most three CAs are kept). The CA TTL defaults
  to 30 days (SPIRE: 24 h) so that a persisted bundle survives long test campaigns; the CA is renewed automatically
  when less than a sixth of its life (or less than two SVID TTLs) remains.
* Persistence (``--state-dir``) keeps only the CA (``ca-cert.pem``, ``ca-key.pem`` 0600) and the bundle
  (``bundle.pem``); workload SVIDs are always new after a restart (the real agent may serve cached ones).
* A stale path that is not a socket is refused rather than removed. Logs are the double's own one-line format, not
  logrus'. With ``NOTIFY_SOCKET`` set (systemd ``Type=notify``) it reports READY=1 once serving.
* On-demand rotation: SIGHUP renews the SVIDs, SIGUSR1 rotates the CA (and renews the SVIDs); the real agent has no
  such signals.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import pwd
import re
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpclib.const import Cardinality, Handler, Status
    from grpclib.exceptions import GRPCError
    from grpclib.server import Server
except ImportError as _missing:  # pragma: no cover - depends on the host
    sys.exit(
        f"spire agent double: missing Python module {_missing.name!r}: it needs cryptography, protobuf, h2, "
        "multidict and grpclib"
    )

LOG = logging.getLogger("spire_agent_double")

DEFAULT_SOCKET_PATH = "/tmp/spire-agent/public/api.sock"
DEFAULT_TRUST_DOMAIN = "example.org"
DEFAULT_SVID_TTL = 120.0
DEFAULT_CA_TTL = 30 * 86400.0
BACKDATE = datetime.timedelta(seconds=10)
MAX_BUNDLE_CAS = 3

SECURITY_HEADER = "workload.spiffe.io"
MSG_SECURITY_HEADER = "security header missing from request"
MSG_NO_IDENTITY = "no identity issued"
MSG_ATTESTATION_FAILED = "workload attestation failed"

SERVICE = "SpiffeWorkloadAPI"
X500_UNIQUE_IDENTIFIER = ObjectIdentifier("2.5.4.45")

# --------------------------------------------------------------------------------------------- messages


def _build_messages() -> Dict[str, Any]:
    """Describe the X.509 part of workload.proto in code and return its message classes by name."""
    label_optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    label_repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    type_string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    type_bytes = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    type_message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

    fdp = descriptor_pb2.FileDescriptorProto(name="spire_agent_double/workload.proto", syntax="proto3")

    def message(name: str, fields: Sequence[Tuple[str, int, int, int, str]], parent: Any = None) -> Any:
        container = parent.nested_type if parent is not None else fdp.message_type
        msg = container.add(name=name)
        for field_name, number, label, field_type, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=field_type)
            if type_name:
                field.type_name = type_name
        return msg

    def map_entry(parent: Any, name: str) -> None:
        entry = message(
            name,
            [("key", 1, label_optional, type_string, ""), ("value", 2, label_optional, type_bytes, "")],
            parent,
        )
        entry.options.map_entry = True

    message("X509SVIDRequest", [])
    message(
        "X509SVID",
        [
            ("spiffe_id", 1, label_optional, type_string, ""),
            ("x509_svid", 2, label_optional, type_bytes, ""),
            ("x509_svid_key", 3, label_optional, type_bytes, ""),
            ("bundle", 4, label_optional, type_bytes, ""),
            ("hint", 5, label_optional, type_string, ""),
        ],
    )
    svid_response = message(
        "X509SVIDResponse",
        [
            ("svids", 1, label_repeated, type_message, ".X509SVID"),
            ("crl", 2, label_repeated, type_bytes, ""),
            ("federated_bundles", 3, label_repeated, type_message, ".X509SVIDResponse.FederatedBundlesEntry"),
        ],
    )
    map_entry(svid_response, "FederatedBundlesEntry")
    message("X509BundlesRequest", [])
    bundles_response = message(
        "X509BundlesResponse",
        [
            ("crl", 1, label_repeated, type_bytes, ""),
            ("bundles", 2, label_repeated, type_message, ".X509BundlesResponse.BundlesEntry"),
        ],
    )
    map_entry(bundles_response, "BundlesEntry")
    # Stand-in for the request/response types of the methods this double does not implement: they are never sent,
    # and any request decodes into it (unknown fields are kept).
    message("Unimplemented", [])

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    get_message_class = getattr(message_factory, "GetMessageClass", None)
    factory = None if get_message_class is not None else message_factory.MessageFactory(pool)
    classes = {}
    for msg in fdp.message_type:
        descriptor = pool.FindMessageTypeByName(msg.name)
        if get_message_class is not None:  # protobuf >= 4.22 (3.22)
            classes[msg.name] = get_message_class(descriptor)
        else:  # protobuf 3.21 / 4.21 (Debian 12)
            classes[msg.name] = factory.GetPrototype(descriptor)  # type: ignore[union-attr]
    return classes


_MESSAGES = _build_messages()
X509SVIDRequest = _MESSAGES["X509SVIDRequest"]
X509SVID = _MESSAGES["X509SVID"]
X509SVIDResponse = _MESSAGES["X509SVIDResponse"]
X509BundlesRequest = _MESSAGES["X509BundlesRequest"]
X509BundlesResponse = _MESSAGES["X509BundlesResponse"]
Unimplemented = _MESSAGES["Unimplemented"]

UNIMPLEMENTED_METHODS = {
    "FetchJWTSVID": (Cardinality.UNARY_UNARY, "fetching JWT-SVIDs"),
    "FetchJWTBundles": (Cardinality.UNARY_STREAM, "fetching JWT bundles"),
    "ValidateJWTSVID": (Cardinality.UNARY_UNARY, "validating JWT-SVIDs"),
    "FetchWITSVID": (Cardinality.UNARY_STREAM, "fetching WIT-SVIDs"),
    "FetchWITBundles": (Cardinality.UNARY_STREAM, "fetching WIT bundles"),
}

# --------------------------------------------------------------------------------------------- SPIFFE IDs

_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def validate_trust_domain(trust_domain: str) -> str:
    """Return the trust domain name if it is valid (SPIFFE: lower-case letters, digits, ``.``, ``-``, ``_``)."""
    if not trust_domain or not _TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}: only a-z, 0-9, '.', '-' and '_' are allowed")
    return trust_domain


def validate_spiffe_id(spiffe_id: str, trust_domain: str) -> str:
    """Return ``spiffe_id`` if it is a valid workload SPIFFE ID that is a member of ``trust_domain``."""
    prefix = "spiffe://"
    if not isinstance(spiffe_id, str) or not spiffe_id.startswith(prefix):
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: scheme must be spiffe://")
    if len(spiffe_id) > 2048:
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: longer than 2048 bytes")
    rest = spiffe_id[len(prefix) :]
    domain, slash, path = rest.partition("/")
    validate_trust_domain(domain)
    if domain != trust_domain:
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: not a member of trust domain {trust_domain!r}")
    if not slash or not path:
        raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: a workload ID needs a path")
    for segment in path.split("/"):
        if not segment or segment in (".", "..") or not _PATH_SEGMENT_RE.match(segment):
            raise ValueError(f"invalid SPIFFE ID {spiffe_id!r}: bad path segment {segment!r}")
    return spiffe_id


IdentityKey = Union[int, str]
IdentityValue = Union[str, Sequence[str]]


def _identity_key(key: Union[int, str]) -> IdentityKey:
    """Normalise a uid or user name: numeric strings become uids."""
    if isinstance(key, bool):
        raise ValueError(f"invalid identity owner {key!r}")
    if isinstance(key, int):
        if key < 0:
            raise ValueError(f"invalid uid {key}")
        return key
    key = str(key).strip()
    if not key:
        raise ValueError("empty user name in identity")
    return int(key) if key.isdigit() else key


def _resolve_uid(key: IdentityKey) -> Optional[int]:
    if isinstance(key, int):
        return key
    try:
        return pwd.getpwnam(key).pw_uid
    except KeyError:
        return None


def parse_identity(text: str) -> Tuple[IdentityKey, str]:
    """Parse ``UID_OR_NAME=spiffe://...`` (the CLI form of an identity)."""
    owner, sep, spiffe_id = text.partition("=")
    if not sep or not owner.strip() or not spiffe_id:
        raise ValueError(f"invalid identity {text!r}: expected UID_OR_NAME=spiffe://<trust-domain>/<path>")
    return _identity_key(owner), spiffe_id.strip()


# --------------------------------------------------------------------------------------------- X.509


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    """Return the certificate's not-after as an aware UTC datetime (cryptography 38 to 50)."""
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def not_before(cert: x509.Certificate) -> datetime.datetime:
    """Return the certificate's not-before as an aware UTC datetime (cryptography 38 to 50)."""
    value = getattr(cert, "not_valid_before_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    return value


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_pem_certificates(data: bytes) -> List[x509.Certificate]:
    """Load every certificate of a PEM file (``load_pem_x509_certificates`` needs cryptography >= 39)."""
    marker_end = b"-----END CERTIFICATE-----"
    certs = []
    for block in data.split(marker_end):
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            certs.append(x509.load_pem_x509_certificate(block[start:] + marker_end + b"\n"))
    return certs


def _ski(public_key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """A signing CA: certificate and private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> datetime.datetime:
        return not_after(self.certificate)

    @classmethod
    def generate(cls, trust_domain: str, ttl: float) -> CertificateAuthority:
        """Create a self-signed CA for the trust domain, the way a SPIRE server without upstream authority does."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        now = _utcnow()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial)),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(seconds=ttl))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_ski(key.public_key()), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue_svid(
        self,
        spiffe_id: str,
        ttl: float,
        *,
        valid_from: Optional[datetime.datetime] = None,
        valid_until: Optional[datetime.datetime] = None,
    ) -> IssuedSvid:
        """Sign a new X509-SVID for ``spiffe_id`` (explicit validity bounds allow expired or future SVIDs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utcnow()
        start = valid_from if valid_from is not None else now - BACKDATE
        end = valid_until if valid_until is not None else min(now + datetime.timedelta(seconds=ttl), self.not_after)
        unique_id = hashlib.sha256(spiffe_id.encode()).digest()[:16].hex()
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
                        x509.NameAttribute(X500_UNIQUE_IDENTIFIER, unique_id),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(_ski(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        return IssuedSvid(spiffe_id, (cert,), key)


@dataclasses.dataclass(frozen=True)
class IssuedSvid:
    """An X509-SVID as served: SPIFFE ID, chain (leaf first) and private key."""

    spiffe_id: str
    chain: Tuple[x509.Certificate, ...]
    private_key: ec.EllipticCurvePrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial_number(self) -> int:
        return self.leaf.serial_number

    @property
    def not_after(self) -> datetime.datetime:
        return not_after(self.leaf)

    @property
    def chain_der(self) -> bytes:
        """The ``x509_svid`` field: DER certificates, leaf first, concatenated."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    @property
    def key_der(self) -> bytes:
        """The ``x509_svid_key`` field: unencrypted PKCS#8 DER."""
        return self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def chain_pem(self) -> bytes:
        return b"".join(_pem(c) for c in self.chain)

    @property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


# --------------------------------------------------------------------------------------------- persistence


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _StateDir:
    """CA and bundle kept on disk so that a restart keeps the trust bundle."""

    CA_CERT = "ca-cert.pem"
    CA_KEY = "ca-key.pem"
    BUNDLE = "bundle.pem"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def load(self, trust_domain: str) -> Optional[Tuple[CertificateAuthority, List[x509.Certificate]]]:
        cert_path = os.path.join(self.path, self.CA_CERT)
        key_path = os.path.join(self.path, self.CA_KEY)
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            return None
        with open(cert_path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        with open(key_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_numbers() != (
            cert.public_key().public_numbers()  # type: ignore[union-attr]
        ):
            raise ValueError(f"{key_path} does not match {cert_path}")
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        if uris != [f"spiffe://{trust_domain}"]:
            raise ValueError(
                f"state directory {self.path} holds a CA for {', '.join(uris) or 'no trust domain'}, "
                f"not spiffe://{trust_domain}: use another --state-dir"
            )
        bundle: List[x509.Certificate] = []
        bundle_path = os.path.join(self.path, self.BUNDLE)
        if os.path.exists(bundle_path):
            with open(bundle_path, "rb") as handle:
                bundle = load_pem_certificates(handle.read())
        return CertificateAuthority(cert, key), bundle

    def save(self, ca: CertificateAuthority, bundle: Sequence[x509.Certificate]) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        key_pem = ca.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomic(os.path.join(self.path, self.CA_KEY), key_pem, 0o600)
        _write_atomic(os.path.join(self.path, self.CA_CERT), _pem(ca.certificate), 0o644)
        _write_atomic(os.path.join(self.path, self.BUNDLE), b"".join(_pem(c) for c in bundle), 0o644)


# --------------------------------------------------------------------------------------------- state


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """Everything the streams serve, replaced as a whole on every change."""

    generation: int
    bundle: Tuple[x509.Certificate, ...]
    svids: Mapping[str, IssuedSvid]
    identities: Mapping[IdentityKey, Tuple[str, ...]]

    @property
    def bundle_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.bundle)

    def spiffe_ids_for(self, uid: int) -> List[str]:
        ids: List[str] = []
        for key, values in self.identities.items():
            if _resolve_uid(key) == uid:
                ids.extend(v for v in values if v not in ids)
        return ids


def _peer_credentials(stream: Any) -> Optional[Tuple[int, int, int]]:
    """Return (pid, uid, gid) of the Unix peer of a grpclib server stream, or None when unavailable.

    grpclib's public ``Peer`` exposes only the address and TLS certificate; the transport behind it (grpclib 0.4)
    gives the socket, whose ``SO_PEERCRED`` the kernel fills at connect time.
    """
    transport = getattr(stream.peer, "_transport", None)
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _has_security_header(stream: Any) -> bool:
    values = stream.metadata.getall(SECURITY_HEADER, []) if stream.metadata is not None else []
    return len(values) == 1 and values[0] == "true"


def _sd_notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        LOG.debug("sd_notify failed: %s", exc)


class WorkloadApiDouble:
    """A SPIRE agent stand-in serving the SPIFFE Workload API (X.509 part) on a Unix socket.

    Args:
        socket_path: path of the Unix socket (directory created 0755 if missing; stale socket removed).
        identities: uid (int), numeric string or user name -> SPIFFE ID, or a list of SPIFFE IDs.
        trust_domain: the trust domain of the CA and of every SPIFFE ID.
        svid_ttl: lifetime of the X509-SVIDs, seconds.
        rotate_every: renewal period, seconds; None = half of ``svid_ttl`` (as the SPIRE agent), 0 = never on schedule.
        ca_ttl: lifetime of a CA, seconds.
        state_dir: directory keeping the CA and bundle across restarts; None = in memory only.
        allow_unauthenticated_verifiers: serve FetchX509Bundles to callers without an identity (SPIRE's option).

    Thread-safe: ``rotate``, ``set_identity`` and the read accessors may be called from any thread, before or after
    ``start``. Changes are pushed to every open stream.

    """

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET_PATH,
        identities: Optional[Mapping[Union[int, str], IdentityValue]] = None,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        svid_ttl: float = DEFAULT_SVID_TTL,
        rotate_every: Optional[float] = None,
        ca_ttl: float = DEFAULT_CA_TTL,
        state_dir: Optional[str] = None,
        allow_unauthenticated_verifiers: bool = False,
    ) -> None:
        self.trust_domain = validate_trust_domain(trust_domain)
        if not socket_path:
            raise ValueError("socket_path must not be empty")
        self.socket_path = os.path.abspath(socket_path)
        if svid_ttl <= 0:
            raise ValueError("svid_ttl must be positive")
        if ca_ttl <= 2 * svid_ttl:
            raise ValueError("ca_ttl must be more than twice svid_ttl")
        if rotate_every is not None and rotate_every < 0:
            raise ValueError("rotate_every must be positive, or 0 to disable scheduled rotation")
        self.svid_ttl = float(svid_ttl)
        self.rotate_every = self.svid_ttl / 2 if rotate_every is None else float(rotate_every)
        self.ca_ttl = float(ca_ttl)
        self.allow_unauthenticated_verifiers = allow_unauthenticated_verifiers
        self._state_dir = _StateDir(state_dir) if state_dir else None

        self._lock = threading.RLock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._identities: Dict[IdentityKey, Tuple[str, ...]] = {}
        for key, value in (identities or {}).items():
            normalised, ids = self._normalise_identity(key, value)
            self._identities[normalised] = ids
        self._ca, self._bundle = self._initial_ca()
        self._svids: Dict[str, IssuedSvid] = {}
        self._generation = 0
        self._rotations = 0
        self._snapshot = self._issue_missing(reason="start")

        self._server: Optional[Server] = None
        self._changed: Optional[asyncio.Event] = None
        self._wakeup: Optional[asyncio.Event] = None
        self._stopped: Optional[asyncio.Event] = None
        self._scheduler: Optional[asyncio.Task] = None
        self._transports: set = set()
        self._socket_inode: Optional[Tuple[int, int]] = None
        self._next_rotation = time.monotonic() + self.rotate_every
        self._thread: Optional[threading.Thread] = None
        self._thread_loop: Optional[asyncio.AbstractEventLoop] = None

    # ------------------------------------------------------------------ configuration and state

    def _normalise_identity(self, key: Union[int, str], value: IdentityValue) -> Tuple[IdentityKey, Tuple[str, ...]]:
        values = [value] if isinstance(value, str) else list(value)
        if not values:
            raise ValueError(f"identity {key!r} has no SPIFFE ID")
        ids: List[str] = []
        for spiffe_id in values:
            validate_spiffe_id(spiffe_id, self.trust_domain)
            if spiffe_id not in ids:
                ids.append(spiffe_id)
        return _identity_key(key), tuple(ids)

    def _initial_ca(self) -> Tuple[CertificateAuthority, List[x509.Certificate]]:
        if self._state_dir is not None:
            loaded = self._state_dir.load(self.trust_domain)
            if loaded is not None:
                ca, bundle = loaded
                bundle = [c for c in bundle if not_after(c) > _utcnow()]
                if not any(c.serial_number == ca.serial_number for c in bundle):
                    bundle.append(ca.certificate)
                LOG.info(
                    "Loaded CA from %s serial=%x not_after=%s bundle_size=%d",
                    self._state_dir.path,
                    ca.serial_number,
                    ca.not_after.isoformat(),
                    len(bundle),
                )
                if self._ca_needs_renewal(ca):
                    return self._new_ca(ca, bundle, keep_previous=True, reason="expiring")
                return ca, bundle
        return self._new_ca(None, [], keep_previous=False, reason="start")

    def _ca_needs_renewal(self, ca: CertificateAuthority) -> bool:
        remaining = (ca.not_after - _utcnow()).total_seconds()
        return remaining < max(self.ca_ttl / 6, 2 * self.svid_ttl)

    def _new_ca(
        self,
        previous: Optional[CertificateAuthority],
        bundle: Sequence[x509.Certificate],
        *,
        keep_previous: bool,
        reason: str,
    ) -> Tuple[CertificateAuthority, List[x509.Certificate]]:
        ca = CertificateAuthority.generate(self.trust_domain, self.ca_ttl)
        now = _utcnow()
        kept = [c for c in bundle if keep_previous and not_after(c) > now]
        new_bundle = [*kept, ca.certificate][-MAX_BUNDLE_CAS:]
        LOG.info(
            "X509 CA %s serial=%x not_after=%s previous=%s bundle_size=%d reason=%s",
            "rotated" if previous is not None else "created",
            ca.serial_number,
            ca.not_after.isoformat(),
            f"{previous.serial_number:x}" if previous is not None else "none",
            len(new_bundle),
            reason,
        )
        if self._state_dir is not None:
            self._state_dir.save(ca, new_bundle)
        return ca, new_bundle

    def _all_spiffe_ids(self) -> List[str]:
        ids: List[str] = []
        for values in self._identities.values():
            ids.extend(v for v in values if v not in ids)
        return ids

    def _publish(self) -> _Snapshot:
        """Freeze the current state into a new snapshot and wake the streams (lock held)."""
        self._generation += 1
        snapshot = _Snapshot(
            generation=self._generation,
            bundle=tuple(self._bundle),
            svids=dict(self._svids),
            identities=dict(self._identities),
        )
        self._snapshot = snapshot
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(self._notify)
        return snapshot

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        if self._wakeup is not None:
            self._wakeup.set()

    def _issue(self, spiffe_ids: Iterable[str], reason: str) -> None:
        for spiffe_id in spiffe_ids:
            svid = self._ca.issue_svid(spiffe_id, self.svid_ttl)
            old = self._svids.get(spiffe_id)
            self._svids[spiffe_id] = svid
            LOG.info(
                "X509-SVID %s spiffe_id=%s serial=%x not_after=%s previous=%s reason=%s",
                "rotated" if old is not None else "issued",
                spiffe_id,
                svid.serial_number,
                svid.not_after.isoformat(),
                f"{old.serial_number:x}" if old is not None else "none",
                reason,
            )

    def _issue_missing(self, reason: str) -> _Snapshot:
        with self._lock:
            wanted = self._all_spiffe_ids()
            for stale in [i for i in self._svids if i not in wanted]:
                del self._svids[stale]
            self._issue([i for i in wanted if i not in self._svids], reason)
            return self._publish()

    def rotate(self, *, ca: bool = False, keep_previous_ca: bool = True, reason: str = "on demand") -> Dict[str, int]:
        """Renew every SVID now (and first the CA when ``ca``); return the new serial numbers by SPIFFE ID.

        With ``ca`` and ``keep_previous_ca`` (default) the old CA stays in the bundle next to the new one; with
        ``keep_previous_ca=False`` the bundle holds only the new CA (a trust break, for negative tests).
        """
        with self._lock:
            if ca or self._ca_needs_renewal(self._ca):
                self._ca, self._bundle = self._new_ca(
                    self._ca, self._bundle, keep_previous=keep_previous_ca, reason=reason if ca else "expiring"
                )
            else:
                now = _utcnow()
                self._bundle = [c for c in self._bundle if not_after(c) > now] or [self._ca.certificate]
            self._issue(self._all_spiffe_ids(), reason)
            self._rotations += 1
            self._next_rotation = time.monotonic() + self.rotate_every
            self._publish()
            return {i: s.serial_number for i, s in self._svids.items()}

    def rotate_ca(self, *, keep_previous: bool = True) -> Dict[str, int]:
        """Rotate the CA (old one kept in the bundle unless ``keep_previous`` is False) and renew every SVID."""
        return self.rotate(ca=True, keep_previous_ca=keep_previous, reason="CA rotation")

    def set_identity(self, owner: Union[int, str], spiffe_ids: IdentityValue) -> None:
        """Register (or replace) the SPIFFE ID(s) of a uid or user name; open streams of that uid get them."""
        key, ids = self._normalise_identity(owner, spiffe_ids)
        with self._lock:
            self._identities[key] = ids
        self._issue_missing(reason="identity registered")

    def remove_identity(self, owner: Union[int, str]) -> None:
        """Remove the identities of a uid or user name; its open streams end with PermissionDenied."""
        with self._lock:
            self._identities.pop(_identity_key(owner), None)
        self._issue_missing(reason="identity removed")

    def issue_svid(
        self,
        spiffe_id: str,
        *,
        ttl: Optional[float] = None,
        valid_from: Optional[datetime.datetime] = None,
        valid_until: Optional[datetime.datetime] = None,
    ) -> IssuedSvid:
        """Sign an extra SVID with the current CA without serving it (e.g. an expired one for a negative test)."""
        validate_spiffe_id(spiffe_id, self.trust_domain)
        with self._lock:
            ca = self._ca
        return ca.issue_svid(
            spiffe_id, self.svid_ttl if ttl is None else ttl, valid_from=valid_from, valid_until=valid_until
        )

    # ------------------------------------------------------------------ read accessors

    @property
    def endpoint(self) -> str:
        """The socket as a ``unix://`` URI, the form ``SPIFFE_ENDPOINT_SOCKET`` and the spiffe client take."""
        return f"unix://{self.socket_path}"

    @property
    def trust_domain_id(self) -> str:
        return f"spiffe://{self.trust_domain}"

    @property
    def ca(self) -> CertificateAuthority:
        """The CA that signs new SVIDs."""
        with self._lock:
            return self._ca

    @property
    def bundle(self) -> List[x509.Certificate]:
        """The X.509 authorities of the trust domain, as served."""
        return list(self._snapshot.bundle)

    def bundle_pem(self) -> bytes:
        return b"".join(_pem(c) for c in self._snapshot.bundle)

    def svid(self, spiffe_id: str) -> IssuedSvid:
        """The SVID currently served for ``spiffe_id``."""
        return self._snapshot.svids[spiffe_id]

    def svids_for(self, uid: int) -> List[IssuedSvid]:
        """The SVIDs a caller with ``uid`` currently receives (empty: PermissionDenied)."""
        snapshot = self._snapshot
        return [snapshot.svids[i] for i in snapshot.spiffe_ids_for(uid) if i in snapshot.svids]

    @property
    def identities(self) -> Dict[IdentityKey, Tuple[str, ...]]:
        return dict(self._snapshot.identities)

    @property
    def rotations(self) -> int:
        """How many rotations (scheduled or on demand) happened."""
        return self._rotations

    @property
    def serving(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ gRPC handlers

    def __mapping__(self) -> Dict[str, Handler]:
        mapping = {
            f"/{SERVICE}/FetchX509SVID": Handler(
                self._fetch_x509_svid, Cardinality.UNARY_STREAM, X509SVIDRequest, X509SVIDResponse
            ),
            f"/{SERVICE}/FetchX509Bundles": Handler(
                self._fetch_x509_bundles, Cardinality.UNARY_STREAM, X509BundlesRequest, X509BundlesResponse
            ),
        }
        for method, (cardinality, what) in UNIMPLEMENTED_METHODS.items():
            mapping[f"/{SERVICE}/{method}"] = Handler(
                self._unimplemented(what), cardinality, Unimplemented, Unimplemented
            )
        return mapping

    def _unimplemented(self, what: str) -> Any:
        async def handler(stream: Any) -> None:
            if not _has_security_header(stream):
                raise GRPCError(Status.INVALID_ARGUMENT, MSG_SECURITY_HEADER)
            raise GRPCError(Status.UNIMPLEMENTED, f"{what} is not implemented by the SPIRE agent double")

        return handler

    async def _attest(self, stream: Any, method: str) -> int:
        if not _has_security_header(stream):
            LOG.debug("%s refused: security header missing", method)
            raise GRPCError(Status.INVALID_ARGUMENT, MSG_SECURITY_HEADER)
        credentials = _peer_credentials(stream)
        if credentials is None:
            LOG.error("%s: workload attestation failed: no Unix peer credentials", method)
            raise GRPCError(Status.UNAVAILABLE, MSG_ATTESTATION_FAILED)
        transport = getattr(stream.peer, "_transport", None)
        if transport is not None:
            self._transports.add(transport)
        pid, uid, _gid = credentials
        LOG.debug("%s called pid=%d uid=%d", method, pid, uid)
        await stream.recv_message()
        return uid

    async def _watch(self, stream: Any, method: str, uid: int, compose: Any) -> None:
        """Send ``compose(snapshot)`` at once and again whenever it changes, until cancelled."""
        last = None
        while True:
            changed = self._changed
            snapshot = self._snapshot
            response = compose(snapshot)
            if response is None:
                LOG.info("%s: no identity issued for uid=%d", method, uid)
                raise GRPCError(Status.PERMISSION_DENIED, MSG_NO_IDENTITY)
            data = response.SerializeToString(deterministic=True)
            if data != last:
                await stream.send_message(response)
                last = data
                LOG.debug("%s: sent generation=%d to uid=%d", method, snapshot.generation, uid)
            assert changed is not None
            await changed.wait()

    async def _fetch_x509_svid(self, stream: Any) -> None:
        uid = await self._attest(stream, "FetchX509SVID")

        def compose(snapshot: _Snapshot) -> Any:
            ids = [i for i in snapshot.spiffe_ids_for(uid) if i in snapshot.svids]
            if not ids:
                return None
            bundle = snapshot.bundle_der
            response = X509SVIDResponse()
            for spiffe_id in ids:
                svid = snapshot.svids[spiffe_id]
                response.svids.add(
                    spiffe_id=spiffe_id, x509_svid=svid.chain_der, x509_svid_key=svid.key_der, bundle=bundle
                )
            return response

        await self._watch(stream, "FetchX509SVID", uid, compose)

    async def _fetch_x509_bundles(self, stream: Any) -> None:
        uid = await self._attest(stream, "FetchX509Bundles")

        def compose(snapshot: _Snapshot) -> Any:
            if not self.allow_unauthenticated_verifiers and not snapshot.spiffe_ids_for(uid):
                return None
            response = X509BundlesResponse()
            response.bundles[self.trust_domain_id] = snapshot.bundle_der
            return response

        await self._watch(stream, "FetchX509Bundles", uid, compose)

    # ------------------------------------------------------------------ socket and lifecycle

    def _prepare_socket(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeError(f"{self.socket_path} exists and is not a socket: refusing to remove it")
            LOG.info("Removing stale socket %s", self.socket_path)
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.socket_path)
            os.chmod(self.socket_path, 0o777)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        st = os.lstat(self.socket_path)
        self._socket_inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_socket(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if self._socket_inode == (st.st_dev, st.st_ino):
            os.unlink(self.socket_path)
        self._socket_inode = None

    async def start_async(self) -> WorkloadApiDouble:
        """Start serving in the running event loop."""
        if self._server is not None:
            raise RuntimeError("the Workload API double is already serving")
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        sock = self._prepare_socket()
        server = Server([self])
        try:
            await server.start(sock=sock)
        except BaseException:
            sock.close()
            self._remove_socket()
            raise
        self._server = server
        with self._lock:
            self._loop = loop
            self._next_rotation = time.monotonic() + self.rotate_every
        self._scheduler = loop.create_task(self._schedule())
        LOG.info(
            "Serving the SPIFFE Workload API on %s trust_domain=%s svid_ttl=%gs rotate_every=%s identities=%s",
            self.socket_path,
            self.trust_domain,
            self.svid_ttl,
            f"{self.rotate_every:g}s" if self.rotate_every else "never",
            ", ".join(f"{k}={'|'.join(v)}" for k, v in self._identities.items()) or "none",
        )
        return self

    async def _schedule(self) -> None:
        """Renew the SVIDs every ``rotate_every`` seconds after the last rotation (on demand ones included)."""
        wakeup = self._wakeup
        assert wakeup is not None
        loop = asyncio.get_running_loop()
        while self._server is not None:
            delay = self._next_rotation - time.monotonic() if self.rotate_every else None
            if delay is not None and delay <= 0:
                try:
                    self.rotate(reason="scheduled")
                except Exception:  # keep serving; the next period retries
                    LOG.exception("scheduled rotation failed")
                    self._next_rotation = time.monotonic() + self.rotate_every
                continue
            wakeup.clear()
            # No asyncio.wait_for here: on Python 3.11 it can swallow a cancellation that races with the event.
            timer = loop.call_later(delay, wakeup.set) if delay is not None else None
            try:
                await wakeup.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    async def stop_async(self, timeout: float = 5.0) -> None:
        """Stop serving: close the socket and every connection, remove the socket file."""
        server = self._server
        if server is None:
            return
        self._server = None  # also tells the scheduler to end
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.wait([self._scheduler], timeout=timeout)
            self._scheduler = None
        server.close()
        for transport in list(self._transports):
            transport.close()
        self._transports.clear()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            LOG.warning("request handlers did not finish within %gs", timeout)
        self._remove_socket()
        with self._lock:
            self._loop = None
        if self._stopped is not None:
            self._stopped.set()
        LOG.info("Stopped serving on %s", self.socket_path)

    async def wait_stopped(self) -> None:
        """Wait until ``stop_async`` has run."""
        assert self._stopped is not None
        await self._stopped.wait()

    async def __aenter__(self) -> WorkloadApiDouble:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    # ------------------------------------------------------------------ background-thread mode

    def start(self, timeout: float = 10.0) -> WorkloadApiDouble:
        """Serve from a background thread with its own event loop; return once the socket accepts calls."""
        if self._thread is not None:
            raise RuntimeError("the Workload API double is already running")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"spire-agent-double:{self.socket_path}", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise
        self._thread_loop = loop
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background-thread server started by ``start``."""
        thread = self._thread
        if thread is None:
            return
        loop = self._thread_loop
        assert loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> WorkloadApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- program


def parse_duration(text: str) -> float:
    """Parse seconds: ``90``, ``90s``, ``2m``, ``1h``, ``30d`` (fractions allowed)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use seconds or a number with s, m, h or d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _identity_arg(text: str) -> Tuple[IdentityKey, str]:
    try:
        return parse_identity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spire_agent_double",
        description="SPIRE agent test double: SPIFFE Workload API (X.509-SVIDs and bundles) on a Unix socket.",
        epilog="Signals: SIGTERM/SIGINT stop (socket removed), SIGHUP renews every SVID, SIGUSR1 rotates the CA.",
    )
    parser.add_argument("--socket-path", default=DEFAULT_SOCKET_PATH, help="Unix socket (default: %(default)s)")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="trust domain (default: %(default)s)")
    parser.add_argument(
        "--identity",
        action="append",
        default=[],
        type=_identity_arg,
        metavar="UID_OR_NAME=SPIFFE_ID",
        help="give the workloads of this uid or user the SPIFFE ID (repeatable; a uid may get several)",
    )
    parser.add_argument(
        "--svid-ttl", type=parse_duration, default=DEFAULT_SVID_TTL, help="X509-SVID lifetime (default: 120s)"
    )
    parser.add_argument(
        "--rotate-every",
        type=parse_duration,
        default=None,
        help="SVID renewal period (default: half the SVID TTL; 0: only on SIGHUP)",
    )
    parser.add_argument("--ca-ttl", type=parse_duration, default=DEFAULT_CA_TTL, help="CA lifetime (default: 30d)")
    parser.add_argument("--state-dir", default=None, help="keep the CA and bundle here across restarts")
    parser.add_argument(
        "--allow-unauthenticated-verifiers",
        action="store_true",
        help="serve FetchX509Bundles to callers without an identity",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARN", "WARNING", "ERROR"),
        help="default: %(default)s",
    )
    return parser


async def _serve(agent: WorkloadApiDouble) -> None:
    await agent.start_async()
    loop = asyncio.get_running_loop()
    stopping: List[asyncio.Task] = []

    def stop(signame: str) -> None:
        if not stopping:
            LOG.info("Received %s, stopping", signame)
            _sd_notify("STOPPING=1")
            stopping.append(loop.create_task(agent.stop_async()))

    def rotate(ca: bool, signame: str) -> None:
        try:
            agent.rotate(ca=ca, reason=signame)
        except Exception:
            LOG.exception("rotation on %s failed", signame)

    loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, rotate, False, "SIGHUP")
    loop.add_signal_handler(signal.SIGUSR1, rotate, True, "SIGUSR1")
    _sd_notify("READY=1")
    await agent.wait_stopped()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = "WARNING" if args.log_level == "WARN" else args.log_level
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level),
        format="%(asctime)s level=%(levelname)s %(message)s",
    )
    for noisy in ("hpack", "h2", "grpclib"):  # per-frame and per-cancellation chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    identities: Dict[IdentityKey, List[str]] = {}
    for owner, spiffe_id in args.identity:
        identities.setdefault(owner, []).append(spiffe_id)
    for owner in identities:
        if isinstance(owner, str) and _resolve_uid(owner) is None:
            LOG.warning("user %r does not exist (yet): it is looked up again at every call", owner)
    if not identities:
        LOG.warning("no --identity given: every caller gets PermissionDenied %r", MSG_NO_IDENTITY)
    try:
        agent = WorkloadApiDouble(
            args.socket_path,
            identities,
            trust_domain=args.trust_domain,
            svid_ttl=args.svid_ttl,
            rotate_every=args.rotate_every,
            ca_ttl=args.ca_ttl,
            state_dir=args.state_dir,
            allow_unauthenticated_verifiers=args.allow_unauthenticated_verifiers,
        )
        asyncio.run(_serve(agent))
    except (ValueError, OSError, RuntimeError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
