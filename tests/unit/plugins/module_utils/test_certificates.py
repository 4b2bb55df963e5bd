"""The certificate engine: names, profiles, keys, the CA, signing, and every regeneration reason caused for real."""

from __future__ import annotations

import ast
import datetime
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cert_fixtures.py beside conftest.py

import cert_fixtures
from ansible_collections.permguard.secure.plugins.module_utils import certificates
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    REASONS,
    CertificateError,
    HostFile,
    build_csr,
    certificate_facts,
    certificate_request,
    check_ca_certificate,
    create_ca,
    csr_pem,
    diff_view,
    generate_private_key,
    issue_certificate,
    key_spec,
    key_spec_of,
    load_ca,
    load_certificates,
    load_private_key,
    normalize_subject_alt_name,
    normalize_subject_alt_names,
    private_key_pem,
    read_host_file,
    regeneration_reason,
    sign_csr,
    signature_verifies,
    split_pem_certificates,
    validity,
    write_atomically,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SYSTEM_PYTHON = "/usr/bin/python3"
FIXTURES = Path(cert_fixtures.__file__)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> cert_fixtures.Pki:
    return cert_fixtures.Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def reason_matrix(tmp_path_factory) -> dict:
    return cert_fixtures.reason_cases(tmp_path_factory.mktemp("reasons"))


# --------------------------------------------------------------------------- the regeneration decision

CASE_NAMES = [
    "current",
    "certificate_missing",
    "both_missing",
    "key_missing",
    "certificate_unreadable",
    "certificate_invalid",
    "certificate_invalid_empty",
    "key_unreadable",
    "key_invalid",
    "key_invalid_encrypted",
    "key_mismatch",
    "key_type_changed_rsa",
    "key_type_changed_curve",
    "issuer_changed_same_name",
    "issuer_changed_name",
    "issuer_changed_ca_rotated",
    "signature_invalid",
    "subject_changed",
    "subject_alt_names_changed",
    "subject_alt_names_order_and_case",
    "usage_changed_client",
    "usage_changed_server_client",
    "expired",
    "renew_window",
    "renew_window_custom",
    "outside_renew_window",
    "forced",
    "forced_but_expired",
    "forced_but_missing",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_regeneration_reason(reason_matrix, case):
    expected, decided = reason_matrix[case]
    assert decided == expected


def test_every_reason_is_caused_by_a_case(reason_matrix):
    assert set(reason_matrix) == set(CASE_NAMES)
    assert {pair[0] for pair in reason_matrix.values()} - {None} == set(REASONS)


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian 12's python3")
def test_every_reason_under_debian12_cryptography(tmp_path):
    """The host runs the decision with Debian 12's cryptography 38: the whole matrix again under it."""
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import cryptography; print(cryptography.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("Debian's python3-cryptography is not installed")
    env = dict(os.environ, PYTHONPATH=cert_fixtures.COLLECTIONS_ROOT)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-W", "error::DeprecationWarning", str(FIXTURES), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    matrix = json.loads(proc.stdout)
    assert set(matrix) == set(CASE_NAMES)
    wrong = {name: pair for name, pair in matrix.items() if pair[0] != pair[1]}
    assert wrong == {}, f"cryptography {probe.stdout.strip()}"


def test_reasons_are_checked_in_documented_order(reason_matrix):
    """REASONS is the documented order; each reason string is stable snake_case."""
    assert next(iter(REASONS)) == "certificate_missing"
    assert list(REASONS)[-1] == "forced"
    assert all(name.replace("_", "").isalpha() and name.islower() for name in REASONS)


def test_renew_window_edge(pki):
    req = cert_fixtures.request(renew_before_days=30)
    cert, key = pki.leaf(req)
    files = (
        HostFile("c", True, certificates.certificate_pem(cert)),
        HostFile("k", True, private_key_pem(key)),
    )
    not_after = validity(cert)[1]
    assert regeneration_reason(*files, req, pki.ca.cert, now=not_after - datetime.timedelta(days=30, seconds=1)) is None
    assert regeneration_reason(*files, req, pki.ca.cert, now=not_after - datetime.timedelta(days=30)) == "renew_window"
    assert regeneration_reason(*files, req, pki.ca.cert, now=not_after) == "expired"


def test_read_host_file(tmp_path):
    assert read_host_file(str(tmp_path / "absent")) == HostFile(str(tmp_path / "absent"), False)
    (tmp_path / "f").write_bytes(b"data")
    assert read_host_file(str(tmp_path / "f")).data == b"data"
    unreadable = read_host_file(str(tmp_path))  # a directory: exists, cannot be read as a file
    assert unreadable.exists
    assert unreadable.data is None
    assert unreadable.error


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("pg-1.example.org", "DNS:pg-1.example.org"),
        ("PG-1.Example.ORG", "DNS:pg-1.example.org"),
        ("localhost", "DNS:localhost"),
        ("*.example.org", "DNS:*.example.org"),
        ("DNS:permguard", "DNS:permguard"),
        ("dns:permguard", "DNS:permguard"),
        ("127.0.0.1", "IP:127.0.0.1"),
        ("::1", "IP:::1"),
        ("2001:db8:0:0:0:0:0:1", "IP:2001:db8::1"),
        ("IP:10.0.0.1", "IP:10.0.0.1"),
        ("IP:::1", "IP:::1"),
        ("URI:spiffe://example.org/permguard/server", "URI:spiffe://example.org/permguard/server"),
        ("spiffe://example.org/ops/probe", "URI:spiffe://example.org/ops/probe"),
        ("URI:https://pg.example.org/x", "URI:https://pg.example.org/x"),
        ("  pg.example.org ", "DNS:pg.example.org"),
    ],
)
def test_subject_alt_name_forms(given, canonical):
    assert normalize_subject_alt_name(given) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "bad_name.example.org",
        "-lead.example.org",
        "trail-.example.org",
        "a..b",
        "1.2.3.999",
        "10.0.0",
        "IP:1.2.3.999",
        "IP:example.org",
        "IP:fe80::1%eth0",
        "DNS:",
        "DNS:*",
        "DNS:*.com",
        "DNS:a.*.example.org",
        "x" * 64 + ".example.org",
        ("a" * 60 + ".") * 5 + "org",
        "email:ops@example.org",
        "URI:not a uri",
        "URI:/relative/path",
        "URI:spiffe://Example.org/x",
        "spiffe://example.org:8443/x",
        "pg.example.org.",
        "bücher.example",
        "",
        "   ",
    ],
)
def test_invalid_subject_alt_names_are_refused_by_value(bad):
    with pytest.raises(CertificateError) as info:
        normalize_subject_alt_name(bad)
    assert info.value.option == "subject_alt_names"
    assert repr(bad.strip()) in str(info.value) or repr(bad) in str(info.value)


