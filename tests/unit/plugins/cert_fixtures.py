"""A throw-away PKI for the certificate tests, and every regeneration reason caused with real files.

Importable without pytest (only cryptography and the collection's module_utils), so that
``python3 cert_fixtures.py DIR`` can replay the regeneration matrix under Debian 12's cryptography 38.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

COLLECTIONS_ROOT = os.environ["PG_TEST_COLLECTIONS"]  # set by tests/unit/conftest.py

from ansible_collections.permguard.secure.plugins.module_utils.certificates import (  # noqa: E402
    CertificateAuthority,
    CertificateRequest,
    HostFile,
    certificate_pem,
    certificate_request,
    create_ca,
    generate_private_key,
    issue_certificate,
    key_identifier,
    key_spec,
    private_key_pem,
    regeneration_reason,
)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402

UTC = datetime.timezone.utc
NAMES = ("pg-1.example.org", "127.0.0.1", "URI:spiffe://example.org/permguard/server")


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def ago(days: float) -> datetime.timedelta:
    """Return a span of whole or fractional days, to subtract from the current time."""
    return datetime.timedelta(days=days)


def request(common_name: str = "pg-1.example.org", **options: Any) -> CertificateRequest:
    """The request most tests ask for: a P-256 server certificate with three names."""
    options.setdefault("subject_alt_names", NAMES)
    return certificate_request(common_name, **options)


class Pki:
    """CAs and leaves made with the collection's own functions, written into a directory on demand."""

    def __init__(self, directory: Path, common_name: str = "Permguard Test CA") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = create_ca(common_name, key_spec())
        # Same name, different key: what a CA rotation produces.
        self.ca_same_name = create_ca(common_name, key_spec())
        self.other_ca = create_ca("Some Other CA", key_spec())

    def leaf(
        self,
        req: Optional[CertificateRequest] = None,
        ca: Optional[CertificateAuthority] = None,
        key: Any = None,
        issued: Optional[datetime.datetime] = None,
    ) -> Tuple[Any, Any]:
        """(certificate, key) for ``req`` signed by ``ca``, as if issued at ``issued``."""
        req = req or request()
        key = key or generate_private_key(req.key)
        return issue_certificate(key.public_key(), req, ca or self.ca, issued), key

    def forged_leaf(self, req: Optional[CertificateRequest] = None) -> Tuple[Any, Any]:
        """Issuer name and authority key id of the CA, signature by another key: only the signature gives it away."""
        req = req or request()
        key = generate_private_key(req.key)
        issued = now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(req.subject())
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued - datetime.timedelta(minutes=5))
            .not_valid_after(issued + datetime.timedelta(days=365))
        )
        template = self.leaf(req, key=key)[0]
        for extension in template.extensions:
            if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
                builder = builder.add_extension(extension.value, extension.critical)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(key_identifier(self.ca.cert), None, None), False)
        return builder.sign(self.ca_same_name.key, hashes.SHA256()), key

    def write(self, name: str, cert: Any = None, key: Any = None, *, data: Optional[bytes] = None) -> Path:
        """Write a certificate (chain), a key, or raw bytes to ``<dir>/<name>``; returns the path."""
        path = self.dir / name
        if data is None:
            data = certificate_pem(cert) if cert is not None else private_key_pem(key)
        path.write_bytes(data)
        return path

    def write_ca(self, ca: CertificateAuthority, name: str, passphrase: Optional[str] = None) -> Tuple[str, str]:
        """Write a CA's certificate and key; returns (cert_path, key_path)."""
        cert = self.write(f"{name}.pem", ca.cert)
        key = self.write(f"{name}-key.pem", data=private_key_pem(ca.key, passphrase))
        os.chmod(key, 0o600)
        return str(cert), str(key)


def _file(path: Path, data: Optional[bytes]) -> HostFile:
    return HostFile(str(path), True, data)


