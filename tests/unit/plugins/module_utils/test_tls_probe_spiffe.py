"""SPIFFE mode of the probe engine end to end, against the SPIRE agent double.

The double serves the Workload API in-process, and an in-process mTLS gRPC server presents an X.509-SVID issued by
that double (only a ``spiffe://`` URI SAN) and requires client SVIDs verified against the double's bundle. Every
diagnosis is caused for real; every wait is bounded.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.permguard.secure.plugins.module_utils.tls_probe import (
    DIAGNOSIS_CLASSES,
    ProbeArgumentError,
    ProbeOptions,
    fetch_workload_identity,
    parse_endpoint,
    run_probes,
    summary_line,
    validate_options,
)

SERVER_ID = "spiffe://example.org/permguard/server"
CLIENT_ID = "spiffe://example.org/ops/probe"


def probe_all(urls: list, **options: object) -> list:
    options.setdefault("timeout", 5)
    return run_probes([parse_endpoint(url) for url in urls], ProbeOptions(**options))  # type: ignore[arg-type]


def probe(url: str, **options: object) -> dict:
    return probe_all([url], **options)[0]


def assert_ok(result: dict) -> None:
    assert result["ok"] is True, summary_line(result)
    assert result["diagnosis"] is None
    assert result["verified"] is True
    assert result["verification"] == "spiffe"
    assert result["health_status"] == "SERVING"


def assert_diagnosis(result: dict, klass: str, *fragments: str) -> None:
    found = result["diagnosis"]
    assert found is not None, summary_line(result)
    assert found["class"] == klass, summary_line(result)
    assert found["fix"]
    for fragment in fragments:
        assert fragment in found["message"], found["message"]
    assert result["ok"] is False
    assert result["verified"] is False


def hex_serial(svid: object) -> str:
    return format(svid.serial_number, "X")  # type: ignore[attr-defined]


def files(directory: Path, **contents: bytes) -> dict:
    """Write PEM files (spiffe-helper's names) and return their paths by option name."""
    paths = {}
    for option, data in contents.items():
        path = directory / f"{option}.pem"
        path.write_bytes(data)
        paths[option] = str(path)
    return paths


# --------------------------------------------------------------------------- 1. the Workload API happy path


def test_workload_api_identity_against_a_spiffe_server(spire_agent, spiffe_server):
    server = spiffe_server()
    result = probe(server.url, spiffe_socket=spire_agent.socket_path, expected_spiffe_id=SERVER_ID)
    assert_ok(result)
    cert = result["peer_certificate"]
    assert cert["spiffe_id"] == SERVER_ID
    assert cert["uri_sans"] == [SERVER_ID]
    assert cert["dns_sans"] == []
    assert cert["ip_sans"] == []
    assert cert["serial"] == server.serial
    # SPIRE sends the leaf alone; this OpenSSL server also sends the CA it finds in its trust store (auto-chain).
    assert cert["chain_length"] in (1, 2, None)
    tls = result["tls"]
    assert tls["alpn"] == "h2"
    assert tls["client_cert_requested"] is True
    assert tls["client_cert_presented"] is True
    assert tls["client_spiffe_id"] == CLIENT_ID
    # The server saw the probe's own SVID, the one the double serves to this uid, verified against the bundle.
    assert server.health.client_ids == [[CLIENT_ID]]
    assert server.health.client_serials == [spire_agent.svid(CLIENT_ID).serial_number]
    assert "verified (SPIFFE)" in summary_line(result)
    assert "client certificate required" in summary_line(result)


def test_unix_uri_form_of_the_socket(spire_agent, spiffe_server):
    """SPIFFE_ENDPOINT_SOCKET's unix:///path form works as well as the bare path."""
    server = spiffe_server()
    assert_ok(probe(server.url, spiffe_socket=spire_agent.endpoint, expected_spiffe_id=SERVER_ID))


def test_fetch_workload_identity_returns_pem(spire_agent):
    identity = fetch_workload_identity(spire_agent.endpoint, 5)
    assert identity.spiffe_id == CLIENT_ID
    assert identity.cert_chain_pem == spire_agent.svid(CLIENT_ID).chain_pem
    assert identity.bundle_pem == spire_agent.bundle_pem()
    assert b"PRIVATE KEY" in identity.key_pem


def test_many_endpoints_share_one_identity(spire_agent, spiffe_server):
    servers = [spiffe_server() for _count in range(3)]
    results = probe_all([s.url for s in servers], spiffe_socket=spire_agent.socket_path)
    for result in results:
        assert_ok(result)
    assert [s.health.client_ids for s in servers] == [[[CLIENT_ID]]] * 3


# --------------------------------------------------------------------------- 2. expectations


@pytest.mark.parametrize("domain", ["example.org", "spiffe://example.org", "EXAMPLE.org"])
def test_expected_trust_domain_only(spire_agent, spiffe_server, domain):
    result = probe(spiffe_server().url, spiffe_socket=spire_agent.socket_path, expected_trust_domain=domain)
    assert_ok(result)
    assert result["peer_certificate"]["spiffe_id"] == SERVER_ID


def test_no_expectation_accepts_any_id_the_bundle_vouches_for(spire_agent, spiffe_server):
    """Like Permguard's AuthorizeAny(): with only the socket, the chain is checked and any SPIFFE ID passes."""
    assert_ok(probe(spiffe_server().url, spiffe_socket=spire_agent.socket_path))


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("expected_spiffe_id", "spiffe://example.org/someone/else", "expected spiffe://example.org/someone/else"),
        ("expected_spiffe_id", "spiffe://other.org/permguard/server", "expected spiffe://other.org/permguard/server"),
        ("expected_trust_domain", "other.org", "outside the expected trust domain other.org"),
    ],
)
def test_unexpected_spiffe_id(spire_agent, spiffe_server, option, value, fragment):
    server = spiffe_server()
    result = probe(server.url, spiffe_socket=spire_agent.socket_path, **{option: value})
    assert_diagnosis(result, "unexpected_spiffe_id", f"presents SPIFFE ID {SERVER_ID}", fragment)
    assert result["peer_certificate"]["spiffe_id"] == SERVER_ID
    assert "SPIRE registration entry" in result["diagnosis"]["fix"]


