"""Fixtures for the plugin unit tests: a throw-away PKI and real in-process gRPC servers on 127.0.0.1.

Every failure the probe diagnoses is caused for real here: servers speak TLS or plaintext on a
Python ``ssl`` context (OpenSSL, which sends TLS alerts like Go's crypto/tls) or through grpcio
(BoringSSL, which closes silently), certificates are expired, issued by another CA, or carry only a
SPIFFE URI SAN.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc  # only the tests use grpcio: its servers stand in for BoringSSL ones
import pytest

COLLECTIONS_ROOT = os.environ["PG_TEST_COLLECTIONS"]  # set by tests/unit/conftest.py

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from grpclib.health.check import ServiceStatus  # noqa: E402
from grpclib.health.service import OVERALL, Health  # noqa: E402
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse  # noqa: E402
from grpclib.server import Server  # noqa: E402

DOUBLES = Path(__file__).resolve().parents[2] / "doubles"
if str(DOUBLES) not in sys.path:
    sys.path.insert(0, str(DOUBLES))

import spire_agent_double  # noqa: E402 - the one SPIRE agent double, in-process

SPIFFE_SERVER_ID = "spiffe://example.org/permguard/server"
SPIFFE_CLIENT_ID = "spiffe://example.org/ops/probe"
# The uid the double registers the server's SPIFFE ID for: the server is "another workload" of the same agent.
SPIFFE_SERVER_UID = 4_242_424 if os.getuid() != 4_242_424 else 4_242_425


# --------------------------------------------------------------------------- PKI


def _name(common_name: str) -> x509.Name:
    # An empty subject, as SPIRE issues X509-SVIDs, when no common name is given.
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])


def _write_pem(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    return str(path)


class CA:
    """A certificate authority that issues leaves into a directory."""

    def __init__(self, directory: Path, name: str, common_name: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = _write_pem(directory / f"{name}-ca.pem", self.cert)

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        days_valid: tuple[int, int] = (-1, 365),
        client: bool = False,
    ) -> tuple[str, str]:
        """Issue a leaf; return (cert_file, key_file). ``days_valid`` is (not_before, not_after) from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_valid[0]))
            .not_valid_after(now + datetime.timedelta(days=days_valid[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=bool(uris and not dns))
        cert = builder.sign(self.key, hashes.SHA256())
        return _write_pem(self.dir / f"{name}.pem", cert), _write_pem(self.dir / f"{name}-key.pem", key=key)


class PKI:
    """Every certificate the tests need, in one temporary directory."""

    spiffe_server_id = SPIFFE_SERVER_ID
    spiffe_client_id = SPIFFE_CLIENT_ID

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CA(directory, "main", "Test Root CA")
        self.other_ca = CA(directory, "other", "Some Other CA")
        # Mimics the real server's tls mode without cert paths: a fresh "PermGuard Auto CA".
        self.auto_ca = CA(directory, "auto", "PermGuard Auto CA")
        local = {"dns": ("localhost", "permguard"), "ips": ("127.0.0.1", "::1")}
        self.server = self.ca.issue("server", "permguard-server", **local)
        self.client = self.ca.issue("client", "ops-probe", client=True)
        self.client_other = self.other_ca.issue("client-other", "intruder", client=True)
        self.server_other = self.other_ca.issue("server-other", "permguard-server", **local)
        self.expired = self.ca.issue("expired", "permguard-server", days_valid=(-30, -1), **local)
        self.future = self.ca.issue("future", "permguard-server", days_valid=(5, 30), **local)
        self.wrong_host = self.ca.issue("wrong-host", "db.example", dns=("db.example",))
        self.spiffe_server = self.ca.issue("spiffe-server", "", uris=(SPIFFE_SERVER_ID,))
        self.spiffe_client = self.ca.issue("spiffe-client", "", uris=(SPIFFE_CLIENT_ID,), client=True)
        self.auto_server = self.auto_ca.issue("auto-server", "PermGuard Server", **local)
        self.chain_file = str(directory / "server-chain.pem")
        Path(self.chain_file).write_bytes(Path(self.server[0]).read_bytes() + Path(self.ca.cert_file).read_bytes())
        self.client_key_mismatch = (self.client[0], self.client_other[1])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- servers


def server_context(
    cert: tuple[str, str], client_ca: str | None = None, max_tls12: bool = False, alpn: bool = True
) -> ssl.SSLContext:
    """A Python-ssl server context shaped like Permguard's (TLS >= 1.2, ALPN h2, optional client auth)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(["h2"])
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


class LoopThread:
    """An asyncio loop in a daemon thread, hosting grpclib servers for the whole session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Failed handshakes are expected on the server side; keep the test output quiet.
        self.loop.set_exception_handler(lambda loop, context: None)
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-servers", daemon=True)
        self.thread.start()

    def run(self, coro: object, timeout: float = 10) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    # proto must say TCP: grpclib sets TCP_NODELAY only then, and without it each answer waits ~40 ms (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


KNOWN_HEALTH_SERVICES = ("", "policydecisionpoint.V1PDPService")


def _health_check(request: HealthCheckRequest, context: grpc.ServicerContext) -> HealthCheckResponse:
    # grpc-go's health server: a registered name is SERVING, any other is NOT_FOUND.
    if request.service == "broken":
        context.abort(grpc.StatusCode.UNAVAILABLE, "storage is down")
    if request.service not in KNOWN_HEALTH_SERVICES:
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return HealthCheckResponse(status=HealthCheckResponse.SERVING)


def _grpcio_server(health: bool) -> grpc.Server:
    # grpclib's health messages, since grpcio-health-checking's would clash in the descriptor pool.
    check = grpc.unary_unary_rpc_method_handler(
        _health_check,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
    )
    service = "grpc.health.v1.Health" if health else "zoneadministrationpoint.V1ZAPService"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Check": check}),))
    return server


class GrpclibServer:
    """A grpclib server on 127.0.0.1 in the loop thread; ``services`` defaults to Health (SERVING)."""

    def __init__(
        self,
        loops: LoopThread,
        ctx: ssl.SSLContext | None = None,
        services: list | None = None,
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.loops = loops
        sock = _bound_socket(*address)
        self.port = sock.getsockname()[1]

        async def start() -> Server:
            server = Server([Health()] if services is None else services)
            await server.start(sock=sock, ssl=ctx)
            return server

        self.server = loops.run(start())

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.loops.run(stop())


class TLSFront:
    """A blocking Python-ssl TLS terminator in front of a plaintext gRPC server.

    Blocking OpenSSL sockets flush their alerts before closing, as Go's crypto/tls does (alert 116
    "certificate required" to a TLS 1.3 client without a certificate); asyncio's server-side TLS drops
    them. After a good handshake it relays bytes to the backend, so health checks succeed through it.
    """

    def __init__(self, ctx: ssl.SSLContext, backend_port: int) -> None:
        self.ctx = ctx
        self.backend_port = backend_port
        self.sock = _bound_socket()
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, name="tls-front", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # the alert, if any, has been written already
            return
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=5)
        except OSError:  # the test is over and its backend closed
            tls.close()
            return
        try:
            self._relay(tls, backend)
        finally:
            backend.close()
            tls.close()

    def _relay(self, tls: ssl.SSLSocket, backend: socket.socket) -> None:
        peers = {tls: backend, backend: tls}
        with selectors.DefaultSelector() as selector:
            for side in peers:
                side.setblocking(False)
                selector.register(side, selectors.EVENT_READ)
            while not self.closed.is_set():
                for key, _events in selector.select(0.2):
                    if not self._pump(key.fileobj, peers[key.fileobj]):  # type: ignore[index]
                        return

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> bool:
        try:
            data = source.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        if not data:
            return False
        try:
            sink.setblocking(True)
            sink.sendall(data)
            sink.setblocking(False)
        except OSError:  # the other side is gone
            return False
        return True

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


class ServerFactory:
    """Starts servers on demand and closes them when the test ends."""

    def __init__(self, loops: LoopThread) -> None:
        self.loops = loops
        self.closers: list = []

    def grpclib(
        self,
        ctx: ssl.SSLContext | None = None,
        services: list | None = None,
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> int:
        server = GrpclibServer(self.loops, ctx, services, address)
        self.closers.append(server.close)
        return server.port

    def tls_front(self, ctx: ssl.SSLContext, services: list | None = None) -> int:
        """A Go-like TLS server (alerts are sent) relaying to a plaintext grpclib server."""
        front = TLSFront(ctx, self.grpclib(None, services))
        self.closers.append(front.close)
        return front.port

    def not_serving(self, ctx: ssl.SSLContext | None = None) -> int:
        status = ServiceStatus()
        status.set(False)
        return self.grpclib(ctx, [Health({OVERALL: [status]})])

    def grpcio_mtls(self, pki: PKI) -> int:
        """A grpcio (BoringSSL) server requiring client certificates: it closes silently after the handshake."""
        server = _grpcio_server(health=True)
        creds = grpc.ssl_server_credentials(
            [(Path(pki.server[1]).read_bytes(), Path(pki.server[0]).read_bytes())],
            root_certificates=Path(pki.ca.cert_file).read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        self.closers.append(lambda: server.stop(None).wait(5))
        return port

    def grpcio_plain(self, health: bool = True) -> int:
        """A plaintext grpcio server; without ``health`` it serves another service, so Health is UNIMPLEMENTED."""
        server = _grpcio_server(health)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.closers.append(lambda: server.stop(None).wait(5))
        return port

    def fleet(self, ctx: ssl.SSLContext | None, hosts: tuple[str, ...], names: tuple[str, ...]) -> dict[str, int]:
        """Servers on every (host, port) pair, the same ports on every loopback host; returns the named ports."""
        ports = {}
        for name in names:
            first = GrpclibServer(self.loops, ctx, None, (hosts[0], 0))
            self.closers.append(first.close)
            for host in hosts[1:]:
                self.closers.append(GrpclibServer(self.loops, ctx, None, (host, first.port)).close)
            ports[name] = first.port
        return ports

    def banner_listener(self, banner: bytes = b"SSH-2.0-OpenSSH_9.2\r\n") -> int:
        """A port that is neither TLS nor gRPC: it sends a banner and hangs up."""
        sock = _bound_socket()
        sock.listen(16)

        def serve() -> None:
            while True:
                try:
                    conn = sock.accept()[0]
                except OSError:
                    return
                with conn:
                    conn.sendall(banner)

        threading.Thread(target=serve, name="banner", daemon=True).start()
        self.closers.append(sock.close)
        return sock.getsockname()[1]

    def silent_listener(self) -> int:
        """A socket that accepts TCP connections (kernel backlog) and never says a word."""
        sock = _bound_socket()
        sock.listen(16)
        self.closers.append(sock.close)
        return sock.getsockname()[1]

    def closed_port(self) -> int:
        """A port where nothing listens (bound, then released)."""
        sock = _bound_socket()
        port = sock.getsockname()[1]
        sock.close()
        return port

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()


@pytest.fixture(scope="session")
def collections_root() -> str:
    """Where ``ansible_collections/permguard/secure`` resolves to this checkout (for module subprocesses)."""
    return COLLECTIONS_ROOT


@pytest.fixture(scope="session")
def server_ctx() -> object:
    """The :func:`server_context` builder, for tests (which do not import this file)."""
    return server_context


@pytest.fixture(scope="session")
def loops() -> LoopThread:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def servers(loops: LoopThread) -> ServerFactory:
    factory = ServerFactory(loops)
    yield factory
    factory.close()


# --------------------------------------------------------------------------- SPIFFE: the SPIRE agent double


@pytest.fixture
def spire_agent() -> spire_agent_double.WorkloadApiDouble:
    """The SPIRE agent double in-process: this test's uid is the probe, another uid the Permguard server.

    Scheduled rotation is off (tests rotate on demand); the socket sits under /tmp (Unix paths <= 107 bytes).
    """
    directory = tempfile.mkdtemp(prefix="spire-", dir="/tmp")
    identities = {os.getuid(): SPIFFE_CLIENT_ID, SPIFFE_SERVER_UID: SPIFFE_SERVER_ID}
    agent = spire_agent_double.WorkloadApiDouble(os.path.join(directory, "api.sock"), identities, rotate_every=0)
    with agent:
        yield agent
    shutil.rmtree(directory, ignore_errors=True)


class RecordingHealth(Health):
    """grpc.health.v1.Health (SERVING) that keeps the client certificate of every Check, as the server saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.client_certs: list = []

    async def Check(self, stream: object) -> None:
        self.client_certs.append(stream.peer.cert())  # type: ignore[attr-defined]
        await super().Check(stream)  # type: ignore[arg-type]

    @property
    def client_ids(self) -> list:
        """The URI SANs of the client certificate of each Check call."""
        return [[v for k, v in (c or {}).get("subjectAltName", ()) if k == "URI"] for c in self.client_certs]

    @property
    def client_serials(self) -> list:
        """The serial numbers (int) of the client certificate of each Check call."""
        return [int(c["serialNumber"], 16) if c else None for c in self.client_certs]


class SpiffeServer:
    """A Permguard-like server in mode spiffe, with an X.509-SVID from the double.

    mTLS with an SVID that has only a spiffe:// URI SAN, client certificates required and verified against the
    double's bundle, ALPN h2, TLS >= 1.2.

    ``reload`` takes the double's current SVID and bundle, as the real server's X509Source does in memory; until
    then new handshakes keep the old ones. ``go_like`` puts a blocking-OpenSSL front in place (TLS alerts are
    sent, as Go's crypto/tls does); the health service then sees no client certificate.
    """

    def __init__(
        self,
        factory: ServerFactory,
        agent: spire_agent_double.WorkloadApiDouble,
        directory: Path,
        svid: object = None,
        go_like: bool = False,
    ) -> None:
        self.agent = agent
        self.dir = directory
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.set_alpn_protocols(["h2"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.health = RecordingHealth()
        self.svid: object = None
        self.reload(svid)
        self.port = factory.tls_front(self.ctx, [self.health]) if go_like else factory.grpclib(self.ctx, [self.health])

    @property
    def url(self) -> str:
        return f"grpcs://127.0.0.1:{self.port}"

    @property
    def serial(self) -> str:
        """Serial of the SVID the server presents, upper-case hex as the probe reports it."""
        return format(self.svid.serial_number, "X")  # type: ignore[attr-defined]

    def reload(self, svid: object = None, certificate: bool = True, trust: bool = True) -> None:
        """Present ``svid`` (default: what the double serves for the server's SPIFFE ID) and trust its bundle."""
        if trust:
            self.ctx.load_verify_locations(cadata=self.agent.bundle_pem().decode("ascii"))
        if certificate:
            self.svid = svid or self.agent.svid(SPIFFE_SERVER_ID)
            cert_file, key_file = self.dir / "server-svid.pem", self.dir / "server-svid-key.pem"
            cert_file.write_bytes(self.svid.chain_pem)  # type: ignore[attr-defined]
            key_file.write_bytes(self.svid.key_pem)  # type: ignore[attr-defined]
            self.ctx.load_cert_chain(str(cert_file), str(key_file))


@pytest.fixture
def spiffe_server(servers: ServerFactory, spire_agent: spire_agent_double.WorkloadApiDouble, tmp_path: Path) -> object:
    """Start :class:`SpiffeServer` instances: ``spiffe_server(svid=None, go_like=False)``."""
    count = iter(range(1000))

    def start(svid: object = None, go_like: bool = False) -> SpiffeServer:
        directory = tmp_path / f"spiffe-server-{next(count)}"
        directory.mkdir()
        return SpiffeServer(servers, spire_agent, directory, svid, go_like)

    return start
