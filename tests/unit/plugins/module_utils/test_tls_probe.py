"""Unit tests of the probe engine against real in-process servers: every diagnosis is caused, not faked."""

from __future__ import annotations

import ast
import datetime
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.permguard.secure.plugins.module_utils import tls_probe
from ansible_collections.permguard.secure.plugins.module_utils.tls_probe import (
    DIAGNOSIS_CLASSES,
    Endpoint,
    ProbeArgumentError,
    ProbeOptions,
    WorkloadIdentity,
    certificate_facts,
    expand_endpoints,
    parse_endpoint,
    run_probes,
    summary_line,
    validate_options,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ENGINE = Path(tls_probe.__file__)


def probe(url: str, **options: object) -> dict:
    options.setdefault("timeout", 5)
    return run_probes([parse_endpoint(url)], ProbeOptions(**options))[0]  # type: ignore[arg-type]


def tls_url(port: int) -> str:
    return f"grpcs://127.0.0.1:{port}"


def plain_url(port: int) -> str:
    return f"grpc://127.0.0.1:{port}"


def client(pair: tuple[str, str]) -> dict:
    return {"cert_file": pair[0], "key_file": pair[1]}


def assert_diagnosis(result: dict, klass: str, *fragments: str) -> None:
    found = result["diagnosis"]
    assert found is not None, summary_line(result)
    assert found["class"] == klass, summary_line(result)
    assert found["fix"]
    for fragment in fragments:
        assert fragment in found["message"], found["message"]
    assert result["ok"] is False
    assert result["verified"] is False


# --------------------------------------------------------------------------- milestone 1: the basic matrix


def test_plaintext_serving(servers):
    result = probe(plain_url(servers.grpclib()))
    assert result["ok"] is True, summary_line(result)
    assert result["health_status"] == "SERVING"
    assert result["verification"] == "none"
    assert result["verified"] is False
    assert result["tls"] is None
    assert result["diagnosis"] is None
    timings = result["timings"]
    assert timings["handshake_ms"] is None
    assert timings["connect_ms"] >= 0
    assert timings["rpc_ms"] > 0
    assert timings["total_ms"] >= timings["connect_ms"] + timings["rpc_ms"]


def test_tls_with_the_right_ca(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.server))), ca_file=pki.ca.cert_file)
    assert result["ok"] is True, summary_line(result)
    assert result["verified"] is True
    assert result["verification"] == "hostname"
    assert result["health_status"] == "SERVING"
    assert result["tls"]["version"] == "TLSv1.3"
    assert result["tls"]["alpn"] == "h2"
    assert result["tls"]["cipher"]
    assert result["tls"]["client_cert_requested"] is False
    assert all(result["timings"][key] > 0 for key in ("connect_ms", "handshake_ms", "rpc_ms", "total_ms"))
    cert = result["peer_certificate"]
    assert cert["subject"] == "CN=permguard-server"
    assert cert["issuer"] == "CN=Test Root CA"
    assert cert["dns_sans"] == ["localhost", "permguard"]
    assert cert["ip_sans"] == ["127.0.0.1", "::1"]
    assert cert["chain_length"] == 1
    assert 363 <= cert["days_left"] <= 365
    assert result["warnings"] == []


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
def test_tls_client_to_plaintext_server(servers, pki, kind):
    port = servers.grpclib() if kind == "grpclib" else servers.grpcio_plain()
    result = probe(tls_url(port), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "tls_to_plaintext_server", "answers gRPC in plaintext")


def test_plaintext_client_to_tls_server(servers, pki, server_ctx):
    result = probe(plain_url(servers.grpclib(server_ctx(pki.server))))
    assert_diagnosis(result, "plaintext_to_tls_server", "completes a TLS handshake")


def test_plaintext_client_to_go_like_tls_server(servers, pki, server_ctx):
    result = probe(plain_url(servers.tls_front(server_ctx(pki.server))))
    assert_diagnosis(result, "plaintext_to_tls_server")


def test_plaintext_client_to_grpcio_tls_server(servers, pki):
    assert_diagnosis(probe(plain_url(servers.grpcio_mtls(pki))), "plaintext_to_tls_server")


def test_port_that_speaks_neither_tls_nor_grpc(servers, pki):
    port = servers.banner_listener()
    assert_diagnosis(probe(tls_url(port), ca_file=pki.ca.cert_file), "tls_handshake_failed", "did not answer with TLS")
    assert_diagnosis(probe(plain_url(port)), "connection_closed")