def test_subject_alt_names_deduplicated_in_order():
    assert normalize_subject_alt_names(["b.example", "IP:127.0.0.1", "B.example", "127.0.0.1", "a.example"]) == (
        "DNS:b.example",
        "IP:127.0.0.1",
        "DNS:a.example",
    )


# --------------------------------------------------------------------------- requests and keys


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"renew_before_days": 400}, "renew_before_days"),
        ({"renew_before_days": 365}, "renew_before_days"),
        ({"renew_before_days": -1}, "renew_before_days"),
        ({"validity_days": 0}, "validity_days"),
        ({"profile": "peer"}, "profile"),
        ({"key_type": "dsa"}, "key_type"),
        ({"key_size": 2048}, "key_size"),
        ({"key_type": "rsa", "curve": "P-256"}, "curve"),
        ({"key_type": "rsa", "key_size": 1024}, "key_size"),
        ({"curve": "P-521"}, "curve"),
        ({"subject_alt_names": ["ok.example", "not_ok.example"]}, "subject_alt_names"),
    ],
)
def test_request_validation_names_the_option(options, option):
    with pytest.raises(CertificateError) as info:
        cert_fixtures.request(**options)
    assert info.value.option == option


def test_renew_window_longer_than_validity_message():
    with pytest.raises(CertificateError, match=r"renew_before_days \(400\) must be shorter than validity_days \(365\)"):
        cert_fixtures.request(renew_before_days=400)


@pytest.mark.parametrize("common_name", ["", "   ", "x" * 65])
def test_common_name_validation(common_name):
    with pytest.raises(CertificateError) as info:
        certificate_request(common_name)
    assert info.value.option == "common_name"


@pytest.mark.parametrize(
    ("options", "kind", "size"),
    [
        ({}, ec.EllipticCurvePrivateKey, 256),
        ({"curve": "P-384"}, ec.EllipticCurvePrivateKey, 384),
        ({"key_type": "rsa"}, rsa.RSAPrivateKey, 2048),
        ({"key_type": "rsa", "key_size": 3072}, rsa.RSAPrivateKey, 3072),
    ],
)
def test_key_generation(options, kind, size):
    spec = key_spec(**options)
    key = generate_private_key(spec)
    assert isinstance(key, kind)
    assert key.key_size == size
    assert key_spec_of(key) == spec
    assert key_spec_of(key.public_key()) == spec