# --------------------------------------------------------------------------- 3. no identity for this uid


def test_caller_without_identity(spire_agent, spiffe_server):
    server = spiffe_server()
    spire_agent.remove_identity(os.getuid())
    started = time.monotonic()
    results = probe_all([server.url, server.url], spiffe_socket=spire_agent.socket_path, timeout=5)
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"PermissionDenied took {elapsed:.1f} s: it must not be retried until the timeout"
    uid = os.geteuid()
    for result in results:
        assert_diagnosis(result, "no_workload_identity", f"uid {uid}", "no identity issued", "PERMISSION_DENIED")
        fix = result["diagnosis"]["fix"]
        assert f"-selector unix:uid:{uid}" in fix
        assert "spire-server entry create" in fix
        assert f"uid {uid}" in fix
    assert server.health.client_certs == []  # no endpoint was contacted
    assert "no_workload_identity" in DIAGNOSIS_CLASSES


def test_identity_registered_later_is_picked_up(spire_agent, spiffe_server):
    server = spiffe_server()
    spire_agent.remove_identity(os.getuid())
    assert_diagnosis(probe(server.url, spiffe_socket=spire_agent.socket_path), "no_workload_identity")
    spire_agent.set_identity(os.getuid(), "spiffe://example.org/ops/late")
    result = probe(server.url, spiffe_socket=spire_agent.socket_path)
    assert_ok(result)
    assert result["tls"]["client_spiffe_id"] == "spiffe://example.org/ops/late"
    assert server.health.client_ids == [["spiffe://example.org/ops/late"]]