def test_unknown_authority(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.server_other))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "unknown_authority", "unable to get local issuer certificate", "CN=Some Other CA")
    # The certificate comes from a second, unverified look, so the operator sees who issued it.
    assert result["peer_certificate"]["issuer"] == "CN=Some Other CA"


def test_unknown_authority_with_the_system_trust_store(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.server))))
    assert_diagnosis(result, "unknown_authority")


def test_nothing_listening(servers):
    for url in (plain_url(servers.closed_port()), tls_url(servers.closed_port())):
        result = probe(url)
        assert_diagnosis(result, "nothing_listening", "refused")
        assert "tls: mode=" in result["diagnosis"]["fix"]


def test_timeout_in_the_tls_handshake(servers, pki):
    started = time.monotonic()
    result = probe(tls_url(servers.silent_listener()), ca_file=pki.ca.cert_file, timeout=0.5)
    assert time.monotonic() - started < 2
    assert_diagnosis(result, "timeout", "0.5 s", "TLS handshake")


def test_timeout_in_the_health_check(servers):
    result = probe(plain_url(servers.silent_listener()), timeout=0.5)
    assert_diagnosis(result, "timeout", "Health/Check")


def test_health_not_serving(servers):
    result = probe(plain_url(servers.not_serving()))
    assert_diagnosis(result, "health_not_serving", "NOT_SERVING")
    assert result["health_status"] == "NOT_SERVING"


def test_name_resolution_failed():
    result = probe("grpc://permguard.invalid:9091", timeout=3)
    assert_diagnosis(result, "name_resolution_failed")


# --------------------------------------------------------------------------- skip-verify and mutual TLS


def test_skip_verify_is_reported_unverified(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.server_other))), skip_verify=True)
    assert result["ok"] is True
    assert result["verified"] is False
    assert result["verification"] == "skipped"
    assert any("unverified" in warning for warning in result["warnings"])
    assert "UNVERIFIED" in summary_line(result)
    assert result["peer_certificate"]["issuer"] == "CN=Some Other CA"


def test_mutual_tls(servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.server, pki.ca.cert_file))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file, **client(pki.client))
    assert result["ok"] is True, summary_line(result)
    assert result["verified"] is True
    assert result["tls"]["client_cert_requested"] is True
    assert result["tls"]["client_cert_presented"] is True
    assert "client certificate required" in summary_line(result)


def test_mutual_tls_through_a_grpcio_server(servers, pki):
    result = probe(tls_url(servers.grpcio_mtls(pki)), ca_file=pki.ca.cert_file, **client(pki.client))
    assert result["ok"] is True, summary_line(result)
    assert result["tls"]["client_cert_requested"] is True


def test_client_certificate_required_alert_116(servers, pki, server_ctx):
    """Go and OpenSSL: the TLS 1.3 handshake completes, then alert 116 arrives."""
    port = servers.tls_front(server_ctx(pki.server, pki.ca.cert_file))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "client_cert_required", "certificate_required (116)")
    assert result["tls"]["version"] == "TLSv1.3"
    assert result["tls"]["client_cert_requested"] is True
    assert result["tls"]["client_cert_presented"] is False


def test_client_certificate_required_silent_close(servers, pki):
    """BoringSSL (grpcio): the TLS 1.3 handshake completes, then the server just closes."""
    result = probe(tls_url(servers.grpcio_mtls(pki)), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "client_cert_required", "without an alert")
    assert result["tls"]["client_cert_requested"] is True


def test_client_certificate_required_under_tls12(servers, pki, server_ctx):
    port = servers.tls_front(server_ctx(pki.server, pki.ca.cert_file, max_tls12=True))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "client_cert_required", "handshake_failure (40)")


def test_client_certificate_required_from_an_asyncio_server(servers, pki, server_ctx):
    """Python's asyncio TLS server drops its alert: the CertificateRequest alone decides."""
    port = servers.grpclib(server_ctx(pki.server, pki.ca.cert_file))
    assert_diagnosis(probe(tls_url(port), ca_file=pki.ca.cert_file), "client_cert_required")


@pytest.mark.parametrize("form", ["alert", "silent"])
def test_client_certificate_rejected(servers, pki, form, server_ctx):
    alerting = form == "alert"
    port = servers.tls_front(server_ctx(pki.server, pki.ca.cert_file)) if alerting else servers.grpcio_mtls(pki)
    result = probe(tls_url(port), ca_file=pki.ca.cert_file, **client(pki.client_other))
    assert_diagnosis(result, "client_cert_rejected", "client-other.pem")
    if form == "alert":
        assert "unknown_ca (48)" in result["diagnosis"]["message"]


