# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keys, CSRs, signing and the one regeneration decision of permguard.secure's certificates.

Imported on the target host by ``permguard.secure.certificate`` (Debian 12: cryptography 38) and on
the controller by its action plugin and by ``permguard.secure.ca`` (any newer cryptography), so it
only uses APIs that cryptography 38 has (no ``not_valid_after_utc``, no ``verify_directly_issued_by``,
no ``load_pem_x509_certificates``).

* :func:`certificate_request` validates what a task asks for into a :class:`CertificateRequest`;
  :func:`normalize_subject_alt_names` checks each name (``DNS:``, ``IP:``, ``URI:`` or a plain name).
* :func:`generate_private_key`, :func:`build_csr` (host side), :func:`sign_csr` (controller side).
* :func:`load_ca`, :func:`check_ca_certificate`, :func:`create_ca` for the certificate authority.
* :func:`regeneration_reason` decides, with a stable reason string from :data:`REASONS`.
* :func:`certificate_facts` describes a certificate in the format of ``grpc_tls_probe``'s facts.

Every input problem raises :class:`CertificateError`, whose ``option`` names the task option at fault.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # reported by the modules through missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[BaseException] = exc
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

PROFILES = ("server", "client", "server_client")
KEY_TYPES = ("ecdsa", "rsa")
CURVES = {"P-256": "secp256r1", "P-384": "secp384r1"}
RSA_KEY_SIZES = (2048, 3072, 4096)
NOT_BEFORE_BACKDATE = datetime.timedelta(minutes=5)  # tolerates clocks a little behind the controller's

# Stable reason strings, in the order regeneration_reason() checks them; the text explains each one.
REASONS = {
    "certificate_missing": "the certificate file does not exist",
    "key_missing": "the private key file does not exist",
    "certificate_unreadable": "the certificate file cannot be read",
    "certificate_invalid": "the certificate file holds no parseable PEM certificate",
    "key_unreadable": "the private key file cannot be read",
    "key_invalid": "the private key file holds no parseable unencrypted private key",
    "key_mismatch": "the private key does not match the certificate",
    "key_type_changed": "the key's type or size differs from key_type, curve or key_size",
    "issuer_changed": "the certificate's issuer or authority key identifier is not the current CA's",
    "signature_invalid": "the certificate's signature does not verify with the current CA's key",
    "subject_changed": "the certificate's subject differs from common_name",
    "subject_alt_names_changed": "the certificate's subject alternative names differ from subject_alt_names",
    "usage_changed": "the certificate's key usage, extended key usage or basic constraints differ from the profile",
    "expired": "the certificate has expired",
    "renew_window": "the certificate expires within renew_before_days",
    "forced": "force=true asks for a new certificate",
}


class CertificateError(Exception):
    """An input that cannot be used; ``option`` names the task option (or file) at fault."""

    def __init__(self, msg: str, option: Optional[str] = None) -> None:
        super().__init__(msg)
        self.option = option


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeySpec:
    """The kind of key asked for: ``ecdsa`` with a curve name, or ``rsa`` with a size."""

    key_type: str = "ecdsa"
    curve: Optional[str] = "P-256"
    key_size: Optional[int] = None

    def describe(self) -> str:
        """Human name, e.g. ``ECDSA P-256`` or ``RSA 3072``."""
        return f"ECDSA {self.curve}" if self.key_type == "ecdsa" else f"RSA {self.key_size}"


