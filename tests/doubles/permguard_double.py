"""Test double of the Permguard servers ``permguard_all_in_one``, ``permguard_control_plane``, ``permguard_data_plane``.

One self-contained file. Which binary it stands in for is chosen from ``basename(argv[0])``:

* ``permguard_all_in_one`` (and any unknown name): ZAP, PAP and PDP endpoints;
* ``permguard_control_plane``: ZAP and PAP;
* ``permguard_data_plane``: PDP.

It runs on Debian 12's system Python 3.11 with python3-cryptography 38, python3-h2 4.1, python3-multidict 6.0,
python3-protobuf 3.21 and the pure-python grpclib 0.4.9 wheel, and equally on newer versions of those libraries.
The facts it follows were read from Permguard's public source (v0.0.52, unchanged at the newest commit read); nothing
is copied from it.

What it copies from the real server
-----------------------------------
* Command line: one command, no sub-commands. Every flag the real binary registers, per binary (a data plane has no
  ZAP/PAP flags, a control plane no PDP flags), with the real defaults and types (string, int, bool, duration,
  float64); ``--flag=value`` and ``--flag value``; bare booleans; ``--`` ends the flags; stray positional arguments
  are ignored; ``-h``/``--help`` prints a usage page and exits 0. Unknown flags (including ``--server-pip-grpc-port``
  and ``--storage-engine-sqlite-filepath``, which exist only in the documentation) are rejected the way cobra/pflag
  reject them: ``Error: unknown flag: --xyz`` and the usage page on stderr, the bare error on stdout, exit 1.
  Malformed values give pflag's ``invalid argument "v" for "--flag" flag: parse error``.
* Environment: every flag is also read from ``PERMGUARD_<NAME>`` (upper case, ``-`` and ``.`` become ``_``) with
  viper's precedence: a flag given on the command line beats the environment, which beats the default; an empty
  variable counts as unset; an unparsable number in the environment becomes 0 and an unparsable boolean false (as
  viper's cast does), which then fails the real validation (for example ``zap-service: invalid port``).
* Start-up validation, in the real order and with the real texts: log level, ``--server-appdata`` must be an existing
  directory, NOTP/OTel settings, the TLS mode (exact lower case) and the TLS flag combinations, ports 1-65535, page
  sizes, PAP transaction-cleanup settings. These configuration errors are printed on stdout as
  ``Bootstrapper failed initializing server factory configuration <error>`` (exit 1), as the real binary does.
* Transport security, built once at start-up (files are read once; changing them later changes nothing until a
  restart) and applied to every port:

  - ``none``: plaintext HTTP/2 (h2c);
  - ``tls``: server-side TLS with ``--server-tls-cert-file``/``--server-tls-key-file`` (the CA file is ignored); with
    no cert, key nor directory the auto-certificate directory becomes ``<appdata>/certs``; when no cert file is set
    and a directory is, a NEW CA and server certificate are generated at EVERY start (directory created 0700, files
    written 0600: ``ca-cert.pem``, ``ca-key.pem``, ``server-cert.pem``, ``server-key.pem``; ECDSA P-256 keys as SEC1
    ``EC PRIVATE KEY`` PEM; subjects O=PermGuard with CN "PermGuard Auto CA" / "PermGuard Server"; random 128-bit
    serials; CA: 3650 days, critical basic constraints CA:TRUE pathlen 1, critical keyUsage keyCertSign+cRLSign,
    subject key identifier = first 160 bits of the SHA-256 of the public key, as Go >= 1.25 fills it; server: 365
    days, critical keyUsage digitalSignature+keyEncipherment, extKeyUsage serverAuth, authority key identifier, SANs
    DNS localhost, permguard and IP 127.0.0.1, ::1; both not backdated; like Go's MkdirAll/WriteFile, an existing
    directory or file keeps its mode);
  - ``mtls`` and ``external`` (identical): cert, key and CA required; a client certificate is required and verified
    against the CA file (any certificate of the CA file is a trust anchor, as in Go);
  - ``spiffe``: a SPIFFE Workload API client of its own (grpclib, messages described at run time, no py-spiffe),
    behaving as go-spiffe v2.6's ``workloadapi.NewX509Source`` does under Permguard:

    + the address is ``unix://`` + the bare ``--server-tls-spiffe-socket-path``, else ``SPIFFE_ENDPOINT_SOCKET``
      as it stands (a full ``unix:///...`` URI; set but empty counts as set), checked with go-spiffe's texts
      (``workload endpoint socket address is not configured``, ``... URI must have a "tcp" or "unix" scheme``,
      ``... must not be opaque``...), then resolved as grpc-go's ``unix`` resolver does: an authority is refused,
      so a relative flag value (``run/agent.sock``) or a URI given to the bare-path flag (``unix:///...``, which
      becomes ``unix://unix:///...``) fails with ``failed to exit idle mode: failed to start resolver: invalid
      (non-empty) authority: <authority>``. ``tcp://IP:port`` addresses are dialled too;
    + creating the source BLOCKS, for ever, until the first X509-SVID arrives: ``FetchX509SVID`` is streamed with
      the ``workload.spiffe.io: true`` header and, while the agent is absent, refuses the caller (PermissionDenied
      for a uid with no registration entry) or ends the stream, re-opened after go-spiffe's linear backoff (1 s,
      2 s, 3 s... at most 30 s; reset by every message received). Only InvalidArgument and Canceled end the watch;
      before the first SVID that fails the start with ``spiffe: failed to create X509 source: rpc error: code =
      InvalidArgument desc = ...``. Nothing listens while it waits;
    + responses are parsed like go-spiffe: every SVID (the first of a repeated hint wins) with x509svid.ParseRaw's
      checks (one SPIFFE ID URI SAN, leaf not a CA, digitalSignature and no keyCertSign/cRLSign, signing
      certificates CA + keyCertSign, key matching the leaf); the default (first) SVID is served; the bundle set is
      each SVID's ``bundle`` under its trust domain plus ``federated_bundles``. A message that does not parse is
      logged and skipped, as go-spiffe does;
    + mTLS on every port with that SVID (its whole chain) and a client certificate REQUIRED and verified as
      ``tlsconfig.MTLSServerConfig`` + ``AuthorizeAny()`` do: the chain must end at an authority of the bundle set
      (every authority is an anchor), the leaf must carry exactly one URI SAN that is a valid SPIFFE ID (a
      certificate from the trusted CA without one, with two, or with an ``https://`` URI is refused with
      go-spiffe's ``x509svid: could not get leaf SPIFFE ID: certificate contains no URI SAN``...), must not be a CA
      or carry keyCertSign/cRLSign, and its trust domain must have a bundle (``x509bundle: no X.509 bundle for
      trust domain "other.org"``); a leaf signed directly by another trust domain's authority is refused. ANY
      SPIFFE ID passing these checks is accepted (no allow-list, no host name check). No client certificate under
      TLS 1.3 gets the ``certificate_required`` alert, as from Go;
    + in-memory rotation: every later message that changes the default SVID or the bundles swaps the TLS
      material for new handshakes (``RotatingServerContext``), without restart and without touching open
      connections; a CA rotation (new bundle) is trusted from the next handshake on. When the agent goes away
      after the first SVID, the last SVID keeps being served while the watch retries;
    + signals: the real server subscribes to SIGTERM/SIGINT only after its credentials are built, so a signal
      received while the start blocks ends the process with Go's default action: killed by that signal (exit
      status -15 / 143 for SIGTERM; systemd counts a SIGTERM death on stop as clean). Nothing is left listening.
  - all TLS modes: TLS 1.2 minimum, ALPN ``h2``; a client that did not negotiate ALPN ``h2`` is disconnected right
    after the handshake, as grpc-go >= 1.67 does. A failed handshake sends its TLS alert before closing, as Go's
    crypto/tls does (TLS 1.3 ``certificate_required`` for a missing client certificate, ``protocol_version`` for
    TLS 1.0/1.1); asyncio alone would drop it.
  - Go's texts for credential errors: ``tls: failed to load server certificate: open <path>: no such file or
    directory`` (and the PEM/key-pair texts of Go's ``tls.X509KeyPair``), ``tls: failed to read CA file <path>: ...``,
    ``tls: failed to parse CA certificates from <path>``, ``spiffe: failed to create X509 source: ...``. These
    run-time errors follow the real path: a JSON error log line, then cobra's ``Error: <error>`` and the usage page on
    stderr, the bare error on stdout, exit 1. Nothing is left listening.
* Listening: ``:<port>`` on all interfaces, dual-stack ``::`` (falling back to ``0.0.0.0`` when IPv6 is unavailable),
  SO_REUSEADDR, ports bound in the order ZAP, PAP, PDP; a port that cannot be bound fails the start with Go's text
  (``listen tcp :9091: bind: address already in use``).
* Every port serves ``grpc.health.v1.Health`` (Check and Watch; service "" is SERVING; another name gets NOT_FOUND
  "unknown service" from Check and SERVICE_UNKNOWN from Watch, as grpc-go's health server does) and server reflection
  (v1 and v1alpha). Reflection lists, as grpc-go's does, every service of the port: health, both reflection
  services and the port's Permguard service (``zoneadministrationpoint.V1ZAPService``,
  ``policyadministrationpoint.V1PAPService``, ``policydecisionpoint.V1PDPService``).
* Database: the real server opens ``<appdata>/<dbname>.db`` (dbname lower-cased, ``.db`` appended) lazily; the only
  access at start-up is the PAP transaction-cleanup job (enabled by default, so in all_in_one and control_plane),
  which connects (SQLite creates a missing file, empty), enables foreign keys and queries the ``transactions`` table
  immediately and then every ``--server-pap-tx-cleanup-interval``. Failures (no schema, unwritable directory) are only
  logged and the server keeps running. The double does the same with Python's sqlite3. A data plane creates no file.
* Logs: zap-production-like JSON lines on stderr (level, ts, msg, fields) filtered by ``--log-level``: the version,
  "TLS enabled" with the mode, one "Service is serving" line per port.
* SIGTERM and SIGINT stop a serving server cleanly, exit 0 (before serving: see ``spiffe`` above).

What it leaves out
------------------
* No ZAP/PAP/PDP business RPCs: every Permguard method answers UNIMPLEMENTED, and reflection cannot describe those
  services (their descriptors are not shipped). No NOTP, no storage, no schema, no decision logs, no OpenTelemetry
  (the flags are accepted and validated, ``--server-otel-enabled`` only logs a warning).
* TLS is Python's ``ssl`` (OpenSSL), not Go's crypto/tls: versions, ALPN and the TLS 1.3 ``certificate required``
  alert match, but some alerts differ (OpenSSL sends ``unknown_ca`` where Go sends ``bad_certificate``, and
  ``handshake_failure`` instead of ``bad_certificate`` for a missing client certificate under TLS 1.2), cipher suite
  lists differ, and a client offering only non-h2 ALPN protocols is dropped after the handshake instead of getting
  Go's ``no_application_protocol`` alert. Go's key-pair errors are reproduced for the common cases only.
* ``spiffe``:

  - go-spiffe logs nothing by default; the double logs its own lines: the address it waits on, each failed attempt
    (``Waiting for the first X509-SVID from the SPIFFE Workload API`` with grpc-go-like error texts such as ``rpc
    error: code = PermissionDenied desc = no identity issued`` or ``... dial unix <path>: connect: no such file or
    directory``, the retry delay, and the uid that needs a registration entry), the SVID received, every rotation
    (SPIFFE ID, serial, expiry, trust domains), refused client certificates (at DEBUG, with go-spiffe's error), and
    a line before dying of a signal while blocked. grpc-go's transport error texts are close, not guaranteed.
  - Verification is OpenSSL's plus a check after the handshake: a certificate that chains to the bundle but is not
    an acceptable X509-SVID (no, several or a non-SPIFFE URI SAN, a CA leaf, an unknown trust domain) completes
    the TLS handshake and the connection is then closed before any HTTP/2 byte, where Go fails the handshake with
    a ``bad_certificate`` alert. OpenSSL also checks the client EKU (clientAuth or none) where go-spiffe accepts
    any, and for a leaf issued through an intermediate the trust-domain binding rests on OpenSSL's verification
    against the union of the bundles (Python 3.11 exposes no verified chain). With a single trust domain (no
    federation, as with the SPIRE double) these coincide with go-spiffe.
  - No JWT-SVIDs, no ``FetchX509Bundles`` stream (go-spiffe's X509Source reads bundles from ``FetchX509SVID``
    too), no CRLs, SVID picker options or Windows named pipes.
* Stopping cancels open streams (a health Watch, say) after closing the listeners; grpc-go's GracefulStop would wait
  for them.
* Two private APIs are used, pinned by the versions above: grpclib's ``Server._protocol_factory`` (to add the ALPN
  check and the TLS layer) and asyncio's ``sslproto.SSLProtocol`` (Python >= 3.11 implementation, to flush alerts).
* Cosmetics: no ASCII-art banner (a one-line banner instead), help and usage texts are the double's own, the
  development (``--debug``) log encoder is not imitated, and Go's nil-pointer panic on an unreadable
  ``--server-appdata`` is reported as ``server: invalid app data directory``.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import datetime
import errno
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
import urllib.parse
from asyncio import sslproto
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory
    from grpclib import GRPCError
    from grpclib.client import Channel
    from grpclib.const import Cardinality, Handler, Status
    from grpclib.exceptions import ProtocolError, StreamTerminatedError
    from grpclib.health.v1.health_grpc import HealthBase
    from grpclib.health.v1.health_pb2 import HealthCheckResponse
    from grpclib.reflection.service import ServerReflection
    from grpclib.server import Server
except ImportError as _missing:  # pragma: no cover - depends on the host
    sys.exit(
        f"permguard double: missing Python module {_missing.name!r}: it needs cryptography, protobuf, h2, "
        "multidict and grpclib"
    )

__version__ = "none"

EXIT_FAILURE = 1

# --------------------------------------------------------------------------------------------- binaries and flags

SERVICE_ZAP = "ZAP"
SERVICE_PAP = "PAP"
SERVICE_PIP = "PIP"
SERVICE_PDP = "PDP"


@dataclass(frozen=True)
class Flavour:
    """One of the three server binaries."""

    display_name: str
    services: Tuple[str, ...]

    @property
    def use(self) -> str:
        """Return cobra's command name (the display name, lower case, dashes)."""
        return self.display_name.lower().replace(" ", "-")

    @property
    def endpoints(self) -> Tuple[str, ...]:
        """Return the services that listen on a port (PIP serves nothing)."""
        return tuple(s for s in self.services if s != SERVICE_PIP)