def test_rsa_4096_is_a_valid_spec():
    assert key_spec("rsa", key_size=4096).describe() == "RSA 4096"


def test_load_private_key_errors(pki):
    key = generate_private_key(key_spec())
    with pytest.raises(CertificateError, match="is not a PEM private key"):
        load_private_key(b"hello", name="the file")
    with pytest.raises(CertificateError, match="is not a PEM private key"):
        load_private_key(certificates.certificate_pem(pki.ca.cert), name="the file")
    encrypted = private_key_pem(key, "right")
    with pytest.raises(CertificateError, match="is encrypted and no passphrase was given"):
        load_private_key(encrypted)
    with pytest.raises(CertificateError, match=r"^ca_key_passphrase does not decrypt the CA key$"):
        load_private_key(encrypted, "wrong", "the CA key", "ca_key_passphrase")
    with pytest.raises(CertificateError, match="was given but the key is not encrypted"):
        load_private_key(private_key_pem(key), "right")
    assert load_private_key(encrypted, "right").private_numbers() == key.private_numbers()


# --------------------------------------------------------------------------- profiles and issuing


@pytest.mark.parametrize(
    ("profile", "key_type", "encipherment", "usages"),
    [
        ("server", "ecdsa", False, {ExtendedKeyUsageOID.SERVER_AUTH}),
        ("server", "rsa", True, {ExtendedKeyUsageOID.SERVER_AUTH}),
        ("client", "ecdsa", False, {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("client", "rsa", False, {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("server_client", "ecdsa", False, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("server_client", "rsa", True, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_profiles(pki, profile, key_type, encipherment, usages):
    req = cert_fixtures.request(profile=profile, key_type=key_type)
    cert = pki.leaf(req)[0]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is encipherment
    assert not usage.value.key_cert_sign
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False


def test_issued_certificate_shape(pki):
    before = datetime.datetime.now(datetime.timezone.utc)
    cert, key = pki.leaf()
    not_before, not_after = validity(cert)
    assert before - datetime.timedelta(minutes=5, seconds=2) <= not_before <= before - datetime.timedelta(minutes=4)
    assert abs((not_after - before) - datetime.timedelta(days=365)) < datetime.timedelta(seconds=5)
    assert 0 < cert.serial_number < 2**128
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pg-1.example.org")])
    assert cert.issuer == pki.ca.cert.subject
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = pki.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pg-1.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/permguard/server"]
    assert signature_verifies(cert, pki.ca.cert.public_key())
    assert not signature_verifies(cert, pki.ca_same_name.cert.public_key())


def test_serials_are_random():
    assert len({certificates.random_serial() for _count in range(200)}) == 200


def test_sign_csr_takes_only_the_key_from_the_host(pki):
    asked = cert_fixtures.request()
    key = generate_private_key(asked.key)
    greedy = cert_fixtures.request(
        "admin", subject_alt_names=["evil.example", "*.example.org"], profile="server_client"
    )
    cert = sign_csr(csr_pem(build_csr(key, greedy)), asked, pki.ca)
    assert certificates.subject_alt_names_of(cert) == list(asked.subject_alt_names)
    assert cert.subject == asked.subject()
    assert certificates.public_key_der(cert.public_key()) == certificates.public_key_der(key)
    ext = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ext == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_sign_csr_refusals(pki):
    asked = cert_fixtures.request()
    with pytest.raises(CertificateError, match="cannot be parsed"):
        sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", asked, pki.ca)
    rsa_key = generate_private_key(key_spec("rsa"))
    with pytest.raises(CertificateError, match="carries a RSA 2048 key, but ECDSA P-256 was asked for"):
        sign_csr(csr_pem(build_csr(rsa_key, asked)), asked, pki.ca)
    # A CSR whose proof of possession fails: the public key of one key, the signature of another.
    key, other = generate_private_key(asked.key), generate_private_key(asked.key)
    tbs = build_csr(key, asked)
    forged = x509.CertificateSigningRequestBuilder().subject_name(asked.subject())
    forged_csr = forged.sign(other, hashes.SHA256())
    der = bytearray(forged_csr.public_bytes(serialization.Encoding.DER))
    good_spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_spki = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    start = bytes(der).index(other_spki)
    der[start : start + len(other_spki)] = good_spki
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    assert tbs.is_signature_valid
    with pytest.raises(CertificateError, match="signature does not verify"):
        sign_csr(tampered, asked, pki.ca)


# --------------------------------------------------------------------------- the CA


def test_create_ca(pki):
    ca = create_ca("Permguard Root CA", key_spec(curve="P-384"), validity_days=3650)
    check_ca_certificate(ca.cert)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert ca.self_signed
    assert signature_verifies(ca.cert, ca.cert.public_key())
    assert isinstance(ca.cert.signature_hash_algorithm, hashes.SHA384)
    not_before, not_after = validity(ca.cert)
    assert (not_after - not_before).days == 3650


def test_load_ca_checks(pki, tmp_path):
    cert_pem = certificates.certificate_pem(pki.ca.cert)
    key_pem = private_key_pem(pki.ca.key, "vault-secret")
    assert load_ca(cert_pem, key_pem, "vault-secret").cert == pki.ca.cert
    with pytest.raises(CertificateError, match="ca_key_passphrase does not decrypt ca_key /x"):
        load_ca(cert_pem, key_pem, "wrong", key_name="ca_key /x", passphrase_name="ca_key_passphrase")
    with pytest.raises(CertificateError, match="ca_key /x does not match ca_cert /c"):
        load_ca(cert_pem, private_key_pem(pki.other_ca.key), cert_name="ca_cert /c", key_name="ca_key /x")
    leaf, leaf_key = pki.leaf()
    with pytest.raises(CertificateError, match="is not a CA: its basic constraints do not say CA:TRUE"):
        load_ca(certificates.certificate_pem(leaf), private_key_pem(leaf_key))
    with pytest.raises(CertificateError, match="holds no PEM certificate"):
        load_ca(b"junk", key_pem, "vault-secret")


def test_ca_without_key_cert_sign_is_refused():
    key = generate_private_key(key_spec())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Half CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="keyCertSign"):
        check_ca_certificate(cert)


def test_expired_ca_is_refused():
    old = create_ca(
        "Old CA", key_spec(), validity_days=1, now=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    )
    with pytest.raises(CertificateError, match="expired on 2020-01-02"):
        check_ca_certificate(old.cert)


# --------------------------------------------------------------------------- facts and files


def test_certificate_facts(pki):
    cert = pki.leaf()[0]
    facts = certificate_facts(cert)
    assert facts["subject"] == "CN=pg-1.example.org"
    assert facts["common_name"] == "pg-1.example.org"
    assert facts["issuer"] == "CN=Permguard Test CA"
    assert facts["serial"] == format(cert.serial_number, "X")
    assert facts["not_after"].endswith("Z")
    assert facts["days_left"] in (364, 365)
    assert facts["subject_alt_names"] == list(cert_fixtures.request().subject_alt_names)
    assert len(facts["sha256"].split(":")) == 32
    assert facts["key"] == "ECDSA P-256"
    assert set(diff_view(facts)) == {"subject", "subject_alt_names", "serial", "not_after", "issuer"}
    assert diff_view(None) == {}


def test_bundles(pki):
    bundle = certificates.certificate_pem(pki.ca.cert) + b"junk\n" + certificates.certificate_pem(pki.other_ca.cert)
    assert len(split_pem_certificates(bundle)) == 2
    assert [c.subject for c in load_certificates(bundle)] == [pki.ca.cert.subject, pki.other_ca.cert.subject]


def test_write_atomically(tmp_path):
    target = tmp_path / "f.pem"
    target.write_bytes(b"old")
    write_atomically(str(target), b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_write_atomically_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.pem"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomically(str(target), "not bytes", 0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_issue_and_decide_agree_for_rsa(pki):
    req = cert_fixtures.request(key_type="rsa", profile="server_client")
    cert, key = pki.leaf(req)
    files = (HostFile("c", True, certificates.certificate_pem(cert)), HostFile("k", True, private_key_pem(key)))
    assert regeneration_reason(*files, req, pki.ca.cert) is None


def test_rsa_ca_signs_with_pkcs1(pki):
    ca = create_ca("RSA CA", key_spec("rsa"))
    cert = issue_certificate(generate_private_key(key_spec()).public_key(), cert_fixtures.request(), ca)
    assert signature_verifies(cert, ca.cert.public_key())


@pytest.mark.parametrize(
    "path",
    [
        "plugins/module_utils/certificates.py",
        "plugins/modules/certificate.py",
        "plugins/modules/ca.py",
        "plugins/action/certificate.py",
    ],
)
def test_compiles_for_python_3_8(path):
    root = Path(certificates.__file__).resolve().parents[2]
    ast.parse((root / path).read_text(), feature_version=(3, 8))