def key_spec(key_type: str = "ecdsa", curve: Optional[str] = None, key_size: Optional[int] = None) -> KeySpec:
    """Validate key options into a :class:`KeySpec` (defaults: P-256 for ECDSA, 2048 bits for RSA)."""
    if key_type not in KEY_TYPES:
        raise CertificateError(f"key_type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}", "key_type")
    if key_type == "ecdsa":
        if key_size is not None:
            raise CertificateError("key_size applies only to key_type=rsa; use curve for ECDSA keys", "key_size")
        curve = curve or "P-256"
        if curve not in CURVES:
            raise CertificateError(f"curve must be one of {', '.join(CURVES)}, not {curve!r}", "curve")
        return KeySpec("ecdsa", curve, None)
    if curve is not None:
        raise CertificateError("curve applies only to key_type=ecdsa; use key_size for RSA keys", "curve")
    key_size = key_size or 2048
    if key_size not in RSA_KEY_SIZES:
        sizes = ", ".join(str(size) for size in RSA_KEY_SIZES)
        raise CertificateError(f"key_size must be one of {sizes}, not {key_size}", "key_size")
    return KeySpec("rsa", None, key_size)


def key_spec_of(key: Any) -> Optional[KeySpec]:
    """The :class:`KeySpec` of a private or public key, or None for a kind this collection does not issue."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        names = {value: name for name, value in CURVES.items()}
        return KeySpec("ecdsa", names[key.curve.name], None) if key.curve.name in names else None
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return KeySpec("rsa", None, key.key_size)
    return None


def describe_key(key: Any) -> str:
    """Human name of a key's kind, also for kinds outside :class:`KeySpec` (e.g. ``Ed25519``)."""
    spec = key_spec_of(key)
    if spec is not None:
        return spec.describe()
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__.replace("PrivateKey", "").replace("PublicKey", "").lstrip("_") or "unknown"


def generate_private_key(spec: KeySpec) -> Any:
    """A new private key of the kind ``spec`` asks for."""
    if spec.key_type == "ecdsa":
        curve = ec.SECP384R1() if spec.curve == "P-384" else ec.SECP256R1()
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=spec.key_size or 2048)


def private_key_pem(key: Any, passphrase: Optional[str] = None) -> bytes:
    """PKCS#8 PEM of a private key, encrypted with ``passphrase`` when one is given."""
    if passphrase:
        encryption: Any = serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
    else:
        encryption = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def is_encrypted_pem(data: bytes) -> bool:
    """Whether a PEM private key is encrypted (PKCS#8 ``ENCRYPTED PRIVATE KEY`` or a legacy ``Proc-Type``)."""
    return b"ENCRYPTED" in data.split(b"-----END", 1)[0]


def load_private_key(
    data: bytes, passphrase: Optional[str] = None, name: str = "the key", passphrase_name: str = "the passphrase"
) -> Any:
    """Load a PEM private key; the error says whether it is not a key, encrypted, or the passphrase is wrong."""
    encrypted = is_encrypted_pem(data)
    if encrypted and not passphrase:
        raise CertificateError(f"{name} is encrypted and no passphrase was given")
    if passphrase and not encrypted and b"PRIVATE KEY" in data:
        raise CertificateError(f"{passphrase_name} was given but {name} is not encrypted")
    password = passphrase.encode("utf-8") if passphrase and encrypted else None
    try:
        return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise CertificateError(f"{passphrase_name} does not decrypt {name}") from exc
        raise CertificateError(f"{name} is not a PEM private key") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and others for odd input
        raise CertificateError(f"{name} is not a usable private key: {exc}") from exc


def public_key_der(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a private key's or public key's public half, for comparisons."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --------------------------------------------------------------------------- certificates


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def split_pem_certificates(data: bytes) -> List[bytes]:
    """Each PEM certificate block of a file or bundle, in order."""
    return [match.group(0) + b"\n" for match in _PEM_CERTIFICATE.finditer(data)]


def load_certificates(data: bytes, name: str = "the certificate file") -> List[Any]:
    """Every certificate of a PEM file or bundle; raises when there is none or one is broken."""
    blocks = split_pem_certificates(data)
    if not blocks:
        raise CertificateError(f"{name} holds no PEM certificate")
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as exc:
        raise CertificateError(f"{name} holds a PEM certificate that cannot be parsed: {exc}") from exc


def load_certificate(data: bytes, name: str = "the certificate file") -> Any:
    """The first certificate of a PEM file (the leaf of a chain)."""
    return load_certificates(data, name)[0]


def certificate_pem(cert: Any) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def validity(cert: Any) -> Tuple[datetime.datetime, datetime.datetime]:
    """(not_before, not_after) as aware UTC datetimes, on cryptography 38 and newer."""
    utc = datetime.timezone.utc
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=utc)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=utc)
    return before, after