FLAVOURS: Dict[str, Flavour] = {
    "permguard_all_in_one": Flavour("All-In-One", (SERVICE_ZAP, SERVICE_PAP, SERVICE_PIP, SERVICE_PDP)),
    "permguard_control_plane": Flavour("Control Plane", (SERVICE_ZAP, SERVICE_PAP, SERVICE_PIP)),
    "permguard_data_plane": Flavour("Data Plane", (SERVICE_PDP,)),
}
DEFAULT_FLAVOUR = "permguard_all_in_one"

BUSINESS_SERVICES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    SERVICE_ZAP: (
        "zoneadministrationpoint.V1ZAPService",
        ("CreateZone", "UpdateZone", "DeleteZone", "FetchZones"),
    ),
    SERVICE_PAP: (
        "policyadministrationpoint.V1PAPService",
        (
            "CreateLedger",
            "UpdateLedger",
            "DeleteLedger",
            "FetchLedgers",
            "PushAdvertise",
            "PushTransfer",
            "PullState",
            "PullNegotiate",
            "PullObjects",
        ),
    ),
    SERVICE_PDP: ("policydecisionpoint.V1PDPService", ("AuthorizationCheck",)),
}

TLS_MODES = ("none", "tls", "mtls", "external", "spiffe")
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "DPANIC", "PANIC", "FATAL")


@dataclass(frozen=True)
class FlagSpec:
    """A command-line flag: name, Go type, default and help text."""

    name: str
    kind: str  # string, int, bool, duration, float64
    default: Any
    usage: str

    @property
    def env(self) -> str:
        """Return the environment variable viper reads for this flag."""
        return "PERMGUARD_" + re.sub(r"[-.]", "_", self.name).upper()


_MINUTE_NS = 60 * 1_000_000_000

COMMON_FLAGS = (
    FlagSpec("debug", "bool", False, "enable debug mode"),
    FlagSpec("log-level", "string", "INFO", "specifies log level"),
    FlagSpec("server-appdata", "string", "./", "directory to be used as zone data"),
    FlagSpec("server-notp-max-packet-size", "int", 16777216, "notp maximum packet size in bytes"),
    FlagSpec("server-otel-enabled", "bool", False, "enable OpenTelemetry tracing and metrics"),
    FlagSpec("server-otel-endpoint", "string", "localhost:4317", "OpenTelemetry collector gRPC endpoint"),
    FlagSpec("server-otel-sample-rate", "float64", 0.1, "OpenTelemetry trace sample rate (0.0 to 1.0)"),
    FlagSpec("server-tls-mode", "string", "none", "TLS mode: none, tls, mtls, external, spiffe"),
    FlagSpec("server-tls-cert-file", "string", "", "TLS server certificate file (PEM)"),
    FlagSpec("server-tls-key-file", "string", "", "TLS server private key file (PEM)"),
    FlagSpec("server-tls-ca-file", "string", "", "CA certificate(s) that verify client certificates (PEM)"),
    FlagSpec("server-tls-auto-cert-dir", "string", "", "directory for auto-generated certificates (mode=tls only)"),
    FlagSpec("server-tls-spiffe-socket-path", "string", "", "bare path of the SPIFFE Workload API socket"),
)
CENTRAL_STORAGE_FLAG = FlagSpec("storage-engine-central", "string", "SQLITE", "storage engine for central data")
SQLITE_FLAGS = (FlagSpec("storage-engine-sqlite-dbname", "string", "permguard", "sqlite database name"),)
SERVICE_FLAGS: Dict[str, Tuple[FlagSpec, ...]] = {
    SERVICE_ZAP: (
        FlagSpec("server-zap-grpc-port", "int", 9091, "port of the ZAP gRPC services"),
        FlagSpec("storage-zap-engine-central", "string", "", "storage engine for ZAP central data"),
        FlagSpec("server-zap-data-fetch-maxpagesize", "int", 10000, "maximum items fetched per request"),
        FlagSpec("server-zap-data-enable-default-creation", "bool", False, "create default entities"),
    ),
    SERVICE_PAP: (
        FlagSpec("server-pap-grpc-port", "int", 9092, "port of the PAP gRPC services"),
        FlagSpec("storage-pap-engine-central", "string", "", "storage engine for PAP central data"),
        FlagSpec("server-pap-data-fetch-maxpagesize", "int", 10000, "maximum items fetched per request"),
        FlagSpec("server-pap-authstar-max-object-size", "int", 5242880, "maximum object size for push/pull"),
        FlagSpec("server-pap-tx-cleanup-enabled", "bool", True, "clean up stale transactions in the background"),
        FlagSpec("server-pap-tx-cleanup-interval", "duration", 5 * _MINUTE_NS, "interval of the cleanup job"),
        FlagSpec("server-pap-tx-max-lifetime", "duration", 5 * _MINUTE_NS, "lifetime of a pending transaction"),
    ),
    SERVICE_PIP: (),
    SERVICE_PDP: (
        FlagSpec("server-pdp-grpc-port", "int", 9094, "port of the PDP gRPC services"),
        FlagSpec("storage-pdp-engine-central", "string", "", "storage engine for PDP central data"),
        FlagSpec("server-pdp-data-fetch-maxpagesize", "int", 10000, "maximum items fetched per request"),
        FlagSpec("server-pdp-decision-log", "string", "NONE", "where decision logs are sent"),
    ),
}
PORT_FLAG = {s: f"server-{s.lower()}-grpc-port" for s in (SERVICE_ZAP, SERVICE_PAP, SERVICE_PDP)}


class DoubleError(Exception):
    """An error whose text is the one the real binary prints."""


class ParseError(DoubleError):
    """A command-line error (pflag/cobra)."""


class ConfigError(DoubleError):
    """A configuration error (the real InitFromViper)."""


class StartupError(DoubleError):
    """A run-time start-up error (credentials, listening): returned through cobra's RunE."""


# --------------------------------------------------------------------------------------------- Go-like value parsing

_GO_INT_RE = re.compile(r"^[+-]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9_]*)$")
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION_UNITS.update({"m": 60 * 1_000_000_000, "h": 3600 * 1_000_000_000})
_DURATION_PART_RE = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def go_parse_int(text: str) -> int:
    """Parse like Go's ``strconv.ParseInt(s, 0, 64)``; raise ValueError on bad syntax or range."""
    if not _GO_INT_RE.match(text):
        raise ValueError("parse error")
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-").replace("_", "")
    octal = len(body) > 1 and body[0] == "0" and body[1] in "0123456789"
    value = sign * (int(body, 8) if octal else int(body, 0))
    if not -(2**63) <= value < 2**63:
        raise ValueError("value out of range")
    return value


def go_parse_bool(text: str) -> bool:
    """Parse like Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError("parse error")


def go_parse_duration(text: str) -> int:
    """Parse like Go's ``time.ParseDuration``; return nanoseconds."""
    body = text
    sign = 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError("parse error")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART_RE.match(body, pos)
        if not match or match.group(1) in ("", "."):
            raise ValueError("parse error")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * int(total)