# --------------------------------------------------------------------------- certificate problems


def test_certificate_expired(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.expired))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "certificate_expired", "certificate has expired", "expired 20")
    assert result["peer_certificate"]["days_left"] < 0


def test_certificate_not_yet_valid(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.future))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "certificate_not_yet_valid", "not yet valid", "valid from 20")


def test_certificate_for_another_purpose(servers, pki, server_ctx):
    """A client-only certificate (extended key usage clientAuth) used as the server's."""
    result = probe(tls_url(servers.grpclib(server_ctx(pki.client))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "certificate_invalid", "certificate purpose")


def test_hostname_mismatch(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.wrong_host))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "hostname_mismatch", "'127.0.0.1' is not among db.example")
    assert "db.example" in result["diagnosis"]["fix"]


def test_server_name_override(servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.wrong_host))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file, server_name="db.example")
    assert result["ok"] is True, summary_line(result)
    assert result["server_name"] == "db.example"


def test_spiffe_certificate_checked_as_host_name(servers, pki, server_ctx):
    result = probe(tls_url(servers.grpclib(server_ctx(pki.spiffe_server))), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "not_valid_for_any_names", "not valid for any names", pki.spiffe_server_id)
    assert result["peer_certificate"]["spiffe_id"] == pki.spiffe_server_id


def test_server_without_cert_paths(servers, pki, server_ctx):
    """Mode tls without cert paths: the server presents a certificate from a fresh 'PermGuard Auto CA'."""
    port = servers.grpclib(server_ctx(pki.auto_server))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file)
    assert_diagnosis(result, "server_without_cert_paths", "PermGuard Auto CA")
    assert "at every restart" in result["diagnosis"]["fix"]


def test_trusted_auto_certificate_passes_with_a_warning(servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.auto_server))
    result = probe(tls_url(port), ca_file=pki.auto_ca.cert_file)
    assert result["ok"] is True, summary_line(result)
    assert any("auto-generated" in warning for warning in result["warnings"])


def test_chain_length_counts_intermediates_sent(servers, pki, server_ctx):
    ctx = server_ctx((pki.chain_file, pki.server[1]))
    result = probe(tls_url(servers.grpclib(ctx)), ca_file=pki.ca.cert_file)
    assert result["ok"] is True, summary_line(result)
    assert result["peer_certificate"]["chain_length"] == 2


# --------------------------------------------------------------------------- SPIFFE verification


@pytest.fixture
def spiffe_port(servers, pki, server_ctx) -> int:
    """An mTLS server whose certificate has only a SPIFFE URI SAN."""
    return servers.grpclib(server_ctx(pki.spiffe_server, pki.ca.cert_file))


def test_spiffe_peer_verified_by_trust_domain(pki, spiffe_port):
    port = spiffe_port
    options = {"ca_file": pki.ca.cert_file, **client(pki.spiffe_client)}
    result = probe(tls_url(port), expected_trust_domain="spiffe://example.org", **options)
    assert result["ok"] is True, summary_line(result)
    assert result["verification"] == "spiffe"
    assert result["verified"] is True
    assert result["peer_certificate"]["spiffe_id"] == pki.spiffe_server_id
    assert result["peer_certificate"]["dns_sans"] == []
    assert "verified (SPIFFE)" in summary_line(result)


def test_spiffe_peer_verified_by_id(pki, spiffe_port):
    port = spiffe_port
    options = {"ca_file": pki.ca.cert_file, **client(pki.spiffe_client)}
    assert probe(tls_url(port), expected_spiffe_id=pki.spiffe_server_id, **options)["ok"] is True


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("expected_spiffe_id", "spiffe://example.org/someone/else", "expected spiffe://example.org/someone/else"),
        ("expected_trust_domain", "other.org", "outside the expected trust domain other.org"),
    ],
)
def test_unexpected_spiffe_id(pki, spiffe_port, option, value, fragment):
    port = spiffe_port
    result = probe(tls_url(port), ca_file=pki.ca.cert_file, **client(pki.spiffe_client), **{option: value})
    assert_diagnosis(result, "unexpected_spiffe_id", pki.spiffe_server_id, fragment)