def fingerprint_sha256(cert: Any) -> str:
    """Upper-case, colon-separated SHA-256 fingerprint (as ``grpc_tls_probe`` reports it)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _extension(cert: Any, kind: Any) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _common_name(name: Any) -> Optional[str]:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def signature_verifies(cert: Any, issuer_public_key: Any) -> bool:
    """Whether ``cert`` was signed by the key behind ``issuer_public_key`` (PKCS#1 v1.5, ECDSA or EdDSA)."""
    try:
        if isinstance(issuer_public_key, rsa.RSAPublicKey):
            issuer_public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
            )
        elif isinstance(issuer_public_key, ec.EllipticCurvePublicKey):
            issuer_public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        elif isinstance(issuer_public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            issuer_public_key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def key_identifier(cert: Any) -> bytes:
    """The certificate's subject key identifier, or the RFC 5280 method-1 one computed from its key."""
    ski = _extension(cert, x509.SubjectKeyIdentifier)
    if ski is not None:
        return ski.digest
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


# --------------------------------------------------------------------------- names


_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SAN_PREFIX = re.compile(r"^(DNS|IP|URI):(.*)$", re.I | re.S)
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")


def _dns_name(value: str, given: str) -> str:
    name = value.lower()
    labels = name.split(".")
    wildcard = labels[0] == "*" and len(labels) > 2
    checked = labels[1:] if wildcard else labels
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in checked):
        raise CertificateError(
            f"subject alternative name {given!r} is not a valid DNS name (letters, digits and hyphens in dot-separated"
            " labels of 1-63 characters; a wildcard only as the whole leftmost label)",
            "subject_alt_names",
        )
    if checked[-1].isdigit():
        raise CertificateError(
            f"subject alternative name {given!r} is neither a valid IP address nor a DNS name (its last label is"
            " numeric)",
            "subject_alt_names",
        )
    return name


def _ip_address(value: str, given: str) -> str:
    try:
        if "%" in value:  # a zone id has no meaning in a certificate
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise CertificateError(
            f"subject alternative name {given!r} is not a valid IP address", "subject_alt_names"
        ) from None


def _uri(value: str, given: str) -> str:
    parts = urlsplit(value)
    problem = None
    if not parts.scheme or not parts.netloc or any(char.isspace() for char in value):
        problem = "a URI needs a scheme and an authority, without spaces"
    elif parts.scheme.lower() == "spiffe" and (
        not _TRUST_DOMAIN.match(parts.netloc) or parts.query or parts.fragment or parts.scheme != "spiffe"
    ):
        problem = "a SPIFFE ID is spiffe://<lower-case trust domain>/<path>, without port, query or fragment"
    if problem:
        raise CertificateError(f"subject alternative name {given!r} is not a valid URI: {problem}", "subject_alt_names")
    return value