def reason_cases(directory: Path) -> Dict[str, Tuple[Optional[str], str]]:
    """Build every case of the decision with real certificates and keys; name -> (expected, decided)."""
    pki = Pki(directory)
    req = request()
    cases: Dict[str, Tuple[Optional[str], HostFile, HostFile, Dict[str, Any]]] = {}

    def pair(cert: Any, key: Any) -> Tuple[HostFile, HostFile]:
        return (_file(pki.dir / "c.pem", certificate_pem(cert)), _file(pki.dir / "k.pem", private_key_pem(key)))

    cert, key = pki.leaf()
    good_cert, good_key = pair(cert, key)
    missing = HostFile(str(pki.dir / "absent.pem"), False)
    unreadable = HostFile(str(pki.dir / "locked.pem"), True, None, "Permission denied")
    encrypted = _file(pki.dir / "enc.pem", private_key_pem(key, "secret"))
    other_key = _file(pki.dir / "other.pem", private_key_pem(generate_private_key(req.key)))

    cases["current"] = (None, good_cert, good_key, {})
    cases["certificate_missing"] = ("certificate_missing", missing, good_key, {})
    cases["both_missing"] = ("certificate_missing", missing, missing, {})
    cases["key_missing"] = ("key_missing", good_cert, missing, {})
    cases["certificate_unreadable"] = ("certificate_unreadable", unreadable, good_key, {})
    cases["certificate_invalid"] = ("certificate_invalid", _file(pki.dir / "x", b"not a certificate"), good_key, {})
    cases["certificate_invalid_empty"] = ("certificate_invalid", _file(pki.dir / "x", b""), good_key, {})
    cases["key_unreadable"] = ("key_unreadable", good_cert, unreadable, {})
    cases["key_invalid"] = ("key_invalid", good_cert, _file(pki.dir / "k", certificate_pem(cert)), {})
    cases["key_invalid_encrypted"] = ("key_invalid", good_cert, encrypted, {})
    cases["key_mismatch"] = ("key_mismatch", good_cert, other_key, {})
    cases["key_type_changed_rsa"] = ("key_type_changed", good_cert, good_key, {"req": request(key_type="rsa")})
    cases["key_type_changed_curve"] = ("key_type_changed", good_cert, good_key, {"req": request(curve="P-384")})
    cases["issuer_changed_same_name"] = ("issuer_changed", *pair(*pki.leaf(ca=pki.ca_same_name)), {})
    cases["issuer_changed_name"] = ("issuer_changed", *pair(*pki.leaf(ca=pki.other_ca)), {})
    cases["issuer_changed_ca_rotated"] = ("issuer_changed", good_cert, good_key, {"ca": pki.ca_same_name.cert})
    cases["signature_invalid"] = ("signature_invalid", *pair(*pki.forged_leaf()), {})
    cases["subject_changed"] = ("subject_changed", *pair(*pki.leaf(request("pg-2.example.org"))), {})
    cases["subject_alt_names_changed"] = (
        "subject_alt_names_changed",
        *pair(*pki.leaf(request(subject_alt_names=NAMES[:2]))),
        {},
    )
    cases["subject_alt_names_order_and_case"] = (
        None,
        *pair(*pki.leaf(request(subject_alt_names=["IP:127.0.0.1", *NAMES[2:], "DNS:PG-1.Example.org"]))),
        {},
    )
    cases["usage_changed_client"] = ("usage_changed", *pair(*pki.leaf(request(profile="client"))), {})
    cases["usage_changed_server_client"] = ("usage_changed", *pair(*pki.leaf(request(profile="server_client"))), {})
    cases["expired"] = ("expired", *pair(*pki.leaf(issued=now() - ago(366))), {})
    cases["renew_window"] = ("renew_window", *pair(*pki.leaf(issued=now() - ago(340))), {})
    cases["renew_window_custom"] = (
        "renew_window",
        *pair(*pki.leaf(issued=now() - ago(300))),
        {"req": request(renew_before_days=90)},
    )
    cases["outside_renew_window"] = (None, *pair(*pki.leaf(issued=now() - ago(330))), {})
    cases["forced"] = ("forced", good_cert, good_key, {"force": True})
    cases["forced_but_expired"] = ("expired", *pair(*pki.leaf(issued=now() - ago(400))), {"force": True})
    cases["forced_but_missing"] = ("certificate_missing", missing, good_key, {"force": True})

    results = {}
    for name, (expected, cert_file, key_file, extra) in cases.items():
        decided = regeneration_reason(
            cert_file, key_file, extra.get("req", req), extra.get("ca", pki.ca.cert), force=extra.get("force", False)
        )
        results[name] = (expected, decided)
    return results


if __name__ == "__main__":
    print(json.dumps(reason_cases(Path(sys.argv[1]))))
