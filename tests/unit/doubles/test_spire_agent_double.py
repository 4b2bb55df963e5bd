"""Tests of the SPIRE agent double (tests/doubles/spire_agent_double.py).

The client side is the ``spiffe`` package's own public API (``WorkloadApiClient``, ``X509Source``), which speaks
grpcio; where that client cannot produce the case (it always sends the security header) a raw grpclib client is used.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from spiffe import TrustDomain, WorkloadApiClient, X509Bundle, X509Source
from spiffe.workloadapi.errors import FetchX509BundleError, FetchX509SvidError, X509SourceError

DOUBLE = Path(__file__).resolve().parents[2] / "doubles" / "spire_agent_double.py"
if str(DOUBLE.parent) not in sys.path:
    sys.path.insert(0, str(DOUBLE.parent))

import spire_agent_double as sad  # noqa: E402

ID_PROBE = "spiffe://example.org/ops/probe"
ID_SERVER = "spiffe://example.org/permguard/server"
HEADER = {"workload.spiffe.io": "true"}
WAIT = 5.0
PG_CACHE = Path(os.environ.get("PG_CACHE", Path.home() / ".cache" / "permguard-secure"))


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="spire-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spire_agent(short_dir: Path) -> Iterator[sad.WorkloadApiDouble]:
    """The double in-process, the test's uid registered as ID_PROBE."""
    with sad.WorkloadApiDouble(str(short_dir / "public" / "api.sock"), {os.getuid(): ID_PROBE}) as agent:
        yield agent


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def uri_sans(cert: x509.Certificate) -> List[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def dns_sans(cert: x509.Certificate) -> List[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def verify_client(leaf: x509.Certificate, bundle: List[x509.Certificate]) -> List[str]:
    """Verify ``leaf`` against ``bundle`` as a TLS client certificate; return its URI SANs."""
    verifier = verification.PolicyBuilder().store(verification.Store(bundle)).build_client_verifier()
    verified = verifier.verify(leaf, [])
    return [s.value for s in verified.subjects]


METHODS = {
    "FetchX509SVID": (sad.X509SVIDRequest, sad.X509SVIDResponse),
    "FetchX509Bundles": (sad.X509BundlesRequest, sad.X509BundlesResponse),
    "FetchJWTSVID": (sad.Unimplemented, sad.Unimplemented),
}


def raw_stream(
    socket_path: str,
    method: str,
    count: int = 1,
    *,
    metadata: Optional[Dict[str, str]] = None,
    between: Optional[Callable[[int], None]] = None,
    quiet_for: float = 0.0,
) -> List[Any]:
    """Call a Workload API method with grpclib; return ``count`` messages.

    ``between(i)`` runs after message i (e.g. a rotation), before waiting for the next one; after the last message it
    runs too when ``quiet_for`` is set, and then no further message may arrive within ``quiet_for`` seconds.
    """
    request_type, reply_type = METHODS[method]
    cardinality = Cardinality.UNARY_UNARY if method == "FetchJWTSVID" else Cardinality.UNARY_STREAM

    async def run() -> List[Any]:
        channel = Channel(path=socket_path)
        try:
            async with channel.request(
                f"/SpiffeWorkloadAPI/{method}", cardinality, request_type, reply_type, metadata=metadata, timeout=WAIT
            ) as stream:
                await stream.send_message(request_type(), end=True)
                received = []
                for index in range(count):
                    message = await asyncio.wait_for(stream.recv_message(), WAIT)
                    if message is None:  # the stream ended: its trailers carry the status
                        await stream.recv_trailing_metadata()
                        raise AssertionError(f"{method} ended after {index} message(s) with status OK")
                    received.append(message)
                    if between is not None and (index < count - 1 or quiet_for):
                        between(index)
                if quiet_for:
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(stream.recv_message(), quiet_for)
                await stream.cancel()
                return received
        finally:
            channel.close()

    return asyncio.run(run())


def leaf_of(svid_message: Any) -> x509.Certificate:
    return x509.load_der_x509_certificate(svid_message.x509_svid)


def bundle_serials(message: Any, trust_domain: str = "example.org") -> Set[int]:
    """Serials of the CAs of an X509BundlesResponse, parsed by the spiffe package."""
    raw = message.bundles[f"spiffe://{trust_domain}"]
    return {c.serial_number for c in X509Bundle.parse_raw(TrustDomain(trust_domain), raw).x509_authorities}


# --------------------------------------------------------------------------- X509-SVID and bundle via spiffe


def test_svid_fetched_by_spiffe_client_has_one_uri_san_and_verifies(spire_agent: sad.WorkloadApiDouble) -> None:
    with WorkloadApiClient(spire_agent.endpoint) as client:
        context = client.fetch_x509_context(timeout=WAIT)
    svid = context.default_svid
    assert str(svid.spiffe_id) == ID_PROBE
    leaf = svid.leaf
    assert leaf.serial_number == spire_agent.svid(ID_PROBE).serial_number
    assert uri_sans(leaf) == [ID_PROBE]
    assert dns_sans(leaf) == []
    assert len(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 1
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert bundle is not None
    authorities = list(bundle.x509_authorities)
    assert [c.serial_number for c in authorities] == [c.serial_number for c in spire_agent.bundle]
    assert verify_client(leaf, authorities) == [ID_PROBE]
    # The key sent is the leaf's key.
    assert svid.private_key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_svid_profile_matches_spire(spire_agent: sad.WorkloadApiDouble) -> None:
    leaf = spire_agent.svid(ID_PROBE).leaf
    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).critical
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment and usage.value.key_agreement
    assert not usage.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    lifetime = (sad.not_after(leaf) - sad.not_before(leaf)).total_seconds()
    assert lifetime == pytest.approx(sad.DEFAULT_SVID_TTL + 10, abs=2)
    ca = spire_agent.ca.certificate
    assert uri_sans(ca) == ["spiffe://example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.issuer == ca.subject


def test_bundle_fetched_for_trust_domain(spire_agent: sad.WorkloadApiDouble) -> None:
    with WorkloadApiClient(spire_agent.endpoint) as client:
        bundles = client.fetch_x509_bundles(timeout=WAIT)
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert bundle is not None
    assert [c.serial_number for c in bundle.x509_authorities] == [spire_agent.ca.serial_number]
    assert uri_sans(next(iter(bundle.x509_authorities))) == ["spiffe://example.org"]


def test_svid_works_in_a_real_tls_handshake(spire_agent: sad.WorkloadApiDouble, short_dir: Path) -> None:
    """OpenSSL (Python's ssl) accepts the SVIDs as server and client certificates, verified by the bundle."""
    server_svid = spire_agent.issue_svid(ID_SERVER)
    client_svid = spire_agent.svid(ID_PROBE)
    (short_dir / "bundle.pem").write_bytes(spire_agent.bundle_pem())
    for name, svid in (("server", server_svid), ("client", client_svid)):
        (short_dir / f"{name}.pem").write_bytes(svid.chain_pem)
        (short_dir / f"{name}.key").write_bytes(svid.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(short_dir / "server.pem", short_dir / "server.key")
    server_ctx.load_verify_locations(short_dir / "bundle.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False  # SPIFFE: no DNS name to check
    client_ctx.load_verify_locations(short_dir / "bundle.pem")
    client_ctx.load_cert_chain(short_dir / "client.pem", short_dir / "client.key")
    left, right = socket.socketpair()
    left.settimeout(WAIT)
    right.settimeout(WAIT)
    seen: Dict[str, Any] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(left, server_side=True) as tls:
            seen["client"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with client_ctx.wrap_socket(right) as tls:
        seen["server"] = tls.getpeercert()
        assert tls.recv(2) == b"ok"
    thread.join(WAIT)
    assert seen["server"]["subjectAltName"] == (("URI", ID_SERVER),)
    assert seen["client"]["subjectAltName"] == (("URI", ID_PROBE),)


def test_issue_svid_can_make_an_expired_one(spire_agent: sad.WorkloadApiDouble) -> None:
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    expired = spire_agent.issue_svid(ID_SERVER, valid_from=past, valid_until=past + datetime.timedelta(hours=1))
    assert expired.not_after < datetime.datetime.now(datetime.timezone.utc)
    with pytest.raises(verification.VerificationError):
        verify_client(expired.leaf, spire_agent.bundle)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", ["FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID"])
@pytest.mark.parametrize("metadata", [None, {"workload.spiffe.io": "false"}], ids=["absent", "false"])
def test_missing_security_header_is_invalid_argument(
    spire_agent: sad.WorkloadApiDouble, method: str, metadata: Optional[Dict[str, str]]
) -> None:
    with pytest.raises(GRPCError) as caught:
        raw_stream(spire_agent.socket_path, method, metadata=metadata)
    assert caught.value.status == Status.INVALID_ARGUMENT
    assert caught.value.message == "security header missing from request"


def test_jwt_methods_are_unimplemented(spire_agent: sad.WorkloadApiDouble) -> None:
    with pytest.raises(GRPCError) as caught:
        raw_stream(spire_agent.socket_path, "FetchJWTSVID", metadata=HEADER)
    assert caught.value.status == Status.UNIMPLEMENTED


def test_unknown_uid_is_permission_denied(short_dir: Path) -> None:
    stranger = os.getuid() + 4242
    with sad.WorkloadApiDouble(str(short_dir / "api.sock"), {stranger: ID_PROBE}) as agent:
        with WorkloadApiClient(agent.endpoint) as client:
            with pytest.raises(FetchX509SvidError, match=r"no identity issued \(StatusCode.PERMISSION_DENIED\)"):
                client.fetch_x509_svid(timeout=WAIT)
            with pytest.raises(FetchX509BundleError, match=r"no identity issued \(StatusCode.PERMISSION_DENIED\)"):
                client.fetch_x509_bundles(timeout=WAIT)
        for method in ("FetchX509SVID", "FetchX509Bundles"):
            with pytest.raises(GRPCError) as caught:
                raw_stream(agent.socket_path, method, metadata=HEADER)
            assert (caught.value.status, caught.value.message) == (Status.PERMISSION_DENIED, "no identity issued")
        # py-spiffe retries PermissionDenied, so an X509Source waits for an identity, as go-spiffe's does.
        with pytest.raises(X509SourceError, match="Timeout"):
            X509Source(socket_path=agent.endpoint, timeout_in_seconds=0.5)
        # Registering the caller at run time lets it in.
        agent.set_identity(os.getuid(), ID_SERVER)
        with WorkloadApiClient(agent.endpoint) as client:
            assert str(client.fetch_x509_svid(timeout=WAIT).spiffe_id) == ID_SERVER


def test_unix_user_name_and_several_ids(short_dir: Path) -> None:
    name = pwd.getpwuid(os.getuid()).pw_name
    identities = {name: [ID_PROBE, ID_SERVER], "no-such-user-zz": "spiffe://example.org/nobody"}
    with sad.WorkloadApiDouble(str(short_dir / "api.sock"), identities) as agent:
        with WorkloadApiClient(agent.endpoint) as client:
            svids = client.fetch_x509_svids(timeout=WAIT)
        assert [str(s.spiffe_id) for s in svids] == [ID_PROBE, ID_SERVER]


def test_identity_removed_ends_the_stream_with_permission_denied(spire_agent: sad.WorkloadApiDouble) -> None:
    with pytest.raises(GRPCError) as caught:
        raw_stream(
            spire_agent.socket_path,
            "FetchX509SVID",
            count=2,
            metadata=HEADER,
            between=lambda _: spire_agent.remove_identity(os.getuid()),
        )
    assert caught.value.status == Status.PERMISSION_DENIED


def test_bad_configuration_is_refused(short_dir: Path) -> None:
    sock = str(short_dir / "api.sock")
    with pytest.raises(ValueError, match="not a member of trust domain"):
        sad.WorkloadApiDouble(sock, {0: "spiffe://other.org/x"})
    with pytest.raises(ValueError, match="needs a path"):
        sad.WorkloadApiDouble(sock, {0: "spiffe://example.org"})
    with pytest.raises(ValueError, match="invalid trust domain"):
        sad.WorkloadApiDouble(sock, trust_domain="Example.org")
    parser = sad.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--identity", "no-equals-sign"])
    args = parser.parse_args(["--identity", "1000=spiffe://example.org/a", "--svid-ttl", "2m", "--rotate-every", "0"])
    assert args.identity == [(1000, "spiffe://example.org/a")]
    assert (args.svid_ttl, args.rotate_every) == (120.0, 0.0)
    (short_dir / "file").write_text("x")
    with pytest.raises(RuntimeError, match="not a socket"):
        sad.WorkloadApiDouble(str(short_dir / "file")).start()


# --------------------------------------------------------------------------- streaming and rotation


def test_streams_send_full_state_at_once_and_on_every_change(spire_agent: sad.WorkloadApiDouble) -> None:
    started = time.monotonic()
    first, second = raw_stream(
        spire_agent.socket_path, "FetchX509SVID", count=2, metadata=HEADER, between=lambda _: spire_agent.rotate()
    )
    assert time.monotonic() - started < WAIT
    for message in (first, second):  # each message is the whole state, not a delta
        assert [s.spiffe_id for s in message.svids] == [ID_PROBE]
        svid = message.svids[0]
        assert svid.x509_svid and svid.x509_svid_key and svid.bundle
        assert uri_sans(leaf_of(svid)) == [ID_PROBE]
    assert leaf_of(first.svids[0]).serial_number != leaf_of(second.svids[0]).serial_number
    assert leaf_of(second.svids[0]).serial_number == spire_agent.svid(ID_PROBE).serial_number


def test_bundle_stream_sends_only_bundle_changes(spire_agent: sad.WorkloadApiDouble) -> None:
    # An SVID rotation leaves the bundle unchanged: nothing more is sent (SPIRE deduplicates bundle updates).
    (only,) = raw_stream(
        spire_agent.socket_path,
        "FetchX509Bundles",
        metadata=HEADER,
        between=lambda _: spire_agent.rotate(),
        quiet_for=0.3,
    )
    assert set(only.bundles) == {"spiffe://example.org"}
    assert bundle_serials(only) == {spire_agent.ca.serial_number}
    old_ca = spire_agent.ca.serial_number

    first, second = raw_stream(
        spire_agent.socket_path,
        "FetchX509Bundles",
        count=2,
        metadata=HEADER,
        between=lambda _: spire_agent.rotate(ca=True),
    )
    assert bundle_serials(first) == {old_ca}
    assert bundle_serials(second) == {old_ca, spire_agent.ca.serial_number}


def test_ca_rotation_keeps_the_old_ca_in_the_bundle(spire_agent: sad.WorkloadApiDouble) -> None:
    old_svid = spire_agent.svid(ID_PROBE)
    old_ca = spire_agent.ca.serial_number
    spire_agent.rotate_ca()
    bundle = spire_agent.bundle
    assert len(bundle) == 2
    assert bundle[0].serial_number == old_ca
    new_svid = spire_agent.svid(ID_PROBE)
    assert new_svid.leaf.issuer == spire_agent.ca.certificate.subject != old_svid.leaf.issuer
    assert verify_client(old_svid.leaf, bundle) == [ID_PROBE]
    assert verify_client(new_svid.leaf, bundle) == [ID_PROBE]
    spire_agent.rotate_ca(keep_previous=False)  # a trust break
    assert len(spire_agent.bundle) == 1
    with pytest.raises(verification.VerificationError):
        verify_client(old_svid.leaf, spire_agent.bundle)


def test_rotation_seen_by_x509_source(short_dir: Path) -> None:
    """Scheduled rotation (half of a 2 s TTL) and on-demand rotation both reach an X509Source."""
    with sad.WorkloadApiDouble(str(short_dir / "api.sock"), {os.getuid(): ID_PROBE}, svid_ttl=2.0) as agent:
        source = X509Source(socket_path=agent.endpoint, timeout_in_seconds=WAIT)
        try:
            updated = threading.Event()
            source.subscribe_for_updates(updated.set)

            def serial() -> int:
                return source.get_x509_context().default_svid.leaf.serial_number

            first = serial()
            assert wait_until(lambda: serial() != first, timeout=4.0)
            assert agent.rotations >= 1
            scheduled = serial()
            updated.clear()
            new_serials = agent.rotate()
            assert updated.wait(2.0)
            assert wait_until(lambda: serial() == new_serials[ID_PROBE], timeout=2.0)
            assert scheduled != new_serials[ID_PROBE]
        finally:
            source.close()


def test_no_scheduled_rotation_when_disabled(short_dir: Path) -> None:
    with sad.WorkloadApiDouble(str(short_dir / "api.sock"), {0: ID_PROBE}, svid_ttl=1.0, rotate_every=0) as agent:
        serial = agent.svid(ID_PROBE).serial_number
        time.sleep(0.6)
        assert agent.svid(ID_PROBE).serial_number == serial
        assert agent.rotations == 0


# --------------------------------------------------------------------------- socket and state


def test_socket_permissions_stale_socket_and_clean_stop(short_dir: Path) -> None:
    path = short_dir / "public" / "api.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves a dead socket file behind, as a crashed agent does
    with sad.WorkloadApiDouble(str(path), {os.getuid(): ID_PROBE}) as agent:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o777
        with WorkloadApiClient(agent.endpoint) as client:
            assert str(client.fetch_x509_svid(timeout=WAIT).spiffe_id) == ID_PROBE
    assert not path.exists()
    created = short_dir / "new" / "deeper" / "api.sock"
    with sad.WorkloadApiDouble(str(created), {os.getuid(): ID_PROBE}):
        assert stat.S_IMODE(created.parent.stat().st_mode) == 0o755
    assert not created.exists()


def test_state_dir_keeps_the_bundle_across_restarts(short_dir: Path) -> None:
    state = short_dir / "state"
    first = sad.WorkloadApiDouble(str(short_dir / "api.sock"), {0: ID_PROBE}, state_dir=str(state))
    ca_serial = first.ca.serial_number
    assert stat.S_IMODE((state / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    second = sad.WorkloadApiDouble(str(short_dir / "api.sock"), {0: ID_PROBE}, state_dir=str(state))
    assert second.ca.serial_number == ca_serial
    assert second.svid(ID_PROBE).serial_number != first.svid(ID_PROBE).serial_number
    second.rotate_ca()
    third = sad.WorkloadApiDouble(str(short_dir / "api.sock"), {0: ID_PROBE}, state_dir=str(state))
    assert [c.serial_number for c in third.bundle] == [ca_serial, second.ca.serial_number]
    with pytest.raises(ValueError, match=r"holds a CA for spiffe://example\.org"):
        sad.WorkloadApiDouble(str(short_dir / "api.sock"), trust_domain="other.org", state_dir=str(state))


# --------------------------------------------------------------------------- program mode


def _debian_python() -> Optional[List[str]]:
    """The Debian 12 system interpreter with the grpclib wheel on its path, when this machine has both."""
    python = Path("/usr/bin/python3")
    wheels = sorted((PG_CACHE / "wheels").glob("grpclib-0.4.9-*.whl"))
    if not python.exists() or not wheels:
        return None
    probe = subprocess.run(
        [str(python), "-c", "import cryptography, google.protobuf, h2, multidict"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return [str(python), str(wheels[0])] if probe.returncode == 0 else None


@pytest.mark.parametrize("interpreter", ["venv", "debian-system-python"])
def test_program_serves_rotates_on_sighup_and_stops_on_sigterm(short_dir: Path, interpreter: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIFFE_")}
    if interpreter == "venv":
        command = [sys.executable]
    else:
        debian = _debian_python()
        if debian is None:
            pytest.skip("no /usr/bin/python3 with cryptography/protobuf/h2/multidict and a grpclib 0.4.9 wheel")
        command = [debian[0]]
        env["PYTHONPATH"] = debian[1]
    sock = short_dir / "public" / "api.sock"
    args = [
        str(DOUBLE),
        "--socket-path",
        str(sock),
        "--identity",
        f"{os.getuid()}={ID_PROBE}",
        "--identity",
        "no-such-user-zz=spiffe://example.org/nobody",
        "--state-dir",
        str(short_dir / "state"),
        "--svid-ttl",
        "1m",
    ]
    stderr_path = short_dir / "stderr.txt"

    def start() -> subprocess.Popen:
        with open(stderr_path, "ab") as err:
            proc = subprocess.Popen([*command, *args], stdin=subprocess.DEVNULL, stderr=err, env=env)
        try:
            wait_until(lambda: proc.poll() is not None or sock.exists(), timeout=10.0)
            assert proc.poll() is None, stderr_path.read_text()
            return proc
        except BaseException:
            proc.kill()
            proc.wait(WAIT)
            raise

    def fetch() -> Any:
        with WorkloadApiClient(f"unix://{sock}") as client:
            return client.fetch_x509_context(timeout=WAIT)

    proc = start()
    try:
        assert stat.S_IMODE(sock.lstat().st_mode) == 0o777
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755
        context = fetch()
        first = context.default_svid.leaf.serial_number
        ca_serial = next(
            iter(context.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("example.org")).x509_authorities)
        ).serial_number
        assert str(context.default_svid.spiffe_id) == ID_PROBE
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: fetch().default_svid.leaf.serial_number != first, timeout=WAIT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert not sock.exists()
    log = stderr_path.read_text()
    assert "X509-SVID rotated" in log and "reason=SIGHUP" in log
    assert "Received SIGTERM, stopping" in log

    proc = start()  # a restart on the same state directory keeps the trust bundle
    try:
        bundle = fetch().x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("example.org"))
        assert [c.serial_number for c in bundle.x509_authorities] == [ca_serial]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert not sock.exists()