def normalize_subject_alt_name(value: str) -> str:
    """Check one name and return its canonical ``DNS:``/``IP:``/``URI:`` form.

    ``DNS:``, ``IP:`` and ``URI:`` prefixes are honoured; a plain name is an IP address when it parses as
    one, a URI when it contains ``://``, otherwise a DNS name. DNS names are lower-cased, IP addresses
    written in their short form.
    """
    if not isinstance(value, str) or not value.strip():
        raise CertificateError(f"subject alternative name {value!r} is empty", "subject_alt_names")
    value = value.strip()
    match = _SAN_PREFIX.match(value)
    if match:
        kind, name = match.group(1).upper(), match.group(2).strip()
        if kind == "DNS":
            return "DNS:" + _dns_name(name, value)
        if kind == "IP":
            return "IP:" + _ip_address(name, value)
        return "URI:" + _uri(name, value)
    if "://" in value:
        return "URI:" + _uri(value, value)
    try:
        return "IP:" + str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if ":" in value:
        raise CertificateError(
            f"subject alternative name {value!r} is neither a valid IP address nor a DNS name; prefix it with DNS:,"
            " IP: or URI:",
            "subject_alt_names",
        )
    return "DNS:" + _dns_name(value, value)


def normalize_subject_alt_names(values: Sequence[str]) -> Tuple[str, ...]:
    """Canonical forms of a list of names, in the given order, duplicates dropped."""
    result: List[str] = []
    for value in values or ():
        name = normalize_subject_alt_name(value)
        if name not in result:
            result.append(name)
    return tuple(result)


def _general_name(canonical: str) -> Any:
    kind, value = canonical.split(":", 1)
    if kind == "DNS":
        return x509.DNSName(value)
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.UniformResourceIdentifier(value)


def subject_alt_names_of(cert: Any) -> List[str]:
    """A certificate's (or CSR's) DNS, IP and URI names in canonical form; other kinds as ``OTHER:``."""
    sans = _extension(cert, x509.SubjectAlternativeName)
    names: List[str] = []
    for general in sans or ():
        if isinstance(general, x509.DNSName):
            names.append("DNS:" + general.value.lower())
        elif isinstance(general, x509.IPAddress):
            names.append("IP:" + str(general.value))
        elif isinstance(general, x509.UniformResourceIdentifier):
            names.append("URI:" + general.value)
        else:
            names.append("OTHER:" + str(general.value))
    return names


# --------------------------------------------------------------------------- requests and profiles


@dataclass(frozen=True)
class CertificateRequest:
    """What a task asks for: subject, names, usage profile, key kind and validity."""

    common_name: str
    subject_alt_names: Tuple[str, ...] = ()
    profile: str = "server"
    key: KeySpec = KeySpec()
    validity_days: int = 365
    renew_before_days: int = 30

    def subject(self) -> Any:
        """The subject name: the common name alone."""
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])


def certificate_request(
    common_name: str,
    *,
    subject_alt_names: Sequence[str] = (),
    profile: str = "server",
    key_type: str = "ecdsa",
    curve: Optional[str] = None,
    key_size: Optional[int] = None,
    validity_days: int = 365,
    renew_before_days: int = 30,
) -> CertificateRequest:
    """Validate a task's options into a :class:`CertificateRequest`; raises :class:`CertificateError`."""
    if not common_name or not common_name.strip():
        raise CertificateError("common_name must not be empty", "common_name")
    if len(common_name) > 64:
        raise CertificateError(
            f"common_name {common_name!r} is longer than the 64 characters X.509 allows", "common_name"
        )
    if profile not in PROFILES:
        raise CertificateError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}", "profile")
    if validity_days < 1:
        raise CertificateError(f"validity_days must be at least 1, not {validity_days}", "validity_days")
    if renew_before_days < 0:
        raise CertificateError(f"renew_before_days must not be negative, not {renew_before_days}", "renew_before_days")
    if renew_before_days >= validity_days:
        raise CertificateError(
            f"renew_before_days ({renew_before_days}) must be shorter than validity_days ({validity_days}): every"
            " new certificate would already be due for renewal",
            "renew_before_days",
        )
    return CertificateRequest(
        common_name=common_name,
        subject_alt_names=normalize_subject_alt_names(subject_alt_names),
        profile=profile,
        key=key_spec(key_type, curve, key_size),
        validity_days=validity_days,
        renew_before_days=renew_before_days,
    )