def test_workload_api_that_never_answers_is_bounded_by_the_timeout(spiffe_server, tmp_path):
    """A socket that accepts (kernel backlog) and never answers: the overall timeout still holds."""
    path = f"/tmp/silent-{os.getpid()}-{time.monotonic_ns()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    try:
        started = time.monotonic()
        result = probe("grpcs://127.0.0.1:9", spiffe_socket=path, timeout=1)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        os.unlink(path)
    assert elapsed < 2, f"the probe took {elapsed:.1f} s with a 1 s timeout"
    assert_diagnosis(result, "workload_api_unavailable", "handed out no X.509-SVID within the 1 s timeout")


# --------------------------------------------------------------------------- 4. no socket, not a socket


def test_agent_stopped(spire_agent, spiffe_server):
    server = spiffe_server()
    spire_agent.stop()  # a clean stop removes the socket
    assert not os.path.exists(spire_agent.socket_path)
    result = probe(server.url, spiffe_socket=spire_agent.socket_path)
    assert_diagnosis(result, "workload_api_unavailable", "does not exist", "is the SPIRE agent running")
    assert server.health.client_certs == []


def test_path_that_is_not_a_socket(spire_agent, tmp_path):
    regular = tmp_path / "api.sock"
    regular.write_text("")
    for value in (str(regular), f"unix://{regular}", str(tmp_path)):
        with pytest.raises(ProbeArgumentError, match="is not a Unix socket") as caught:
            validate_options(ProbeOptions(spiffe_socket=value))
        assert caught.value.option == "spiffe_socket"


def test_missing_spiffe_package_is_an_import_error(spire_agent, monkeypatch):
    """Without py-spiffe the task fails as a missing library (the module turns it into missing_required_lib)."""
    monkeypatch.setitem(sys.modules, "spiffe", None)
    with pytest.raises(ImportError, match="spiffe_socket needs the spiffe package") as caught:
        probe("grpcs://127.0.0.1:9", spiffe_socket=spire_agent.socket_path)
    assert caught.value.name == "spiffe"


# --------------------------------------------------------------------------- 5. a SPIFFE server checked as a host name


def test_spiffe_server_checked_as_host_name(spire_agent, spiffe_server, tmp_path):
    server = spiffe_server()
    client = spire_agent.svid(CLIENT_ID)
    options = files(tmp_path, ca_file=spire_agent.bundle_pem(), cert_file=client.chain_pem, key_file=client.key_pem)
    result = probe(server.url, **options)
    assert result["verification"] == "hostname"
    assert_diagnosis(result, "not_valid_for_any_names", "not valid for any names", SERVER_ID)
    assert result["peer_certificate"]["spiffe_id"] == SERVER_ID
    assert "expected_spiffe_id" in result["diagnosis"]["fix"]


def test_spiffe_helper_files_verified_as_spiffe(spire_agent, spiffe_server, tmp_path):
    """The same files (spiffe-helper writes svid.pem, svid_key.pem, svid_bundle.pem) pass with expected_spiffe_id."""
    server = spiffe_server()
    client = spire_agent.svid(CLIENT_ID)
    options = files(tmp_path, ca_file=spire_agent.bundle_pem(), cert_file=client.chain_pem, key_file=client.key_pem)
    result = probe(server.url, expected_spiffe_id=SERVER_ID, **options)
    assert_ok(result)
    assert result["tls"]["client_spiffe_id"] is None  # files, not the Workload API
    assert server.health.client_ids == [[CLIENT_ID]]


def test_spiffe_server_refuses_a_probe_without_svid(spire_agent, spiffe_server, tmp_path):
    """Go-like server (alert 116): trusting the bundle is not enough, mode spiffe wants the probe's SVID too."""
    server = spiffe_server(go_like=True)
    options = files(tmp_path, ca_file=spire_agent.bundle_pem())
    result = probe(server.url, expected_spiffe_id=SERVER_ID, **options)
    assert_diagnosis(result, "client_cert_required", "certificate_required (116)")
    assert "spiffe_socket" in result["diagnosis"]["fix"]


# --------------------------------------------------------------------------- 6. rotation