def test_spiffe_verification_needs_a_spiffe_id(servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.server))
    result = probe(tls_url(port), ca_file=pki.ca.cert_file, expected_trust_domain="example.org")
    assert_diagnosis(result, "unexpected_spiffe_id", "no single spiffe:// URI SAN")


def test_spiffe_chain_is_still_verified(pki, spiffe_port):
    port = spiffe_port
    result = probe(tls_url(port), ca_file=pki.other_ca.cert_file, expected_spiffe_id=pki.spiffe_server_id)
    assert_diagnosis(result, "unknown_authority")


def test_identity_held_in_memory(pki, spiffe_port):
    """The path a Workload API source takes: SVID, key and bundle as PEM bytes, no files."""
    identity = WorkloadIdentity(
        spiffe_id=pki.spiffe_client_id,
        cert_chain_pem=Path(pki.spiffe_client[0]).read_bytes(),
        key_pem=Path(pki.spiffe_client[1]).read_bytes(),
        bundle_pem=Path(pki.ca.cert_file).read_bytes(),
    )
    result = probe(tls_url(spiffe_port), identity=identity)
    assert result["ok"] is True, summary_line(result)
    assert result["verification"] == "spiffe"
    assert result["tls"]["client_cert_presented"] is True


def test_missing_workload_api_socket(servers, tmp_path):
    port = servers.grpclib()
    results = run_probes(
        [parse_endpoint(tls_url(port)), parse_endpoint(tls_url(port + 1))],
        ProbeOptions(spiffe_socket=f"unix://{tmp_path}/agent.sock"),
    )
    for result in results:
        assert_diagnosis(result, "workload_api_unavailable", "does not exist")


def test_workload_api_socket_nobody_listens_on(servers, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file left behind by a stopped agent
    try:
        result = run_probes([parse_endpoint(tls_url(servers.grpclib()))], ProbeOptions(spiffe_socket=path))[0]
    finally:
        stale.close()
    assert_diagnosis(result, "workload_api_unavailable", "nothing accepts connections")


def test_socket_that_is_not_a_workload_api(servers, tmp_path):
    """Through py-spiffe for real: a Unix socket that accepts and hangs up gives no SVID."""
    path = str(tmp_path / "api.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def hang_up() -> None:
        while True:
            try:
                listener.accept()[0].close()
            except OSError:
                return

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        options = ProbeOptions(spiffe_socket=f"unix://{path}", timeout=5)
        result = run_probes([parse_endpoint(tls_url(servers.grpclib()))], options)[0]
    finally:
        listener.close()
    assert_diagnosis(result, "workload_api_unavailable", f"fetching the X.509-SVID from {path} failed")


# --------------------------------------------------------------------------- health answers


def test_health_unimplemented(servers):
    assert_diagnosis(probe(plain_url(servers.grpcio_plain(health=False))), "health_unimplemented", "UNIMPLEMENTED")


def test_health_service_unknown(servers):
    result = probe(plain_url(servers.grpcio_plain()), health_service="permguard.Unknown")
    assert_diagnosis(result, "health_service_unknown", "NOT_FOUND", "permguard.Unknown")


def test_health_error_status(servers):
    result = probe(plain_url(servers.grpcio_plain()), health_service="broken")
    assert_diagnosis(result, "grpc_error", "UNAVAILABLE: storage is down")


def test_named_health_service(servers):
    result = probe(plain_url(servers.grpcio_plain()), health_service="policydecisionpoint.V1PDPService")
    assert result["ok"] is True, summary_line(result)
    assert result["health_service"] == "policydecisionpoint.V1PDPService"


# --------------------------------------------------------------------------- many endpoints


def test_hosts_times_ports_probed_concurrently(servers, pki, server_ctx):
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    ports = servers.fleet(server_ctx(pki.server), hosts, ("zap", "pap", "pdp"))
    endpoints = expand_endpoints(hosts=list(hosts), ports=ports)
    results = run_probes(endpoints, ProbeOptions(ca_file=pki.ca.cert_file, server_name="localhost"))
    assert [(r["host"], r["name"]) for r in results] == [(h, n) for h in hosts for n in ("zap", "pap", "pdp")]
    assert all(result["ok"] for result in results), [summary_line(r) for r in results]


def test_one_overall_timeout_for_all_endpoints(servers):
    endpoints = [parse_endpoint(plain_url(servers.silent_listener())) for _count in range(9)]
    endpoints.append(parse_endpoint(plain_url(servers.grpclib())))
    started = time.monotonic()
    results = run_probes(endpoints, ProbeOptions(timeout=3))
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"9 silent endpoints took {elapsed:.1f} s: not concurrent"
    assert [r["diagnosis"]["class"] for r in results[:9]] == ["timeout"] * 9
    assert results[9]["ok"] is True


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://host:9091", "unknown scheme 'http'"),
        ("grpcs://host", "has no port"),
        ("grpc://:9091", "has no host"),
        ("grpc://host:99999", "not a valid URL"),
        ("grpc://host:9091/path", "only scheme://host:port"),
    ],
)
def test_bad_endpoints(url, fragment):
    with pytest.raises(ProbeArgumentError, match=fragment) as caught:
        parse_endpoint(url)
    assert caught.value.option == "endpoints"
    assert str(caught.value).startswith("endpoints: ")