def request_from_params(params: Dict[str, Any]) -> CertificateRequest:
    """A :class:`CertificateRequest` from the options of a ``permguard.secure.certificate`` task."""
    return certificate_request(
        common_name=params["common_name"],
        subject_alt_names=params.get("subject_alt_names") or (),
        profile=params.get("profile") or "server",
        key_type=params.get("key_type") or "ecdsa",
        curve=params.get("curve"),
        key_size=params.get("key_size"),
        validity_days=365 if params.get("validity_days") is None else params["validity_days"],
        renew_before_days=30 if params.get("renew_before_days") is None else params["renew_before_days"],
    )


def key_usage_for(profile: str, spec: KeySpec) -> Any:
    """Key usage of a leaf: digitalSignature, plus keyEncipherment for RSA keys that serve TLS."""
    encipher = spec.key_type == "rsa" and profile in ("server", "server_client")
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def extended_key_usage_for(profile: str) -> List[Any]:
    """Extended key usages: serverAuth for ``server``, clientAuth for ``client``, both for ``server_client``."""
    usages = []
    if profile in ("server", "server_client"):
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if profile in ("client", "server_client"):
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return usages


def _usage_matches(cert: Any, request: CertificateRequest) -> bool:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or constraints.ca:
        return False
    usage = _extension(cert, x509.KeyUsage)
    extended = _extension(cert, x509.ExtendedKeyUsage)
    spec = key_spec_of(cert.public_key()) or request.key
    return (
        usage == key_usage_for(request.profile, spec)
        and extended is not None
        and set(extended) == set(extended_key_usage_for(request.profile))
    )


def build_csr(key: Any, request: CertificateRequest) -> Any:
    """A CSR signed by ``key`` (on the host), naming the subject and SANs asked for."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(request.subject())
    if request.subject_alt_names:
        names = [_general_name(name) for name in request.subject_alt_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def csr_pem(csr: Any) -> bytes:
    """PEM of a CSR."""
    return csr.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- the certificate authority


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key (controller side only)."""

    cert: Any
    key: Any

    @property
    def cert_pem(self) -> bytes:
        """PEM of the CA certificate."""
        return certificate_pem(self.cert)

    @property
    def self_signed(self) -> bool:
        """Whether the CA is a root (its subject is its issuer)."""
        return self.cert.subject == self.cert.issuer


def ca_problem(cert: Any) -> Optional[str]:
    """Why a certificate cannot act as a CA (no ``CA:TRUE`` basic constraints, no keyCertSign), or None."""
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return "its basic constraints do not say CA:TRUE"
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        return "its key usage does not allow keyCertSign"
    return None


def check_ca_certificate(cert: Any, name: str = "the CA certificate", now: Optional[datetime.datetime] = None) -> None:
    """Raise :class:`CertificateError` unless ``cert`` is a CA that is valid now."""
    problem = ca_problem(cert)
    if problem:
        raise CertificateError(f"{name} ({cert.subject.rfc4514_string()}) is not a CA: {problem}")
    not_before, not_after = validity(cert)
    now = now or _utcnow()
    if not_after <= now:
        raise CertificateError(f"{name} ({cert.subject.rfc4514_string()}) expired on {_iso(not_after)}")
    if not_before > now:
        raise CertificateError(f"{name} ({cert.subject.rfc4514_string()}) is not valid before {_iso(not_before)}")


def load_ca(
    cert_data: bytes,
    key_data: bytes,
    passphrase: Optional[str] = None,
    *,
    cert_name: str = "the CA certificate",
    key_name: str = "the CA key",
    passphrase_name: str = "the passphrase",
    now: Optional[datetime.datetime] = None,
) -> CertificateAuthority:
    """Load and check a CA: a valid CA certificate and the private key that matches it."""
    cert = load_certificate(cert_data, cert_name)
    check_ca_certificate(cert, cert_name, now)
    key = load_private_key(key_data, passphrase, key_name, passphrase_name)
    if public_key_der(key) != public_key_der(cert.public_key()):
        raise CertificateError(f"{key_name} does not match {cert_name} ({cert.subject.rfc4514_string()})")
    return CertificateAuthority(cert, key)