def test_svid_rotation(spire_agent, spiffe_server):
    server = spiffe_server()
    options = {"spiffe_socket": spire_agent.socket_path, "expected_spiffe_id": SERVER_ID}
    first = probe(server.url, **options)
    assert_ok(first)
    old_client = spire_agent.svid(CLIENT_ID).serial_number
    old_server = server.serial
    assert first["peer_certificate"]["serial"] == old_server

    serials = spire_agent.rotate()
    new_client = serials[CLIENT_ID]
    assert new_client != old_client
    # A new probe fetches the rotated client SVID; the server has not reloaded yet, so it still shows the old one.
    second = probe(server.url, **options)
    assert_ok(second)
    assert second["peer_certificate"]["serial"] == old_server
    # Once the server takes its rotated SVID (as its X509Source does in memory), the probe sees the new serial.
    server.reload()
    third = probe(server.url, **options)
    assert_ok(third)
    assert third["peer_certificate"]["serial"] == format(serials[SERVER_ID], "X") != old_server
    assert server.health.client_serials == [old_client, new_client, new_client]


def test_ca_rotation_keeping_the_previous_ca(spire_agent, spiffe_server):
    server = spiffe_server()
    options = {"spiffe_socket": spire_agent.socket_path, "expected_trust_domain": "example.org"}
    assert_ok(probe(server.url, **options))
    spire_agent.rotate_ca(keep_previous=True)
    # The probe's new SVID comes from the new CA, which this server does not trust yet.
    stale = probe(server.url, **options)
    assert_diagnosis(stale, "client_cert_rejected", CLIENT_ID)
    # The server takes the new bundle: its old SVID still verifies (the old CA stays in the bundle).
    server.reload(certificate=False)
    kept = probe(server.url, **options)
    assert_ok(kept)
    assert kept["peer_certificate"]["serial"] == server.serial
    server.reload()
    renewed = probe(server.url, **options)
    assert_ok(renewed)
    assert renewed["peer_certificate"]["serial"] == hex_serial(spire_agent.svid(SERVER_ID))


def test_ca_rotation_dropping_the_previous_ca(spire_agent, spiffe_server):
    """A trust break: the bundle no longer holds the CA of the server's (not yet renewed) SVID."""
    server = spiffe_server()
    spire_agent.rotate_ca(keep_previous=False)
    result = probe(server.url, spiffe_socket=spire_agent.socket_path, expected_spiffe_id=SERVER_ID)
    # "self-signed certificate in certificate chain" here (OpenSSL sends the old CA along), "unable to get local
    # issuer certificate" from a server that sends the leaf alone: both are an authority the bundle lacks.
    assert_diagnosis(result, "unknown_authority", "certificate verification failed")
    assert result["peer_certificate"]["spiffe_id"] == SERVER_ID


# --------------------------------------------------------------------------- 7. validity


def test_expired_server_svid(spire_agent, spiffe_server):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    expired = spire_agent.issue_svid(SERVER_ID, valid_from=past, valid_until=past + datetime.timedelta(hours=1))
    server = spiffe_server(svid=expired)
    result = probe(server.url, spiffe_socket=spire_agent.socket_path, expected_spiffe_id=SERVER_ID)
    assert_diagnosis(result, "certificate_expired", "certificate has expired", "expired 20")
    assert result["peer_certificate"]["spiffe_id"] == SERVER_ID
    assert result["peer_certificate"]["serial"] == hex_serial(expired)
    assert result["peer_certificate"]["days_left"] < 0


def test_server_svid_not_yet_valid(spire_agent, spiffe_server):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    future = spire_agent.issue_svid(SERVER_ID, valid_from=soon, valid_until=soon + datetime.timedelta(hours=1))
    server = spiffe_server(svid=future)
    result = probe(server.url, spiffe_socket=spire_agent.socket_path, expected_spiffe_id=SERVER_ID)
    assert_diagnosis(result, "certificate_not_yet_valid", "not yet valid")