def test_endpoint_urls():
    assert parse_endpoint("grpcs://[::1]:9091").url == "grpcs://[::1]:9091"
    assert parse_endpoint("grpc://PG1.example.com:9092") == Endpoint("grpc", "pg1.example.com", 9092)
    endpoints = expand_endpoints(["grpc://a:1"], ["b", "::1"], {"zap": 9091}, "grpc")
    assert [e.url for e in endpoints] == ["grpc://a:1", "grpc://b:9091", "grpc://[::1]:9091"]
    assert [e.name for e in expand_endpoints(hosts=["h"])] == ["zap", "pap", "pdp"]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({}, "endpoints"),
        ({"hosts": ["h"], "ports": {"zap": "x"}}, "ports"),
        ({"hosts": ["h"], "ports": {"zap": 70000}}, "ports"),
        ({"hosts": ["h"], "ports": {}}, "ports"),
        ({"hosts": ["h"], "scheme": "https"}, "scheme"),
    ],
)
def test_bad_endpoint_sets(kwargs, option):
    with pytest.raises(ProbeArgumentError) as caught:
        expand_endpoints(**kwargs)
    assert caught.value.option == option


def check(option: str, fragment: str, **options: object) -> None:
    with pytest.raises(ProbeArgumentError) as caught:
        validate_options(ProbeOptions(**options))  # type: ignore[arg-type]
    assert caught.value.option == option, str(caught.value)
    assert fragment in str(caught.value)


def test_skip_verify_with_ca_file(pki):
    check("skip_verify", "ca_file", skip_verify=True, ca_file=pki.ca.cert_file)


def test_client_certificate_without_key(pki):
    check("key_file", "is required with cert_file", cert_file=pki.client[0])
    check("cert_file", "is required with key_file", key_file=pki.client[1])


def test_key_not_matching_certificate(pki):
    cert_file, key_file = pki.client_key_mismatch
    check("key_file", "does not match the certificate", cert_file=cert_file, key_file=key_file)


def test_files_that_cannot_be_read(pki, tmp_path):
    check("ca_file", "does not exist", ca_file=str(tmp_path / "missing.pem"))
    check("cert_file", "is not a regular file", cert_file=str(tmp_path), key_file=pki.client[1])


_CHECK_UNREADABLE = """
import sys
from ansible_collections.permguard.secure.plugins.module_utils.tls_probe import (
    ProbeArgumentError, ProbeOptions, validate_options)
try:
    validate_options(ProbeOptions(ca_file=sys.argv[1]))
except ProbeArgumentError as exc:
    print(exc.option, exc, sep="|")
"""


def test_file_without_read_permission(pki, tmp_path):
    locked = tmp_path / "locked.pem"
    locked.write_bytes(Path(pki.ca.cert_file).read_bytes())
    locked.chmod(0)
    if os.geteuid() != 0:
        check("ca_file", "cannot read", ca_file=str(locked))
        return
    # Root reads any file: drop the capabilities that bypass file modes, so the kernel checks them.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to test file modes as root")
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    out = subprocess.run(
        [*drop, sys.executable, "-c", _CHECK_UNREADABLE, str(locked)], capture_output=True, text=True, check=True
    ).stdout
    option, _sep, message = out.strip().partition("|")
    assert option == "ca_file", out
    assert "cannot read" in message, out