def _signing_hash(key: Any) -> Any:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def create_ca(
    common_name: str, spec: KeySpec, validity_days: int = 3650, now: Optional[datetime.datetime] = None
) -> CertificateAuthority:
    """A new self-signed root CA that signs leaves directly (path length 0)."""
    key = generate_private_key(spec)
    now = now or _utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - NOT_BEFORE_BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _signing_hash(key))
    )
    return CertificateAuthority(cert, key)


def random_serial() -> int:
    """A random positive 128-bit serial number."""
    return secrets.randbits(128) or 1


def issue_certificate(
    public_key: Any, request: CertificateRequest, ca: CertificateAuthority, now: Optional[datetime.datetime] = None
) -> Any:
    """Sign a leaf for ``public_key`` with exactly the subject, names and usages of ``request``."""
    now = now or _utcnow()
    spec = key_spec_of(public_key) or request.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(request.subject())
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - NOT_BEFORE_BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=request.validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage_for(request.profile, spec), critical=True)
        .add_extension(x509.ExtendedKeyUsage(extended_key_usage_for(request.profile)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(ca.cert), None, None),
            critical=False,
        )
    )
    if request.subject_alt_names:
        names = [_general_name(name) for name in request.subject_alt_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, _signing_hash(ca.key))


def sign_csr(
    csr_data: bytes, request: CertificateRequest, ca: CertificateAuthority, now: Optional[datetime.datetime] = None
) -> Any:
    """Sign a host's CSR (controller side).

    Only the CSR's public key is taken, after its proof of possession verifies and its kind matches the
    request; subject, names and usages come from the task itself, never from the host.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_data)
    except ValueError as exc:
        raise CertificateError(f"the host returned a CSR that cannot be parsed: {exc}") from exc
    if not csr.is_signature_valid:
        raise CertificateError("the host returned a CSR whose signature does not verify")
    public_key = csr.public_key()
    if key_spec_of(public_key) != request.key:
        raise CertificateError(
            f"the host's CSR carries a {describe_key(public_key)} key, but {request.key.describe()} was asked for"
        )
    return issue_certificate(public_key, request, ca, now)


# --------------------------------------------------------------------------- the regeneration decision


@dataclass(frozen=True)
class HostFile:
    """A file as the module found it: missing, unreadable (``error``), or its bytes (``data``)."""

    path: str
    exists: bool
    data: Optional[bytes] = None
    error: Optional[str] = None


def read_host_file(path: str) -> HostFile:
    """Read a file for :func:`regeneration_reason`, recording rather than raising why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return HostFile(path, True, handle.read())
    except FileNotFoundError:
        return HostFile(path, False)
    except OSError as exc:
        return HostFile(path, True, None, exc.strerror or str(exc))