def go_format_duration(nanos: int) -> str:
    """Format nanoseconds like Go's ``time.Duration.String`` (whole seconds and above only)."""
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000 or nanos % 1_000_000_000:
        return f"{sign}{nanos}ns"
    seconds = nanos // 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def go_quote(text: str) -> str:
    """Quote like Go's ``%q``."""
    out = ['"']
    escapes = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
    escapes.update({"\t": "\\t", "\v": "\\v"})
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_strerror(exc: OSError) -> str:
    """Return Go's text for an errno (lower-case strerror)."""
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


def parse_flag_value(spec: FlagSpec, text: str) -> Any:
    """Convert a command-line value as Go's flag package does; raise ParseError like pflag."""
    try:
        if spec.kind == "string":
            return text
        if spec.kind == "int":
            return go_parse_int(text)
        if spec.kind == "bool":
            return go_parse_bool(text)
        if spec.kind == "duration":
            return go_parse_duration(text)
        if not re.match(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$", text, re.IGNORECASE):
            raise ValueError("parse error")
        return float(text)
    except ValueError as exc:
        raise ParseError(f"invalid argument {go_quote(text)} for {go_quote('--' + spec.name)} flag: {exc}") from None


def cast_env_value(spec: FlagSpec, text: str) -> Any:
    """Convert an environment value as viper's cast does: an unparsable value becomes the zero value."""
    try:
        if spec.kind == "string":
            return text
        if spec.kind == "int":
            return go_parse_int(re.sub(r"\.0*$", "", text))
        if spec.kind == "bool":
            return go_parse_bool(text)
        if spec.kind == "duration":
            return go_parse_duration(text if re.search(r"[nsuµμmh]", text) else text + "ns")
        return float(text)
    except ValueError:
        return {"int": 0, "bool": False, "duration": 0, "float64": 0.0}[spec.kind]


# --------------------------------------------------------------------------------------------- command line


@dataclass
class CommandLine:
    """The result of parsing argv: flag values given explicitly, help request, positional arguments."""

    given: Dict[str, Any] = field(default_factory=dict)
    help: bool = False
    positional: List[str] = field(default_factory=list)


def central_storage_engine(argv: Sequence[str], environ: Dict[str, str]) -> str:
    """Pre-read ``--storage-engine-central`` before parsing, as the real bootstrapper does."""
    name = "--" + CENTRAL_STORAGE_FLAG.name
    for index, arg in enumerate(argv):
        if not arg.startswith(name):
            continue
        value = ""
        if arg == name and index < len(argv) - 1:
            value = argv[index + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
        if value and not value.startswith("-"):
            return value.upper()
    value = environ.get(CENTRAL_STORAGE_FLAG.env, "")
    return (value or CENTRAL_STORAGE_FLAG.default).upper()


def flag_specs(flavour: Flavour, storage_engine: str) -> Dict[str, FlagSpec]:
    """Return the flags the given binary registers."""
    specs: List[FlagSpec] = [CENTRAL_STORAGE_FLAG, *COMMON_FLAGS]
    if storage_engine == "SQLITE":
        specs.extend(SQLITE_FLAGS)
    for service in flavour.services:
        specs.extend(SERVICE_FLAGS[service])
    return {spec.name: spec for spec in specs}


def _parse_long_flag(arg: str, rest: List[str], specs: Dict[str, FlagSpec], result: CommandLine) -> None:
    """Parse one ``--name[=value]`` argument, taking its value from ``rest`` when needed."""
    name, has_value, value = arg[2:].partition("=")
    if name == "help":
        try:
            result.help = go_parse_bool(value) if has_value else True
        except ValueError:
            message = f"invalid argument {go_quote(value)} for {go_quote('-h, --help')} flag: parse error"
            raise ParseError(message) from None
        return
    spec = specs.get(name)
    if spec is None:
        raise ParseError(f"unknown flag: --{name}")
    if not has_value:
        if spec.kind == "bool":
            value = "true"
        elif rest:
            value = rest.pop(0)
        else:
            raise ParseError(f"flag needs an argument: --{name}")
    result.given[name] = parse_flag_value(spec, value)


def parse_command_line(argv: Sequence[str], specs: Dict[str, FlagSpec]) -> CommandLine:
    """Parse flags the way pflag (under cobra) does."""
    result = CommandLine()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            result.positional.extend(args)
            break
        if arg.startswith("--") and len(arg) > 2:
            _parse_long_flag(arg, args, specs, result)
        elif arg.startswith("-") and len(arg) > 1:
            for short in arg[1:]:
                if short != "h":
                    raise ParseError(f"unknown shorthand flag: {short!r} in {arg}")
                result.help = True
        else:
            result.positional.append(arg)
    return result


def resolve_settings(specs: Dict[str, FlagSpec], given: Dict[str, Any], environ: Dict[str, str]) -> Dict[str, Any]:
    """Resolve every flag with viper's precedence: command line, then environment, then default."""
    values: Dict[str, Any] = {}
    for name, spec in specs.items():
        if name in given:
            values[name] = given[name]
        elif environ.get(spec.env, ""):
            values[name] = cast_env_value(spec, environ[spec.env])
        else:
            values[name] = spec.default
    return values


def _format_default(spec: FlagSpec) -> str:
    if spec.kind == "string":
        return f" (default {go_quote(spec.default)})" if spec.default else ""
    if spec.kind == "bool":
        return " (default true)" if spec.default else ""
    if spec.kind == "duration":
        return f" (default {go_format_duration(spec.default)})" if spec.default else ""
    return f" (default {spec.default})" if spec.default else ""


def usage_text(flavour: Flavour, specs: Dict[str, FlagSpec]) -> str:
    """Return a cobra-style usage page."""
    rows = [("-h, --help", f"help for {flavour.use}")]
    for name in sorted(specs):
        spec = specs[name]
        left = f"    --{name}" + ("" if spec.kind == "bool" else f" {spec.kind}")
        rows.append((left, spec.usage + _format_default(spec)))
    width = max(len(row[0]) for row in rows)
    lines = [f"  {left.ljust(width)}   {text}" for left, text in sorted(rows, key=lambda r: r[0].lstrip(" -h,"))]
    return f"Usage:\n  {flavour.use} [flags]\n\nFlags:\n" + "\n".join(lines) + "\n"


def help_text(flavour: Flavour, specs: Dict[str, FlagSpec]) -> str:
    """Return the ``--help`` page."""
    services = ", ".join(flavour.services)
    head = f"Permguard server test double - {flavour.display_name}\n\nStarting services: {services}.\n\n"
    return head + usage_text(flavour, specs)


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TlsSettings:
    """The server TLS configuration, as the real ServerConfig keeps it."""

    mode: str
    cert_file: str
    key_file: str
    ca_file: str
    auto_cert_dir: str
    spiffe_socket_path: str

    def validate(self) -> None:
        """Check flag combinations exactly as the real server does (texts included)."""
        if self.mode == "tls":
            if not (self.cert_file and self.key_file) and not self.auto_cert_dir:
                raise ConfigError("tls: mode=tls requires either cert-file+key-file or auto-cert-dir")
        elif self.mode in ("mtls", "external"):
            if not self.cert_file or not self.key_file:
                raise ConfigError(f"tls: mode={self.mode} requires cert-file and key-file")
            if not self.ca_file:
                raise ConfigError(f"tls: mode={self.mode} requires ca-file for client certificate verification")


@dataclass
class ServerSettings:
    """Validated settings of one run."""

    log_level: str
    debug: bool
    appdata: str
    otel_enabled: bool
    tls: TlsSettings
    db_path: Optional[str]
    ports: Dict[str, int]
    tx_cleanup_enabled: bool
    tx_cleanup_interval_ns: int
    tx_max_lifetime_ns: int


def _validate_common(values: Dict[str, Any]) -> str:
    """Validate the common server flags; return the log level."""
    log_level = str(values["log-level"]).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError("cli: invalid log level")
    appdata = values["server-appdata"]
    try:
        appdata_ok = bool(appdata) and os.path.isdir(appdata)
    except (OSError, ValueError):
        appdata_ok = False
    if not appdata_ok:
        raise ConfigError("server: invalid app data directory")
    if values["server-notp-max-packet-size"] <= 0:
        raise ConfigError("server: invalid notp max packet size")
    if values["server-otel-enabled"] and not values["server-otel-endpoint"]:
        raise ConfigError("server: otel endpoint must be set when otel is enabled")
    if not 0 <= values["server-otel-sample-rate"] <= 1:
        raise ConfigError("server: otel sample rate must be between 0.0 and 1.0")
    return log_level


def _validate_services(flavour: Flavour, values: Dict[str, Any]) -> Dict[str, int]:
    """Validate the per-service flags; return the port of every endpoint."""
    ports: Dict[str, int] = {}
    for service in flavour.endpoints:
        prefix = service.lower()
        port = values[PORT_FLAG[service]]
        if not 1 <= port <= 65535:
            raise ConfigError(f"{prefix}-service: invalid port")
        ports[service] = port
        if values[f"server-{prefix}-data-fetch-maxpagesize"] <= 0:
            raise ConfigError(f"{prefix}-service: invalid data fetch max page size")
        if service == SERVICE_PAP:
            if values["server-pap-authstar-max-object-size"] <= 0:
                raise ConfigError("pap-service: invalid authstar max object size")
            enabled = values["server-pap-tx-cleanup-enabled"]
            if enabled and values["server-pap-tx-cleanup-interval"] <= 0:
                raise ConfigError("pap-service: invalid transaction cleanup interval")
            if enabled and values["server-pap-tx-max-lifetime"] <= 0:
                raise ConfigError("pap-service: invalid transaction max lifetime")
    return ports


def build_settings(flavour: Flavour, values: Dict[str, Any], storage_engine: str) -> ServerSettings:
    """Validate resolved values in the real order; raise ConfigError with the real texts."""
    log_level = _validate_common(values)
    appdata = values["server-appdata"]
    mode = values["server-tls-mode"]
    if mode not in TLS_MODES:
        raise ConfigError(f"tls: invalid mode {go_quote(mode)}, must be one of: none, tls, mtls, external, spiffe")
    auto_dir = values["server-tls-auto-cert-dir"]
    cert, key = values["server-tls-cert-file"], values["server-tls-key-file"]
    if mode == "tls" and not cert and not key and not auto_dir:
        auto_dir = os.path.normpath(os.path.join(appdata, "certs"))
    tls = TlsSettings(mode, cert, key, values["server-tls-ca-file"], auto_dir, values["server-tls-spiffe-socket-path"])
    tls.validate()
    db_path = None
    if storage_engine == "SQLITE":
        db_name = str(values["storage-engine-sqlite-dbname"]).lower()
        if not db_name.endswith(".db"):
            db_name += ".db"
        db_path = os.path.join(appdata, db_name)
    ports = _validate_services(flavour, values)
    pap = SERVICE_PAP in flavour.endpoints
    return ServerSettings(
        log_level=log_level,
        debug=bool(values["debug"]),
        appdata=appdata,
        otel_enabled=bool(values["server-otel-enabled"]),
        tls=tls,
        db_path=db_path,
        ports=ports,
        tx_cleanup_enabled=pap and bool(values["server-pap-tx-cleanup-enabled"]),
        tx_cleanup_interval_ns=values["server-pap-tx-cleanup-interval"] if pap else 0,
        tx_max_lifetime_ns=values["server-pap-tx-max-lifetime"] if pap else 0,
    )


# --------------------------------------------------------------------------------------------- logging


class JsonLogger:
    """A small zap-production-like JSON logger writing to stderr."""

    def __init__(self, level: str, stream: Any = None) -> None:
        self._threshold = LOG_LEVELS.index(level)
        self._stream = stream if stream is not None else sys.stderr

    def log(self, level: str, msg: str, **fields: Any) -> None:
        """Write one line if ``level`` passes the threshold."""
        if LOG_LEVELS.index(level) < self._threshold:
            return
        record = {"level": level.lower(), "ts": round(time.time(), 6), "logger": "permguard-double", "msg": msg}
        record.update(fields)
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()

    def debug(self, msg: str, **fields: Any) -> None:
        """Log at DEBUG."""
        self.log("DEBUG", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        """Log at INFO."""
        self.log("INFO", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        """Log at WARN."""
        self.log("WARN", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        """Log at ERROR."""
        self.log("ERROR", msg, **fields)


# --------------------------------------------------------------------------------------------- PEM and key pairs

_PEM_RE = re.compile(
    rb"-----BEGIN ([^\r\n-]+)-----\r?\n(.*?)-----END \1-----",
    re.DOTALL,
)


@dataclass(frozen=True)
class PemBlock:
    """One decoded PEM block."""

    type: str
    headers: bool
    der: bytes


def decode_pem_blocks(data: bytes) -> List[PemBlock]:
    """Decode every PEM block of ``data`` (undecodable blocks are skipped, as Go's pem.Decode does)."""
    blocks = []
    for match in _PEM_RE.finditer(data):
        body = match.group(2)
        lines = body.splitlines()
        has_headers = any(b":" in line for line in lines)
        b64 = b"".join(line.strip() for line in lines if b":" not in line)
        try:
            der = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            continue
        blocks.append(PemBlock(match.group(1).decode("ascii", "replace"), has_headers, der))
    return blocks


def pem_encode(block_type: str, der: bytes) -> bytes:
    """Encode DER as PEM with 64-column lines, as Go's pem.EncodeToMemory does."""
    b64 = base64.b64encode(der)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        b"-----BEGIN "
        + block_type.encode()
        + b"-----\n"
        + b"\n".join(lines)
        + b"\n-----END "
        + (block_type.encode() + b"-----\n")
    )


def go_read_file(path: str) -> bytes:
    """Read a file; raise DoubleError with Go's os.ReadFile text on failure."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except IsADirectoryError:
        raise DoubleError(f"read {path}: is a directory") from None
    except OSError as exc:
        raise DoubleError(f"open {path}: {go_strerror(exc)}") from None


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, both as PEM bytes held in memory."""

    chain_pem: bytes
    key_pem: bytes


def _key_kind(key: Any) -> str:

    for kind, classes in (
        ("rsa", (rsa.RSAPublicKey, rsa.RSAPrivateKey)),
        ("ecdsa", (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)),
        ("ed25519", (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)),
    ):
        if isinstance(key, classes):
            return kind
    return type(key).__name__


def x509_key_pair(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """Check a certificate/key pair like Go's ``tls.X509KeyPair``; raise DoubleError with Go's texts."""
    cert_blocks = decode_pem_blocks(cert_pem)
    certs = [b.der for b in cert_blocks if b.type == "CERTIFICATE"]
    if not certs:
        skipped = [b.type for b in cert_blocks]
        if not skipped:
            raise DoubleError("tls: failed to find any PEM data in certificate input")
        if len(skipped) == 1 and skipped[0].endswith("PRIVATE KEY"):
            raise DoubleError(
                "tls: failed to find certificate PEM data in certificate input, but did find a private key; "
                "PEM inputs may have been switched"
            )
        raise DoubleError(
            'tls: failed to find "CERTIFICATE" PEM block in certificate input after skipping PEM blocks of the '
            f"following types: [{' '.join(skipped)}]"
        )
    key_blocks = decode_pem_blocks(key_pem)
    key_block = next((b for b in key_blocks if b.type == "PRIVATE KEY" or b.type.endswith(" PRIVATE KEY")), None)
    if key_block is None:
        skipped = [b.type for b in key_blocks]
        if not skipped:
            raise DoubleError("tls: failed to find any PEM data in key input")
        if len(skipped) == 1 and skipped[0] == "CERTIFICATE":
            raise DoubleError("tls: found a certificate rather than a key in the PEM for the private key")
        raise DoubleError(
            'tls: failed to find PEM block with type ending in "PRIVATE KEY" in key input after skipping PEM '
            f"blocks of the following types: [{' '.join(skipped)}]"
        )
    try:
        leaf = x509.load_der_x509_certificate(certs[0])
    except ValueError:
        raise DoubleError("x509: malformed certificate") from None
    try:
        private_key = serialization.load_der_private_key(key_block.der, password=None)
    except (ValueError, TypeError):
        raise DoubleError("tls: failed to parse private key") from None
    public = leaf.public_key()
    if _key_kind(public) != _key_kind(private_key):
        raise DoubleError("tls: private key type does not match public key type")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if public.public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        raise DoubleError("tls: private key does not match public key")
    chain = b"".join(pem_encode("CERTIFICATE", der) for der in certs)
    key_out = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(chain, key_out)


def load_x509_key_pair(cert_file: str, key_file: str) -> KeyPair:
    """Read and check a key pair like Go's ``tls.LoadX509KeyPair`` (files read once)."""
    cert_pem = go_read_file(cert_file)
    key_pem = go_read_file(key_file)
    return x509_key_pair(cert_pem, key_pem)


def load_ca_bundle(ca_file: str) -> bytes:
    """Read a CA file like the real loadCAPool; return the usable certificates as PEM."""
    try:
        data = go_read_file(ca_file)
    except DoubleError as exc:
        raise StartupError(f"tls: failed to read CA file {ca_file}: {exc}") from None
    good = []
    for block in decode_pem_blocks(data):
        if block.type != "CERTIFICATE" or block.headers:
            continue
        try:
            x509.load_der_x509_certificate(block.der)
        except ValueError:
            continue
        good.append(pem_encode("CERTIFICATE", block.der))
    if not good:
        raise StartupError(f"tls: failed to parse CA certificates from {ca_file}")
    return b"".join(good)


# --------------------------------------------------------------------------------------------- auto certificates

AUTO_CA_CN = "PermGuard Auto CA"
AUTO_SERVER_CN = "PermGuard Server"
AUTO_ORG = "PermGuard"
AUTO_FILES = ("ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem")


def _mkdir_all(path: str, mode: int) -> None:
    """Create ``path`` and missing parents with ``mode`` (like Go's os.MkdirAll); raise DoubleError."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.normpath(path))
    if parent and parent != path and not os.path.isdir(parent):
        _mkdir_all(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise DoubleError(f"mkdir {path}: not a directory") from None
    except OSError as exc:
        raise DoubleError(f"mkdir {path}: {go_strerror(exc)}") from None


def _write_pem_file(path: str, block_type: str, der: bytes) -> None:
    """Write like Go's os.WriteFile(path, data, 0o600): create 0600 (umask applies), truncate an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise DoubleError(f"tls: failed to write {path}: open {path}: {go_strerror(exc)}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem_encode(block_type, der))


def _serial() -> int:
    return secrets.randbelow((1 << 128) - 1) + 1


def generate_auto_cert(directory: str) -> None:
    """Generate a new CA and server certificate in ``directory`` as the real server does at every start."""
    try:
        _mkdir_all(directory, 0o700)
    except DoubleError as exc:
        raise DoubleError(f"tls: failed to create auto-cert directory: {exc}") from None
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

    def subject(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, AUTO_ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    sec1 = serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # Go >= 1.25 (the server is built with 1.26) fills a CA's missing SubjectKeyId with the first 160 bits of
    # the SHA-256 of the subjectPublicKey BIT STRING (an uncompressed EC point here).
    ca_point = ca_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ca_ski = x509.SubjectKeyIdentifier(hashlib.sha256(ca_point).digest()[:20])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject(AUTO_CA_CN))
        .issuer_name(subject(AUTO_CA_CN))
        .public_key(ca_key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pem_file(os.path.join(directory, "ca-cert.pem"), "CERTIFICATE", ca_cert.public_bytes(sec1[0]))
    _write_pem_file(os.path.join(directory, "ca-key.pem"), "EC PRIVATE KEY", ca_key.private_bytes(*sec1))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(subject(AUTO_SERVER_CN))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("permguard"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pem_file(os.path.join(directory, "server-cert.pem"), "CERTIFICATE", server_cert.public_bytes(sec1[0]))
    _write_pem_file(os.path.join(directory, "server-key.pem"), "EC PRIVATE KEY", server_key.private_bytes(*sec1))


# --------------------------------------------------------------------------------------------- SSL contexts


def new_server_context() -> ssl.SSLContext:
    """Return a server context with the settings shared by every TLS mode: TLS 1.2 minimum, ALPN h2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


def load_key_pair_into(context: ssl.SSLContext, pair: KeyPair) -> None:
    """Load an in-memory key pair into ``context`` (through a private temporary directory)."""
    workdir = tempfile.mkdtemp(prefix="permguard-double-")
    try:
        cert_path = os.path.join(workdir, "chain.pem")
        key_path = os.path.join(workdir, "key.pem")
        for path, data in ((cert_path, pair.chain_pem), (key_path, pair.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_server_context(pair: KeyPair, client_ca_pem: Optional[bytes] = None) -> ssl.SSLContext:
    """Build a server context; with ``client_ca_pem`` a verified client certificate is required."""
    context = new_server_context()
    try:
        load_key_pair_into(context, pair)
    except ssl.SSLError as exc:
        raise StartupError(f"tls: failed to load server certificate: {exc}") from None
    if client_ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        # Go trusts every certificate of the pool as an anchor, intermediates included.
        context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    return context


class RotatingServerContext:
    """An SSL context whose certificate material can be swapped in memory.

    Every handshake starts on ``outer``; its SNI callback switches the connection to the current inner context, so
    ``update()`` takes effect at the next handshake without restarting the listeners (how a SPIFFE X509 source will
    rotate SVIDs and bundles).
    """

    def __init__(self, initial: ssl.SSLContext) -> None:
        """Start with ``initial`` as the current material."""
        self._current = initial
        self.outer = initial
        self.outer.sni_callback = self._select

    def update(self, context: ssl.SSLContext) -> None:
        """Serve ``context`` from the next handshake on."""
        context.sni_callback = self._select
        self._current = context

    @property
    def current(self) -> ssl.SSLContext:
        """Return the context new handshakes use."""
        return self._current

    def _select(self, ssl_object: Any, server_name: Optional[str], context: ssl.SSLContext) -> None:
        if ssl_object.context is not self._current:
            ssl_object.context = self._current


# --------------------------------------------------------------------------------------------- credentials


class CredentialsProvider(abc.ABC):
    """Transport credentials of every port: built at start-up, closed at shutdown."""

    mode = "none"

    @abc.abstractmethod
    async def start(self, log: JsonLogger) -> None:
        """Build the credentials; may block until material is available; raise StartupError."""

    @abc.abstractmethod
    def server_context(self) -> Optional[ssl.SSLContext]:
        """Return the SSL context to serve with, or None for plaintext."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a Workload API stream, for example)."""

    def peer_check(self) -> Optional[Callable[[Optional[bytes]], Optional[str]]]:
        """Return a check of the client certificate (DER) run after the handshake: an error text, or None if OK."""
        return None


class PlaintextCredentials(CredentialsProvider):
    """Mode none: plaintext HTTP/2."""

    async def start(self, log: JsonLogger) -> None:
        """Nothing to build."""

    def server_context(self) -> Optional[ssl.SSLContext]:
        """Return None: no TLS."""
        return None


class FileTlsCredentials(CredentialsProvider):
    """Modes tls, mtls and external: certificate files read once at start-up."""

    def __init__(self, settings: TlsSettings) -> None:
        """Keep the TLS settings."""
        self.mode = settings.mode
        self._settings = settings
        self._context: Optional[ssl.SSLContext] = None

    async def start(self, log: JsonLogger) -> None:
        """Generate auto certificates if needed, load the key pair and the client CA."""
        settings = self._settings
        cert_file, key_file = settings.cert_file, settings.key_file
        if settings.mode == "tls" and not cert_file and settings.auto_cert_dir:
            try:
                generate_auto_cert(settings.auto_cert_dir)
            except DoubleError as exc:
                raise StartupError(f"tls: failed to generate auto certificates: {exc}") from None
            log.info("TLS auto-certificates generated", dir=settings.auto_cert_dir)
            cert_file = os.path.join(settings.auto_cert_dir, "server-cert.pem")
            key_file = os.path.join(settings.auto_cert_dir, "server-key.pem")
        try:
            pair = load_x509_key_pair(cert_file, key_file)
        except DoubleError as exc:
            raise StartupError(f"tls: failed to load server certificate: {exc}") from None
        client_ca = load_ca_bundle(settings.ca_file) if settings.mode in ("mtls", "external") else None
        self._context = build_server_context(pair, client_ca)

    def server_context(self) -> Optional[ssl.SSLContext]:
        """Return the context built at start-up."""
        return self._context


class SpiffeAddressError(DoubleError):
    """The Workload API address is missing or malformed (go-spiffe's and grpc-go's texts)."""


def spiffe_target(address: str) -> str:
    """Validate a Workload API address as go-spiffe's TargetFromAddress does (Unix platforms)."""
    if address.startswith(":"):
        raise SpiffeAddressError(
            f"workload endpoint socket is not a valid URI: parse {go_quote(address)}: missing protocol scheme"
        )
    parts = urllib.parse.urlsplit(address)
    scheme = parts.scheme.lower()
    rest = address.split(":", 1)[1] if ":" in address else ""
    opaque = bool(scheme) and not rest.startswith("/")
    has_user = "@" in parts.netloc
    if scheme == "tcp":
        checks = (
            (opaque, "workload endpoint tcp socket URI must not be opaque"),
            (has_user, "workload endpoint tcp socket URI must not include user info"),
            (not parts.netloc, "workload endpoint tcp socket URI must include a host"),
            (bool(parts.path), "workload endpoint tcp socket URI must not include a path"),
            (bool(parts.query), "workload endpoint tcp socket URI must not include query values"),
            (bool(parts.fragment), "workload endpoint tcp socket URI must not include a fragment"),
        )
        for failed, message in checks:
            if failed:
                raise SpiffeAddressError(message)
        try:
            ipaddress.ip_address((parts.hostname or "").strip("[]"))
        except ValueError:
            raise SpiffeAddressError("workload endpoint tcp socket URI host component must be an IP:port") from None
        if parts.port is None:
            raise SpiffeAddressError("workload endpoint tcp socket URI host component must include a port")
        return parts.netloc
    if scheme == "unix":
        checks = (
            (opaque, "workload endpoint unix socket URI must not be opaque"),
            (has_user, "workload endpoint unix socket URI must not include user info"),
            (not parts.netloc and not parts.path, "workload endpoint unix socket URI must include a path"),
            (bool(parts.query), "workload endpoint unix socket URI must not include query values"),
            (bool(parts.fragment), "workload endpoint unix socket URI must not include a fragment"),
        )
        for failed, message in checks:
            if failed:
                raise SpiffeAddressError(message)
        return address
    raise SpiffeAddressError('workload endpoint socket URI must have a "tcp" or "unix" scheme')


def spiffe_address(socket_path: str, environ: Dict[str, str]) -> str:
    """Return the Workload API address: ``unix://`` + the flag's bare path, else SPIFFE_ENDPOINT_SOCKET."""
    if socket_path:
        return "unix://" + socket_path
    if "SPIFFE_ENDPOINT_SOCKET" not in environ:
        raise SpiffeAddressError("workload endpoint socket address is not configured")
    return environ["SPIFFE_ENDPOINT_SOCKET"]


@dataclass(frozen=True)
class WorkloadApiTarget:
    """Where the Workload API client dials: a Unix socket path, or a TCP host and port."""

    address: str
    path: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None

    def describe(self) -> str:
        """Return Go's ``dial <network> <address>`` operand."""
        return f"unix {self.path}" if self.path is not None else f"tcp {self.host}:{self.port}"


def spiffe_dial_target(address: str) -> WorkloadApiTarget:
    """Resolve a validated address the way grpc-go's resolvers do when go-spiffe dials it.

    grpc-go's ``unix`` resolver refuses an authority: ``unix://`` + a relative path (``unix://run/agent.sock``) or
    + a URI (``unix://unix:///run/agent.sock``, a ``unix://`` value given to the bare-path flag) fails the dial,
    so the X509 source is never created.
    """
    target = spiffe_target(address)
    parts = urllib.parse.urlsplit(address)
    if parts.scheme.lower() == "unix":
        if parts.netloc:
            raise SpiffeAddressError(
                "failed to exit idle mode: failed to start resolver: invalid (non-empty) authority: " + parts.netloc
            )
        return WorkloadApiTarget(address, path=urllib.parse.unquote(parts.path))
    host, _colon, port = target.rpartition(":")
    return WorkloadApiTarget(address, host=host.strip("[]"), port=int(port))


# SPIFFE IDs and X509-SVIDs, checked as go-spiffe's spiffeid and x509svid packages do (their error texts).

SPIFFE_SCHEME = "spiffe://"
_TRUST_DOMAIN_CHARS_RE = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT_CHARS_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_BAD_TRUST_DOMAIN_CHAR = (
    "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
)


def spiffe_id_trust_domain(spiffe_id: str) -> str:
    """Validate a SPIFFE ID like ``spiffeid.FromString``; return its trust domain; DoubleError with Go's text."""
    if not spiffe_id:
        raise DoubleError("cannot be empty")
    if not spiffe_id.startswith(SPIFFE_SCHEME):
        raise DoubleError("scheme is missing or invalid")
    domain, slash, path = spiffe_id[len(SPIFFE_SCHEME) :].partition("/")
    if not domain:
        raise DoubleError("trust domain is missing")
    if not _TRUST_DOMAIN_CHARS_RE.match(domain):
        raise DoubleError(_BAD_TRUST_DOMAIN_CHAR)
    if slash:
        segments = path.split("/")
        for index, segment in enumerate(segments):
            if not segment:
                last = index == len(segments) - 1
                raise DoubleError("path cannot have a trailing slash" if last else "path cannot contain empty segments")
            if segment in (".", ".."):
                raise DoubleError("path cannot contain dot segments")
            if not _PATH_SEGMENT_CHARS_RE.match(segment):
                raise DoubleError(
                    "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
                )
    return domain


def trust_domain_from_string(text: str) -> str:
    """Parse a trust domain name or a SPIFFE ID's trust domain like ``spiffeid.TrustDomainFromString``."""
    if ":/" in text:
        return spiffe_id_trust_domain(text)
    if not text:
        raise DoubleError("trust domain is missing")
    if not _TRUST_DOMAIN_CHARS_RE.match(text):
        raise DoubleError(_BAD_TRUST_DOMAIN_CHAR)
    return text


def split_der_certificates(data: bytes) -> List[bytes]:
    """Split concatenated DER certificates (the Workload API's ``x509_svid`` and ``bundle`` fields)."""
    out = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError("x509: malformed certificate")
        first = data[pos + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            count = first & 0x7F
            if not 0 < count <= 4 or pos + 2 + count > len(data):
                raise ValueError("x509: malformed certificate")
            length, header = int.from_bytes(data[pos + 2 : pos + 2 + count], "big"), 2 + count
        end = pos + header + length
        if end > len(data):
            raise ValueError("x509: malformed certificate")
        out.append(data[pos:end])
        pos = end
    return out


def _parse_der_certificates(data: bytes) -> List[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(der) for der in split_der_certificates(data)]
    except ValueError:
        raise DoubleError("x509: malformed certificate") from None


def _uri_sans(cert: x509.Certificate) -> List[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(sans.get_values_for_type(x509.UniformResourceIdentifier))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _key_usage(cert: x509.Certificate) -> Optional[x509.KeyUsage]:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def leaf_spiffe_id(cert: x509.Certificate) -> str:
    """Return the one SPIFFE ID of a leaf, as ``x509svid.IDFromCert``; DoubleError with Go's text."""
    uris = _uri_sans(cert)
    if not uris:
        raise DoubleError("certificate contains no URI SAN")
    if len(uris) > 1:
        raise DoubleError("certificate contains more than one URI SAN")
    spiffe_id_trust_domain(uris[0])
    return uris[0]


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_svid_certificates(certs: List[x509.Certificate]) -> str:
    """The certificate checks of ``x509svid.ParseRaw``; return the SPIFFE ID."""
    if not certs:
        raise DoubleError("no certificates found")
    leaf = certs[0]
    try:
        spiffe_id = leaf_spiffe_id(leaf)
    except DoubleError as exc:
        raise DoubleError(f"cannot get leaf certificate SPIFFE ID: {exc}") from None
    if _is_ca(leaf):
        raise DoubleError("leaf certificate must not have CA flag set to true")
    usage = _key_usage(leaf)
    if usage is None or not usage.digital_signature:
        raise DoubleError("leaf certificate must have 'digitalSignature' set as key usage")
    if usage.key_cert_sign:
        raise DoubleError("leaf certificate must not have 'keyCertSign' set as key usage")
    if usage.crl_sign:
        raise DoubleError("leaf certificate must not have 'cRLSign' set as key usage")
    for signing in certs[1:]:
        if not _is_ca(signing):
            raise DoubleError("signing certificate must have CA flag set to true")
        signing_usage = _key_usage(signing)
        if signing_usage is None or not signing_usage.key_cert_sign:
            raise DoubleError("signing certificate must have 'keyCertSign' set as key usage")
    return spiffe_id


@dataclass(frozen=True)
class X509Svid:
    """One X509-SVID of a Workload API response: SPIFFE ID, chain (leaf first), key pair (PEM) and hint."""

    spiffe_id: str
    chain: Tuple[x509.Certificate, ...]
    pair: KeyPair
    hint: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        """Return the leaf certificate."""
        return self.chain[0]


def parse_x509_svid(chain_der: bytes, key_der: bytes, hint: str = "") -> X509Svid:
    """Parse and check an X509-SVID like ``x509svid.ParseRaw``; DoubleError with go-spiffe's texts."""
    try:
        certs = _parse_der_certificates(chain_der)
    except DoubleError as exc:
        raise DoubleError(f"x509svid: cannot parse DER encoded certificate: {exc}") from None
    try:
        key = serialization.load_der_private_key(key_der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise DoubleError("x509svid: cannot parse DER encoded private key: x509: failed to parse private key") from None
    try:
        spiffe_id = _check_svid_certificates(certs)
    except DoubleError as exc:
        raise DoubleError(f"x509svid: certificate validation failed: {exc}") from None
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise DoubleError("x509svid: private key validation failed: leaf certificate does not match private key")
    chain_pem = b"".join(pem_encode("CERTIFICATE", c.public_bytes(serialization.Encoding.DER)) for c in certs)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return X509Svid(spiffe_id, tuple(certs), KeyPair(chain_pem, key_pem), hint)


@dataclass(frozen=True)
class X509Context:
    """What the X509 source holds: the SVIDs of the last response and the X.509 bundles by trust domain."""

    svids: Tuple[X509Svid, ...]
    bundles: Dict[str, Tuple[x509.Certificate, ...]]

    @property
    def default_svid(self) -> X509Svid:
        """Return the SVID served: the first of the response, as go-spiffe's X509Source picks it."""
        return self.svids[0]

    def authorities_pem(self) -> bytes:
        """Return every X.509 authority of every trust domain, as PEM (each certificate once)."""
        seen = set()
        out = []
        for certs in self.bundles.values():
            for cert in certs:
                der = cert.public_bytes(serialization.Encoding.DER)
                if der not in seen:
                    seen.add(der)
                    out.append(pem_encode("CERTIFICATE", der))
        return b"".join(out)

    def fingerprint(self) -> Tuple[bytes, bytes, Tuple[Tuple[str, bytes], ...]]:
        """Return what decides whether a new context changes the served material."""
        svid = self.default_svid
        bundles = tuple(
            (td, b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs))
            for td, certs in sorted(self.bundles.items())
        )
        return svid.pair.chain_pem, svid.pair.key_pem, bundles


def parse_x509_context(response: Any) -> X509Context:
    """Turn an ``X509SVIDResponse`` into an X509Context like go-spiffe's parseX509Context."""
    if not response.svids:
        raise DoubleError("no SVIDs in response")
    hints = set()
    svids = []
    for item in response.svids:
        if item.hint and item.hint in hints:
            continue  # the first SVID of a hint wins
        hints.add(item.hint)
        svids.append(parse_x509_svid(item.x509_svid, item.x509_svid_key, item.hint))
    bundles: Dict[str, Tuple[x509.Certificate, ...]] = {}
    sources = [(item.spiffe_id, item.bundle) for item in response.svids]
    sources.extend(sorted(response.federated_bundles.items()))
    for owner, der in sources:
        domain = trust_domain_from_string(owner)
        bundles[domain] = tuple(_parse_der_certificates(der))
    return X509Context(tuple(svids), bundles)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Return True if ``issuer``'s key verifies ``cert``'s signature (ECDSA, RSA PKCS#1 v1.5, Ed25519)."""
    public = issuer.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            hash_algorithm = cert.signature_hash_algorithm
            if hash_algorithm is None:
                return False
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hash_algorithm)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _leaf_problem(leaf: x509.Certificate) -> Optional[str]:
    usage = _key_usage(leaf)
    if _is_ca(leaf):
        return "x509svid: leaf certificate with CA flag set to true"
    if usage is not None and usage.key_cert_sign:
        return "x509svid: leaf certificate with KeyCertSign key usage"
    if usage is not None and usage.crl_sign:
        return "x509svid: leaf certificate with KeyCrlSign key usage"
    return None


def _parse_peer_leaf(der: Optional[bytes]) -> Tuple[x509.Certificate, str]:
    """Parse the client leaf and its SPIFFE ID; DoubleError with go-spiffe's text."""
    if der is None:
        raise DoubleError("tls: client didn't provide a certificate")
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        raise DoubleError("x509svid: unable to parse certificate: x509: malformed certificate") from None
    try:
        return leaf, leaf_spiffe_id(leaf)
    except DoubleError as exc:
        raise DoubleError(f"x509svid: could not get leaf SPIFFE ID: {exc}") from None


def verify_peer_svid(der: Optional[bytes], context: X509Context) -> Optional[str]:
    """Check a client certificate as go-spiffe's ``x509svid.Verify`` + ``AuthorizeAny`` do; return Go's error.

    OpenSSL has already verified the chain against every authority of every trust domain. This adds what OpenSSL
    cannot express: exactly one URI SAN that is a SPIFFE ID, the leaf checks, a bundle for that ID's trust domain,
    and (for a leaf signed directly by an authority) an authority of THAT trust domain.
    """
    try:
        leaf, spiffe_id = _parse_peer_leaf(der)
    except DoubleError as exc:
        return str(exc)
    problem = _leaf_problem(leaf)
    if problem is not None:
        return problem
    domain = spiffe_id_trust_domain(spiffe_id)
    authorities = context.bundles.get(domain)
    if authorities is None:
        return f"x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain {go_quote(domain)}"
    anchors_named = [c for certs in context.bundles.values() for c in certs if c.subject == leaf.issuer]
    own = [c for c in authorities if c.subject == leaf.issuer]
    if anchors_named and not any(_signed_by(leaf, anchor) for anchor in own):
        return "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"
    return None


# The Workload API client: FetchX509SVID streamed with grpclib, retried as go-spiffe's client retries it.

WORKLOAD_API_FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"
WORKLOAD_API_HEADER = ("workload.spiffe.io", "true")
WATCH_BACKOFF_STEP = 1.0  # go-spiffe's linear backoff: 1 s, 2 s, 3 s ... reset by every message
WATCH_BACKOFF_MAX = 30.0
_UNAVAILABLE = "rpc error: code = Unavailable desc = "


def _connect_error(exc: OSError) -> str:
    return f"connect: {go_strerror(exc)}"


def _workload_messages() -> Dict[str, Any]:
    """Describe the X509-SVID messages of workload.proto in code (a private pool) and return their classes."""
    field_proto = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field_proto.LABEL_OPTIONAL, field_proto.LABEL_REPEATED
    fdp = descriptor_pb2.FileDescriptorProto(name="permguard_double/workload.proto", syntax="proto3")
    fdp.message_type.add(name="X509SVIDRequest")
    svid = fdp.message_type.add(name="X509SVID")
    for number, name, kind in (
        (1, "spiffe_id", field_proto.TYPE_STRING),
        (2, "x509_svid", field_proto.TYPE_BYTES),
        (3, "x509_svid_key", field_proto.TYPE_BYTES),
        (4, "bundle", field_proto.TYPE_BYTES),
        (5, "hint", field_proto.TYPE_STRING),
    ):
        svid.field.add(name=name, number=number, label=optional, type=kind)
    response = fdp.message_type.add(name="X509SVIDResponse")
    response.field.add(name="svids", number=1, label=repeated, type=field_proto.TYPE_MESSAGE, type_name=".X509SVID")
    response.field.add(name="crl", number=2, label=repeated, type=field_proto.TYPE_BYTES)
    response.field.add(
        name="federated_bundles",
        number=3,
        label=repeated,
        type=field_proto.TYPE_MESSAGE,
        type_name=".X509SVIDResponse.FederatedBundlesEntry",
    )
    entry = response.nested_type.add(name="FederatedBundlesEntry")
    entry.field.add(name="key", number=1, label=optional, type=field_proto.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional, type=field_proto.TYPE_BYTES)
    entry.options.map_entry = True
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    get_message_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    factory = None if get_message_class is not None else message_factory.MessageFactory(pool)
    classes = {}
    for name in ("X509SVIDRequest", "X509SVID", "X509SVIDResponse"):
        descriptor = pool.FindMessageTypeByName(name)
        classes[name] = get_message_class(descriptor) if factory is None else factory.GetPrototype(descriptor)
    return classes


_WORKLOAD_MESSAGES = _workload_messages()
X509SVIDRequest = _WORKLOAD_MESSAGES["X509SVIDRequest"]
X509SVIDResponse = _WORKLOAD_MESSAGES["X509SVIDResponse"]


def go_grpc_code(status: Any) -> str:
    """Return grpc-go's name of a status code (``PermissionDenied``, ``Canceled``...)."""
    name = getattr(status, "name", str(status))
    if name == "CANCELLED":
        return "Canceled"
    return "".join(part.capitalize() for part in name.split("_"))


class WatchError(Exception):
    """A failed Workload API watch: the grpc-go status code name and grpc-go's error text."""

    def __init__(self, code: str, text: str) -> None:
        """Keep the code and the text."""
        super().__init__(text)
        self.code = code


def _user_label(uid: int) -> str:
    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return str(uid)


class WorkloadApiX509Source(abc.ABC):
    """Seam for a SPIFFE Workload API X509 source (SVIDs and trust bundles, rotated in memory)."""

    @abc.abstractmethod
    async def wait_first_update(self) -> X509Context:
        """Block until the first X509 context arrives; raise StartupError when the source cannot be created."""

    @abc.abstractmethod
    def on_update(self, callback: Callable[[X509Context], None]) -> None:
        """Register a callback for every later X509 context (SVID or bundle rotations)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching the Workload API."""


class WorkloadApiWatcher(WorkloadApiX509Source):
    """go-spiffe's X509Source in asyncio: one FetchX509SVID stream, re-opened with a linear backoff on failure.

    Like ``workloadapi.NewX509Source`` with a context that never ends, the first update is awaited for ever while
    the agent is absent or answers PermissionDenied; only InvalidArgument and Canceled end the watch (and fail the
    start when no update came yet). Every message replaces the whole context and resets the backoff; a message that
    does not parse is skipped. Unlike go-spiffe, which logs nothing by default, the double logs what it waits for.
    """

    def __init__(self, target: WorkloadApiTarget, log: JsonLogger) -> None:
        """Keep where to dial and the logger."""
        self._target = target
        self._log = log
        self._callbacks: List[Callable[[X509Context], None]] = []
        self._first: Optional[asyncio.Future] = None
        self._task: Optional[asyncio.Task] = None
        self._channel: Optional[Channel] = None
        self._failures = 0
        self._updates = 0
        self._closed = False

    async def wait_first_update(self) -> X509Context:
        """Start the watch and wait for its first X509 context."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = loop.create_task(self._run())
        return await self._first

    def on_update(self, callback: Callable[[X509Context], None]) -> None:
        """Call ``callback`` with every later X509 context."""
        self._callbacks.append(callback)

    def close(self) -> None:
        """Cancel the watch and close the connection."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _new_channel(self) -> Channel:
        if self._target.path is not None:
            return Channel(path=self._target.path)
        return Channel(self._target.host, self._target.port)

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._watch_once()
                failure = WatchError("Unknown", "EOF")  # the agent ended the stream with OK: Recv gives io.EOF
            except WatchError as exc:
                failure = exc
            finally:
                if self._channel is not None:
                    self._channel.close()
                    self._channel = None
            if self._closed:
                return
            if failure.code in ("Canceled", "InvalidArgument"):
                self._log.error("SPIFFE Workload API watch canceled", error=str(failure), address=self._target.address)
                self._deliver_failure(failure)
                return
            delay = min(WATCH_BACKOFF_STEP * (self._failures + 1), WATCH_BACKOFF_MAX)
            self._failures += 1
            self._log_failure(failure, delay)
            await asyncio.sleep(delay)

    def _log_failure(self, failure: WatchError, delay: float) -> None:
        uid = os.geteuid()
        fields: Dict[str, Any] = {
            "address": self._target.address,
            "error": str(failure),
            "retry_in": go_format_duration(int(delay * 1e9)),
            "uid": uid,
        }
        if failure.code == "PermissionDenied":
            fields["hint"] = (
                f"the agent has no identity for this process (uid {_user_label(uid)}): register one, "
                f"for example with the selector unix:uid:{uid}"
            )
        if self._updates == 0:
            self._log.warn("Waiting for the first X509-SVID from the SPIFFE Workload API", **fields)
        else:
            self._log.warn("SPIFFE Workload API watch failed, keeping the last X509-SVID", **fields)

    def _deliver_failure(self, failure: WatchError) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_exception(StartupError(f"spiffe: failed to create X509 source: {failure}"))

    async def _watch_once(self) -> None:
        """Open one FetchX509SVID stream and consume it; raise WatchError with grpc-go's text when it fails."""
        self._channel = channel = self._new_channel()
        try:
            async with channel.request(
                WORKLOAD_API_FETCH_X509_SVID,
                Cardinality.UNARY_STREAM,
                X509SVIDRequest,
                X509SVIDResponse,
                metadata=[WORKLOAD_API_HEADER],
            ) as stream:
                await stream.send_message(X509SVIDRequest(), end=True)
                while True:
                    response = await stream.recv_message()
                    if response is None:
                        break
                    self._failures = 0
                    self._receive(response)
        except GRPCError as exc:
            raise WatchError(
                go_grpc_code(exc.status), f"rpc error: code = {go_grpc_code(exc.status)} desc = {exc.message or ''}"
            ) from None
        except StreamTerminatedError:
            raise WatchError(
                "Unavailable", "rpc error: code = Unavailable desc = error reading from server: EOF"
            ) from None
        except OSError as exc:
            raise WatchError(
                "Unavailable",
                "rpc error: code = Unavailable desc = connection error: desc = "
                + go_quote(
                    f"transport: Error while dialing: dial {self._target.describe()}: connect: {go_strerror(exc)}"
                ),
            ) from None
        except (ProtocolError, ValueError, RuntimeError) as exc:
            raise WatchError("Unavailable", f"{_UNAVAILABLE}{exc}") from None

    def _receive(self, response: Any) -> None:
        try:
            context = parse_x509_context(response)
        except DoubleError as exc:
            self._log.error("Failed to parse X509-SVID response", error=str(exc))
            return
        self._updates += 1
        if self._first is not None and not self._first.done():
            self._first.set_result(context)
            return
        for callback in list(self._callbacks):
            callback(context)


def build_spiffe_server_context(svid: X509Svid, authorities_pem: bytes) -> ssl.SSLContext:
    """Server context of mode spiffe: the SVID, a client certificate required and chained to the bundles."""
    context = new_server_context()
    try:
        load_key_pair_into(context, svid.pair)
    except ssl.SSLError as exc:
        raise DoubleError(f"tls: failed to load the X509-SVID: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED  # go-spiffe: RequireAnyClientCert + its own verification
    context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)  # every authority is an anchor, as in Go
    if authorities_pem:
        context.load_verify_locations(cadata=authorities_pem.decode("ascii"))
    return context


def _svid_fields(context: X509Context) -> Dict[str, Any]:
    svid = context.default_svid
    return {
        "spiffe_id": svid.spiffe_id,
        "serial": format(svid.leaf.serial_number, "x"),
        "not_after": _not_after(svid.leaf).isoformat(),
        "trust_domains": sorted(context.bundles),
        "authorities": sum(len(certs) for certs in context.bundles.values()),
    }


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


class SpiffeCredentials(CredentialsProvider):
    """Mode spiffe: mTLS from the Workload API, any SPIFFE ID the bundle vouches for accepted."""

    mode = "spiffe"

    def __init__(self, settings: TlsSettings, environ: Dict[str, str]) -> None:
        """Keep the settings and the environment (SPIFFE_ENDPOINT_SOCKET)."""
        self._settings = settings
        self._environ = environ
        self._source: Optional[WorkloadApiX509Source] = None
        self._rotating: Optional[RotatingServerContext] = None
        self._context: Optional[X509Context] = None
        self._log: Optional[JsonLogger] = None

    def _new_source(self, target: WorkloadApiTarget, log: JsonLogger) -> WorkloadApiX509Source:
        return WorkloadApiWatcher(target, log)

    async def start(self, log: JsonLogger) -> None:
        """Resolve the address, then block until the first X509-SVID arrives (for ever, like the real server)."""
        self._log = log
        try:
            address = spiffe_address(self._settings.spiffe_socket_path, self._environ)
            target = spiffe_dial_target(address)
        except SpiffeAddressError as exc:
            raise StartupError(f"spiffe: failed to create X509 source: {exc}") from None
        log.info("Creating the SPIFFE X509 source: waiting for the first X509-SVID", address=address)
        self._source = self._new_source(target, log)
        context = await self._source.wait_first_update()
        try:
            server_context = build_spiffe_server_context(context.default_svid, context.authorities_pem())
        except DoubleError as exc:
            raise StartupError(f"spiffe: {exc}") from None
        self._context = context
        self._rotating = RotatingServerContext(server_context)
        log.info("X509-SVID received from the SPIFFE Workload API", **_svid_fields(context))
        self._source.on_update(self._update)

    def _update(self, context: X509Context) -> None:
        """Serve a new X509 context from the next handshake on (in memory, no restart)."""
        log = self._log
        current = self._context
        if current is not None and current.fingerprint() == context.fingerprint():
            return
        try:
            server_context = build_spiffe_server_context(context.default_svid, context.authorities_pem())
        except DoubleError as exc:
            if log is not None:
                log.error("X509-SVID update could not be applied, keeping the previous one", error=str(exc))
            return
        assert self._rotating is not None
        self._rotating.update(server_context)
        self._context = context
        if log is not None:
            log.info("X509-SVID rotated in memory", **_svid_fields(context))

    def server_context(self) -> Optional[ssl.SSLContext]:
        """Return the outer (switching) context."""
        return self._rotating.outer if self._rotating else None

    def peer_check(self) -> Optional[Callable[[Optional[bytes]], Optional[str]]]:
        """Return the SPIFFE check of a client certificate against the current bundles."""

        def check(der: Optional[bytes]) -> Optional[str]:
            context = self._context
            return verify_peer_svid(der, context) if context is not None else "x509svid: no X.509 bundle yet"

        return check

    def close(self) -> None:
        """Close the X509 source."""
        if self._source is not None:
            self._source.close()


def credentials_for(settings: TlsSettings, environ: Dict[str, str]) -> CredentialsProvider:
    """Return the credentials provider of a TLS mode."""
    if settings.mode == "none":
        return PlaintextCredentials()
    if settings.mode == "spiffe":
        return SpiffeCredentials(settings, environ)
    return FileTlsCredentials(settings)


# --------------------------------------------------------------------------------------------- gRPC services


def _grpc_services(service: str, stopping: asyncio.Event) -> List[Any]:
    """Return the handlers of one port: the Permguard service stub, health and reflection."""
    service_name, methods = BUSINESS_SERVICES[service]

    class PermguardStub:
        """Every Permguard method of the port: UNIMPLEMENTED (no business logic in the double)."""

        def __mapping__(self) -> Dict[str, Any]:
            mapping = {}
            for method in methods:

                async def handler(stream: Any, _method: str = method) -> None:
                    raise GRPCError(
                        Status.UNIMPLEMENTED,
                        f"method {_method} is not implemented by the Permguard test double",
                    )

                mapping[f"/{service_name}/{method}"] = Handler(
                    handler, Cardinality.UNARY_UNARY, empty_pb2.Empty, empty_pb2.Empty
                )
            return mapping

    class GoLikeHealth(HealthBase):
        """grpc.health.v1.Health as grpc-go's health server answers it: only "" is known, SERVING."""

        async def Check(self, stream: Any) -> None:
            request = await stream.recv_message()
            if request is None or request.service != "":
                raise GRPCError(Status.NOT_FOUND, "unknown service")
            await stream.send_message(HealthCheckResponse(status=HealthCheckResponse.SERVING))

        async def Watch(self, stream: Any) -> None:
            request = await stream.recv_message()
            known = request is not None and request.service == ""
            status = HealthCheckResponse.SERVING if known else HealthCheckResponse.SERVICE_UNKNOWN
            await stream.send_message(HealthCheckResponse(status=status))
            await stopping.wait()

    handlers = ServerReflection.extend([PermguardStub(), GoLikeHealth()])
    # grpc-go's reflection also lists the reflection services themselves; grpclib's shares one name list.
    names = getattr(handlers[-1], "_service_names", None)
    if isinstance(names, list):
        names.extend(["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
        names.sort()
    return handlers


PeerCheck = Callable[[Optional[bytes]], Optional[str]]


class AlpnGuardProtocol(asyncio.Protocol):
    """Wraps grpclib's HTTP/2 protocol: drops a TLS connection that did not negotiate ALPN h2 (grpc-go >= 1.67).

    With ``peer_check`` (mode spiffe) the client certificate is also checked right after the handshake; a refused
    one closes the connection before any HTTP/2 byte is read.
    """

    def __init__(self, inner: asyncio.Protocol, log: JsonLogger, peer_check: Optional[PeerCheck] = None) -> None:
        """Wrap ``inner``."""
        self._inner = inner
        self._log = log
        self._peer_check = peer_check
        self._active = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Check ALPN (and the client certificate), then hand over to the HTTP/2 protocol."""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self._log.debug("closing a TLS connection without ALPN h2", peer=str(transport.get_extra_info("peername")))
            transport.abort()
            return
        if ssl_object is not None and self._peer_check is not None:
            error = self._peer_check(ssl_object.getpeercert(binary_form=True))
            if error is not None:
                peer = str(transport.get_extra_info("peername"))
                self._log.debug("TLS handshake error: client certificate refused", peer=peer, error=error)
                transport.abort()
                return
        self._active = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Forward data."""
        if self._active:
            self._inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        """Forward EOF."""
        return self._inner.eof_received() if self._active else None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        """Forward connection loss."""
        if self._active:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """Forward flow control."""
        if self._active:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forward flow control."""
        if self._active:
            self._inner.resume_writing()


class AlertFlushingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol, except that a failed handshake still sends its TLS alert.

    asyncio drops the alert OpenSSL wrote (for example TLS 1.3 ``certificate_required`` or ``unknown_ca``) and just
    closes the socket; Go's crypto/tls sends it, so the double flushes it before asyncio closes the connection.
    """

    def _on_handshake_complete(self, handshake_exc: Optional[BaseException]) -> None:
        if handshake_exc is not None:
            outgoing = getattr(self, "_outgoing", None)
            transport = getattr(self, "_transport", None)
            try:
                data = outgoing.read() if outgoing is not None else b""
                if data and transport is not None:
                    transport.write(data)
            except (OSError, ssl.SSLError, RuntimeError, AttributeError):
                pass
        super()._on_handshake_complete(handshake_exc)


def _make_server(
    handlers: List[Any], context: Optional[ssl.SSLContext], log: JsonLogger, peer_check: Optional[PeerCheck] = None
) -> Any:
    class GuardedServer(Server):
        """grpclib's server with the ALPN check and, in TLS modes, the alert-flushing TLS layer."""

        def _protocol_factory(self) -> Any:
            app = AlpnGuardProtocol(super()._protocol_factory(), log, peer_check)
            if context is None:
                return app
            return AlertFlushingSSLProtocol(asyncio.get_event_loop(), app, context, None, server_side=True)

    return GuardedServer(handlers)


# --------------------------------------------------------------------------------------------- listening


def listen(port: int, backlog: int = 128) -> socket.socket:
    """Listen on ``:port`` like Go: dual-stack ``::``, or ``0.0.0.0`` when IPv6 is unavailable.

    The socket is created with ``IPPROTO_TCP`` so grpclib sets ``TCP_NODELAY`` on accepted
    connections, as Go does by default (otherwise every answer waits for delayed ACKs).
    """
    sock = None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError as exc:
        if sock is not None:
            sock.close()
            sock = None
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT, errno.EINVAL):
            raise StartupError(f"listen tcp :{port}: bind: {go_strerror(exc)}") from None
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            sock.close()
            raise StartupError(f"listen tcp :{port}: bind: {go_strerror(exc)}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------------------------- database


class TxCleanupJob:
    """The PAP transaction-cleanup job: the only database access of the real server at start-up."""

    def __init__(self, db_path: str, interval_ns: int, max_lifetime_ns: int, log: JsonLogger) -> None:
        """Keep the database path and timings."""
        self._db_path = db_path
        self._interval = max(interval_ns / 1e9, 0.001)
        self._max_lifetime = max_lifetime_ns / 1e9
        self._log = log
        self._connection: Optional[sqlite3.Connection] = None

    def run_once(self) -> None:
        """Connect (once; SQLite creates a missing file), then look for stale transactions."""
        try:
            if self._connection is None:
                connection = sqlite3.connect(self._db_path, check_same_thread=False)
                try:
                    connection.execute("PRAGMA foreign_keys = ON;")
                except sqlite3.Error:
                    connection.close()
                    raise
                self._connection = connection
            threshold = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=self._max_lifetime)
            self._connection.execute(
                "SELECT txid, ledger_id, zone_id, started_at, status FROM transactions "
                "WHERE status = ? AND started_at < ?",
                ("pending", threshold.isoformat()),
            ).fetchall()
        except sqlite3.Error as exc:
            self._log.error("Transaction cleanup failed", error=f"storage: {exc}", db=self._db_path)

    async def run(self) -> None:
        """Run now, then at every interval."""
        while True:
            self.run_once()
            await asyncio.sleep(self._interval)

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --------------------------------------------------------------------------------------------- serving


async def serve(
    flavour: Flavour,
    settings: ServerSettings,
    credentials: CredentialsProvider,
    log: JsonLogger,
) -> None:
    """Start every endpoint and block until SIGTERM or SIGINT; raise StartupError on failure."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: log.debug("asyncio: " + str(ctx.get("message")), detail=str(ctx)))
    log.info("Bootstrapper is starting the server")
    if settings.otel_enabled:
        log.warn("OpenTelemetry is not emulated by the Permguard test double")

    # The real server subscribes to SIGTERM/SIGINT only once its credentials are built: a signal that arrives
    # before (mode spiffe blocks there until the first X509-SVID) kills it with Go's default action.
    stopping = asyncio.Event()
    phase = {"starting": True}

    def on_signal(signum: int) -> None:
        if phase["starting"]:
            _die_by_signal(signum, log)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    context = await _start_credentials(settings, credentials, log)
    phase["starting"] = False

    sockets = _listen_all(flavour, settings, log)
    servers = []
    for service in flavour.endpoints:
        server = _make_server(_grpc_services(service, stopping), context, log, credentials.peer_check())
        await server.start(sock=sockets[service])
        servers.append(server)
        family = "ipv6+ipv4" if sockets[service].family == socket.AF_INET6 else "ipv4"
        log.info(f"{service}: Service is serving", port=settings.ports[service], tls_mode=settings.tls.mode, net=family)

    job: Optional[TxCleanupJob] = None
    job_task: Optional[asyncio.Task[None]] = None
    if settings.tx_cleanup_enabled and settings.db_path:
        job = TxCleanupJob(settings.db_path, settings.tx_cleanup_interval_ns, settings.tx_max_lifetime_ns, log)
        job_task = loop.create_task(job.run())

    await stopping.wait()
    log.info("Bootstrapper is stopping the server")
    if job_task is not None:
        job_task.cancel()
    for server in servers:
        server.close()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), timeout=5)
    except asyncio.TimeoutError:
        log.warn("Bootstrapper could not execute the GracefulStop successfully")
    credentials.close()
    if job is not None:
        job.close()
    log.info("Bootstrapper has stopped the server")


def _die_by_signal(signum: int, log: JsonLogger) -> None:
    """Terminate as a Go program without a signal subscription does: killed by the signal itself."""
    log.info("Bootstrapper received a signal before serving: terminated by it", signal=signal.Signals(signum).name)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # pragma: no cover - the signal ends the process first
    os._exit(128 + signum)  # pragma: no cover


async def _start_credentials(
    settings: ServerSettings, credentials: CredentialsProvider, log: JsonLogger
) -> Optional[ssl.SSLContext]:
    """Build the transport credentials; log and re-raise a StartupError."""
    try:
        await credentials.start(log)
    except StartupError as exc:
        log.error("Bootstrapper cannot initialize TLS credentials", error=str(exc))
        raise
    if settings.tls.mode != "none":
        log.info("TLS enabled", mode=settings.tls.mode)
    return credentials.server_context()


def _listen_all(flavour: Flavour, settings: ServerSettings, log: JsonLogger) -> Dict[str, socket.socket]:
    """Bind every endpoint's port in order; on failure close what was bound and raise StartupError."""
    sockets: Dict[str, socket.socket] = {}
    try:
        for service in flavour.endpoints:
            sockets[service] = listen(settings.ports[service])
    except StartupError as exc:
        for sock in sockets.values():
            sock.close()
        log.error("Endpoint cannot listen on port", error=str(exc))
        log.error("Bootstrapper cannot serve the host", error=str(exc))
        raise
    return sockets


def _flavour_from_argv0(argv0: str) -> Flavour:
    return FLAVOURS.get(os.path.basename(argv0), FLAVOURS[DEFAULT_FLAVOUR])


def _print(stream: Any, text: str) -> None:
    stream.write(text)
    stream.flush()


def _cobra_error(err: str, usage: str) -> int:
    """Report an error returned to cobra: ``Error:`` and usage on stderr, the error again on stdout, exit 1."""
    _print(sys.stderr, f"Error: {err}\n{usage}\n")
    _print(sys.stdout, f"{err}\n")
    return EXIT_FAILURE


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> int:
    """Run the double; return the process exit code."""
    argv = list(sys.argv if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    flavour = _flavour_from_argv0(argv[0] if argv else DEFAULT_FLAVOUR)
    storage_engine = central_storage_engine(argv[1:], environ)
    specs = flag_specs(flavour, storage_engine)
    usage = usage_text(flavour, specs)
    try:
        command_line = parse_command_line(argv[1:], specs)
    except ParseError as exc:
        return _cobra_error(str(exc), usage)
    if command_line.help:
        _print(sys.stdout, help_text(flavour, specs))
        return 0

    _print(sys.stdout, f"Permguard {flavour.display_name} v.{__version__} - test double of the Permguard server\n\n")
    values = resolve_settings(specs, command_line.given, environ)
    try:
        settings = build_settings(flavour, values, storage_engine)
    except ConfigError as exc:
        _print(sys.stdout, f"Bootstrapper failed initializing server factory configuration {exc}\n")
        return EXIT_FAILURE

    log = JsonLogger(settings.log_level)
    log.info(f"version {__version__}", version=__version__, binary=flavour.display_name, double=True)
    if settings.debug:
        log.info("*** WARNING Zone is running in debug mode ***")
    credentials = credentials_for(settings.tls, environ)
    try:
        asyncio.run(serve(flavour, settings, credentials, log))
    except StartupError as exc:
        return _cobra_error(str(exc), usage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