def test_files_that_are_not_pem(pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    check("ca_file", "no usable PEM CA certificate", ca_file=str(junk))
    check("cert_file", "no PEM certificate", cert_file=str(junk), key_file=pki.client[1])
    check("key_file", "no usable unencrypted PEM private key", cert_file=pki.client[0], key_file=str(junk))


def test_encrypted_key_is_refused_without_prompting(pki, tmp_path):
    key = serialization.load_pem_private_key(Path(pki.client[1]).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    check("key_file", "unencrypted", cert_file=pki.client[0], key_file=str(encrypted))


def test_socket_path_that_is_not_a_socket(pki, tmp_path):
    check("spiffe_socket", "is not a Unix socket", spiffe_socket=pki.ca.cert_file)
    check("spiffe_socket", "is not a Unix socket", spiffe_socket=f"unix://{tmp_path}")
    check("spiffe_socket", "absolute path", spiffe_socket="agent.sock")


def test_spiffe_argument_combinations(pki, tmp_path):
    sock = str(tmp_path / "agent.sock")
    check("spiffe_socket", "drop ca_file", spiffe_socket=sock, ca_file=pki.ca.cert_file)
    check("spiffe_socket", "drop skip_verify", spiffe_socket=sock, skip_verify=True)
    check("skip_verify", "expected_spiffe_id", skip_verify=True, expected_spiffe_id=pki.spiffe_server_id)
    check("expected_spiffe_id", "not a spiffe://", expected_spiffe_id="example.org/server")
    check("expected_trust_domain", "not a trust domain", expected_trust_domain="spiffe://example.org/path")


def test_timeout_must_be_positive():
    check("timeout", "positive", timeout=0)


# --------------------------------------------------------------------------- facts and rendering


def test_certificate_facts(pki):
    der = x509.load_pem_x509_certificate(Path(pki.spiffe_server[0]).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    facts = certificate_facts(der, chain_length=3, now=later)
    assert facts["subject"] == ""
    assert facts["uri_sans"] == [pki.spiffe_server_id]
    assert facts["spiffe_id"] == pki.spiffe_server_id
    assert facts["days_left"] < 0
    assert facts["chain_length"] == 3
    assert facts["sha256"].replace(":", "") == hashlib.sha256(der).hexdigest().upper()
    assert facts["not_after"].endswith("Z")


STABLE_CLASSES = {
    "plaintext_to_tls_server",
    "tls_to_plaintext_server",
    "unknown_authority",
    "server_without_cert_paths",
    "certificate_expired",
    "certificate_not_yet_valid",
    "hostname_mismatch",
    "not_valid_for_any_names",
    "certificate_invalid",
    "client_cert_required",
    "client_cert_rejected",
    "unexpected_spiffe_id",
    "workload_api_unavailable",
    "no_workload_identity",
    "nothing_listening",
    "host_unreachable",
    "name_resolution_failed",
    "timeout",
    "connection_closed",
    "tls_handshake_failed",
    "health_not_serving",
    "health_unimplemented",
    "health_service_unknown",
    "grpc_error",
}


def test_class_names_are_stable_and_have_fixes():
    """Class names are an interface (roles and molecule assert on them): renaming one must fail here."""
    assert set(DIAGNOSIS_CLASSES) == STABLE_CLASSES
    assert all(fix.strip() for fix in DIAGNOSIS_CLASSES.values())


def test_summary_lines(servers, pki, server_ctx):
    good = probe(tls_url(servers.grpclib(server_ctx(pki.server))), ca_file=pki.ca.cert_file)
    bad = probe(plain_url(servers.closed_port()))
    assert summary_line(good).startswith(f"OK   {good['endpoint']}: SERVING, TLSv1.3 h2, verified, certificate")
    assert summary_line(bad).startswith(f"FAIL {bad['endpoint']}: nothing_listening - ")
    assert ". Fix: Start the server" in summary_line(bad)
    assert "\n" not in summary_line(good) + summary_line(bad)


def test_engine_compiles_for_python_3_8():
    """ansible-test compiles module_utils for every target Python; 3.8 grammar is the floor."""
    ast.parse(ENGINE.read_text(), feature_version=(3, 8))


def test_ssl_context_shape(pki):
    ctx = tls_probe.build_ssl_context(ProbeOptions(ca_file=pki.ca.cert_file))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname is True
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.hostname_checks_common_name is False
    spiffe = tls_probe.build_ssl_context(ProbeOptions(ca_file=pki.ca.cert_file, expected_trust_domain="example.org"))
    assert spiffe.check_hostname is False
    assert spiffe.verify_mode == ssl.CERT_REQUIRED