def fsync_directory(path: str) -> None:
    """Flush the directory entry of ``path`` (after a rename) to disk."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, mode: int, ids: Tuple[int, int] = (-1, -1)) -> None:
    """Write a temporary file beside ``path`` with its final mode (and owner), then rename it over ``path``.

    Readers see the old content or the new, never a partial file; on failure the temporary file is removed.
    """
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if ids != (-1, -1):
                os.fchown(handle.fileno(), *ids)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(path)


def _file_reason(cert_file: HostFile, key_file: HostFile) -> Optional[str]:
    """The first reason about the files themselves: missing, unreadable or not parseable."""
    files = (("certificate", cert_file, load_certificate), ("key", key_file, load_private_key))
    for kind, host_file, _loader in files:
        if not host_file.exists:
            return f"{kind}_missing"
    for kind, host_file, loader in files:
        if host_file.data is None:
            return f"{kind}_unreadable"
        try:
            loader(host_file.data)
        except CertificateError:
            return f"{kind}_invalid"
    return None


def regeneration_reason(
    cert_file: HostFile,
    key_file: HostFile,
    request: CertificateRequest,
    ca_cert: Any,
    *,
    force: bool = False,
    now: Optional[datetime.datetime] = None,
) -> Optional[str]:
    """Decide whether the certificate and key must be made anew; return a :data:`REASONS` key or None.

    The checks run in the order of :data:`REASONS` and the first that applies wins, so a missing or broken
    file is reported before any comparison and ``forced`` only when nothing else is due. ``ca_cert`` is the
    CA that signs now: a leaf of any other CA (even one with the same name) is due for reissue.
    """
    reason = _file_reason(cert_file, key_file)
    if reason:
        return reason
    cert = load_certificate(cert_file.data or b"")
    key = load_private_key(key_file.data or b"")
    not_after = validity(cert)[1]
    now = now or _utcnow()
    checks = (
        ("key_mismatch", lambda: public_key_der(key) != public_key_der(cert.public_key())),
        ("key_type_changed", lambda: key_spec_of(key) != request.key),
        ("issuer_changed", lambda: not _issued_by(cert, ca_cert)),
        ("signature_invalid", lambda: not signature_verifies(cert, ca_cert.public_key())),
        ("subject_changed", lambda: cert.subject != request.subject()),
        ("subject_alt_names_changed", lambda: set(subject_alt_names_of(cert)) != set(request.subject_alt_names)),
        ("usage_changed", lambda: not _usage_matches(cert, request)),
        ("expired", lambda: not_after <= now),
        ("renew_window", lambda: not_after - now <= datetime.timedelta(days=request.renew_before_days)),
        ("forced", lambda: force),
    )
    return next((reason for reason, applies in checks if applies()), None)


def _issued_by(cert: Any, ca_cert: Any) -> bool:
    if cert.issuer != ca_cert.subject:
        return False
    authority = _extension(cert, x509.AuthorityKeyIdentifier)
    return authority is None or authority.key_identifier in (None, key_identifier(ca_cert))


def leaf_issued_by(cert: Any, ca_cert: Any) -> bool:
    """Whether ``ca_cert`` issued ``cert``: issuer name, authority key id and signature all agree."""
    return _issued_by(cert, ca_cert) and signature_verifies(cert, ca_cert.public_key())


# --------------------------------------------------------------------------- facts


def certificate_facts(cert: Any, now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    """Describe a certificate: subject, issuer, serial, validity, days left, names, SHA-256, key kind."""
    not_before, not_after = validity(cert)
    now = now or _utcnow()
    return {
        "subject": cert.subject.rfc4514_string(),
        "common_name": _common_name(cert.subject),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "X"),
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "days_left": (not_after - now).days,
        "subject_alt_names": subject_alt_names_of(cert),
        "sha256": fingerprint_sha256(cert),
        "key": describe_key(cert.public_key()),
    }


DIFF_FIELDS = ("subject", "subject_alt_names", "serial", "not_after", "issuer")


def diff_view(facts: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The fields diff mode shows (subject, SANs, serial, not_after, issuer); empty for no certificate."""
    return {name: facts[name] for name in DIFF_FIELDS} if facts else {}


def expected_facts(
    request: CertificateRequest, ca_cert: Any, now: Optional[datetime.datetime] = None
) -> Dict[str, Any]:
    """The diff view of the certificate a request would produce now (its serial is not known yet)."""
    now = now or _utcnow()
    return {
        "subject": request.subject().rfc4514_string(),
        "subject_alt_names": list(request.subject_alt_names),
        "serial": "(new)",
        "not_after": _iso(now + datetime.timedelta(days=request.validity_days)),
        "issuer": ca_cert.subject.rfc4514_string(),
    }
