"""Test double of the Permguard command-line client ``permguard``: its configuration and its transport.

One self-contained file, the client-side companion of ``permguard_double.py`` (the servers). It runs on Debian 12's
system Python 3.11 with python3-h2 4.1 (and hpack), and equally on newer versions; it needs nothing else (no
grpclib, no protobuf, no cryptography: it speaks HTTP/2 through ``h2`` over a socket it wraps with Python's ``ssl``
itself, so every TLS outcome - alerts after a TLS 1.3 handshake included - is observed, not guessed). The facts it
follows were read from Permguard's public source (newest commit read; ``internal/cli``, ``pkg/cli/options``,
``internal/transport/clients``, ``pkg/transport/grpctls``) and from viper 1.19 / go-toml v2 (the libraries that
read and write the configuration file); nothing is copied from them.

What it copies from the real CLI
--------------------------------
* Configuration file ``$HOME/.permguard/config.toml`` (Go's ``os.UserHomeDir``), read through viper on EVERY run,
  before any command is parsed (``--help`` and ``version`` included):

  - a missing directory is created 0755 and a missing file created empty (mode 0666 less the umask);
  - the file is parsed as TOML (keys are case-insensitive, viper lower-cases them); a file that does not parse
    makes the CLI exit 1 without a word, as the real one does (``os.Exit(1)`` before cobra runs);
  - the keys the CLI seeds are added when missing - ``zap-endpoint`` ``grpc://localhost:9091``, ``pap-endpoint``
    ``grpc://localhost:9092``, ``pdp-endpoint`` ``grpc://localhost:9094``, ``workspace-init-language`` ``cedar``,
    ``authstar-max-object-size`` 5242880, ``notp-max-packet-size`` 16777216;
  - then the file is REWRITTEN in place (same inode, owner and mode; ``O_TRUNC``), every run, in go-toml v2's
    canonical form: keys sorted, ``key = value`` lines, strings as literal ``'...'`` strings unless they hold a
    ``'``, a line break or a control character (then a basic ``"..."`` string), integers and booleans bare, tables
    after the plain keys. Comments and any other layout are lost. A tool that writes ``config.toml`` must write it
    in that form, or the first CLI run changes it and the tool's next run changes it back.
* Settings resolution as viper's: a flag given on the command line beats the environment (``PERMGUARD_<KEY>``,
  upper case, ``-`` and ``.`` become ``_``; an empty variable counts as unset), which beats the configuration file,
  which beats the flag's default. The TLS settings therefore also work as configuration keys: ``tls-ca-file``,
  ``tls-cert-file``, ``tls-key-file``, ``tls-skip-verify``, ``spiffe-enabled``, ``spiffe-endpoint``.
  The endpoints have no flags: ``zap-endpoint``, ``pap-endpoint``, ``pdp-endpoint`` come from the file or the
  environment only.
* Command line (cobra/pflag): persistent flags ``-w/--workdir``, ``-o/--output`` (terminal or json),
  ``-v/--verbose``, ``--tls-ca-file``, ``--tls-cert-file``, ``--tls-key-file``, ``--tls-skip-verify``,
  ``--spiffe-enabled``, ``--spiffe-endpoint``, anywhere on the line; ``--flag=value`` and ``--flag value``; bare
  booleans; short flags. Commands: ``version``, ``zones`` (help) and ``zones list`` (``-p/--page``,
  ``-s/--size``, ``--zone-id``). Unknown flags and commands print cobra's bare error on stderr, exit 1.
* ``zones list``: the ZAP client of the real CLI, in the real order - endpoint scheme (``grpc://`` plaintext,
  ``grpcs://`` TLS, anything else refused; no port means 443, as grpc-go's default), the TLS settings' own
  validation (``tls: both cert-file and key-file must be provided together for mTLS``, ``tls: spiffe-enabled
  requires spiffe-socket-path``), then ``cli: TLS flags (--tls-*) require the grpcs:// scheme`` when any TLS
  setting is given with ``grpc://``, then the credentials (CA file, client key pair; Go's texts:
  ``tls: failed to read CA file <path>: open <path>: no such file or directory``, ``tls: failed to parse CA
  certificates from <path>``, ``tls: failed to load client certificate: ...``), then the connection and the
  server-streaming RPC ``/zoneadministrationpoint.V1ZAPService/FetchZones`` (``ZoneFetchRequest`` page 1, size
  1000), with a 30 s deadline.
* Transport as grpc-go with Go's crypto/tls: TLS 1.2 minimum, ALPN ``h2`` offered and required back
  (``credentials: cannot check peer: missing selected ALPN property``), the CA file as the ONLY trust anchors
  (the system pool without it), the server verified by chain and then by host name against DNS/IP SANs only (the
  common name is never used; Go's ``x509.HostnameError`` texts: ``certificate is valid for a, b, not c``,
  ``certificate is not valid for any names, but wanted to match h``, ``cannot validate certificate for <ip>
  because it doesn't contain any IP SANs``), SNI for names (not for IP literals), the client certificate
  presented when configured; ``--tls-skip-verify`` skips every server check.
* Error texts as the CLI prints them (terminal output, no colour off a terminal; errors on stdout, exit 1)::

      error: failed to list zones
        - connection error: desc = "transport: authentication handshake failed: tls: failed to verify
          certificate: x509: certificate signed by unknown authority" (hint: use --tls-skip-verify ...)

  from grpc-go's status text (``rpc error: code = Unavailable desc = connection error: desc = "transport: ..."``)
  with the CLI's hints (its ``wrapGrpcErr``, same tests in the same order: ``connection reset by peer`` or
  ``error reading server preface``, ``first record does not look like a TLS handshake``, ``certificate signed by
  unknown authority``, ``certificate required``) and its printer's sanitising (the text after the first
  `` desc = `` of each cause line). Go's forms of the common TLS failures: ``x509: certificate signed by unknown
  authority``, ``x509: certificate has expired or is not yet valid``, ``x509: certificate specifies an
  incompatible key usage``, ``tls: first record does not look like a TLS handshake``, ``remote error: tls:
  <Go's alert name>`` (for example ``certificate required``, ``bad certificate``, ``unknown certificate
  authority``), and an alert that arrives after a TLS 1.3 handshake as ``error reading server preface: remote
  error: tls: ...``. With ``-o json`` the error is ``{"causes":[...],"error":"cli: failed to list zones"}``.
* ``version`` prints the version (``{"version": ...}`` with ``-o json``).

What it leaves out
------------------
* Business logic: ``zones list`` is the only command that talks to a server. Because the server double has no
  business RPCs, a ``FetchZones`` answered with gRPC status UNIMPLEMENTED is TRANSPORT SUCCESS here: the double
  prints what the real CLI prints for an empty zone list (nothing; ``{"zones":[]}`` with ``-o json``), adds a
  ``permguard double:`` note on stderr, and exits 0. Any other gRPC status is reported as the real CLI reports it.
  Zones a server does return are decoded for their id and name only. Every other command of the real CLI
  (workspaces, ledgers, authz, config, ...) is missing.
* On success the double also writes one ``permguard double: connected to ...`` line on stderr with the TLS
  version, ALPN and the server certificate's serial and issuer - the real CLI prints nothing like it; tests use it
  to see which certificate a server presented.
* SPIFFE: the flags and keys are parsed and validated as the real CLI does (``--spiffe-endpoint`` or, when it is
  empty, ``SPIFFE_ENDPOINT_SOCKET`` taken raw; ``unix://`` is then prepended, so a standard ``unix:///path`` value
  turns into ``unix://unix:///path``, which go-spiffe accepts and grpc-go can never dial - the real CLI then waits
  for its first SVID forever; the double says so and exits 1). There is no Workload API client yet: a usable
  address fails with ``spiffe: failed to create X509 source: ... not implemented by this double`` - the seam for
  it is :func:`spiffe_credentials`.
* TLS is Python's ``ssl`` (OpenSSL), not Go's crypto/tls: cipher suites and extension order differ; expiry and
  verification errors carry Go's prefix but not Go's time details; name-resolution failures are reported in one
  simplified form (``name resolver error: produced zero addresses``); a single connection attempt is made per
  address (grpc-go would back off and retry until the deadline for some failures).
* Cosmetics: no ASCII-art banner, help texts are the double's own, ``--verbose`` only adds the version details to
  ``version``; the first run after creating the file uses the seeded values as viper overrides (so an environment
  variable cannot beat them on that one run) - the double treats them as file values.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tomllib

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError as _missing:  # pragma: no cover - depends on the host
    sys.exit(f"permguard CLI double: missing Python module {_missing.name!r}: it needs h2 (python3-h2)")

__version__ = "none"

EXIT_FAILURE = 1
CALL_TIMEOUT = 30.0  # grpcCallTimeout of the real CLI
CONNECT_TIMEOUT = 20.0  # grpc-go's minimum connect timeout
ZAP_FETCH_ZONES = "/zoneadministrationpoint.V1ZAPService/FetchZones"
NOTE = "permguard double:"

#: Keys the real CLI seeds into config.toml when they are missing.
CONFIG_DEFAULTS: Dict[str, Any] = {
    "zap-endpoint": "grpc://localhost:9091",
    "pap-endpoint": "grpc://localhost:9092",
    "pdp-endpoint": "grpc://localhost:9094",
    "workspace-init-language": "cedar",
    "authstar-max-object-size": 5242880,
    "notp-max-packet-size": 16777216,
}

GRPC_CODES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)
GRPC_UNIMPLEMENTED = 12

#: OpenSSL alert reasons -> Go's alert texts (crypto/tls alert.go).
GO_ALERTS = {
    "UNEXPECTED_MESSAGE": "unexpected message",
    "BAD_RECORD_MAC": "bad record MAC",
    "RECORD_OVERFLOW": "record overflow",
    "HANDSHAKE_FAILURE": "handshake failure",
    "BAD_CERTIFICATE": "bad certificate",
    "UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "CERTIFICATE_REVOKED": "revoked certificate",
    "CERTIFICATE_EXPIRED": "expired certificate",
    "CERTIFICATE_UNKNOWN": "unknown certificate",
    "ILLEGAL_PARAMETER": "illegal parameter",
    "UNKNOWN_CA": "unknown certificate authority",
    "ACCESS_DENIED": "access denied",
    "DECODE_ERROR": "error decoding message",
    "DECRYPT_ERROR": "error decrypting message",
    "PROTOCOL_VERSION": "protocol version not supported",
    "INSUFFICIENT_SECURITY": "insufficient security level",
    "INTERNAL_ERROR": "internal error",
    "USER_CANCELLED": "user canceled",
    "NO_RENEGOTIATION": "no renegotiation",
    "MISSING_EXTENSION": "missing extension",
    "UNSUPPORTED_EXTENSION": "unsupported extension",
    "UNRECOGNIZED_NAME": "unrecognized name",
    "CERTIFICATE_REQUIRED": "certificate required",
    "NO_APPLICATION_PROTOCOL": "no application protocol",
}
#: OpenSSL's reasons when the peer answered a ClientHello with something that is not TLS.
NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")
#: OpenSSL verification codes -> Go's x509 texts.
GO_VERIFY_ERRORS = {
    2: "x509: certificate signed by unknown authority",
    18: "x509: certificate signed by unknown authority",
    19: "x509: certificate signed by unknown authority",
    20: "x509: certificate signed by unknown authority",
    21: "x509: certificate signed by unknown authority",
    9: "x509: certificate has expired or is not yet valid",
    10: "x509: certificate has expired or is not yet valid",
    26: "x509: certificate specifies an incompatible key usage",
    7: "x509: certificate signature is invalid",
}


class CliError(Exception):
    """An error the real CLI reports: its text is Go's ``err.Error()``."""


class FlagError(CliError):
    """A command-line error returned to cobra (bare text on stderr, exit 1)."""


class RpcError(CliError):
    """A failed gRPC call, in grpc-go's status form."""

    def __init__(self, code: int, desc: str) -> None:
        """Keep the status code and description."""
        super().__init__(f"rpc error: code = {GRPC_CODES[code]} desc = {desc}")
        self.code = code
        self.desc = desc
        self.facts: Dict[str, Any] = {}  # what the TLS handshake showed, when the call got that far


def go_quote(text: str) -> str:
    """Quote like Go's ``%q`` (enough for paths and addresses)."""
    return json.dumps(text, ensure_ascii=False)


def go_strerror(exc: OSError) -> str:
    """Return Go's text for an errno (lower-case strerror)."""
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


def go_parse_bool(text: str) -> bool:
    """Parse like strconv.ParseBool; raise ValueError otherwise."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def cast_bool(value: Any) -> bool:
    """Viper's GetBool (spf13/cast): unparsable strings are false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    try:
        return go_parse_bool(str(value))
    except ValueError:
        return False


def cast_string(value: Any) -> str:
    """Viper's GetString (spf13/cast)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------- config.toml


def config_path(environ: Dict[str, str]) -> str:
    """Return ``$HOME/.permguard/config.toml`` (Go's os.UserHomeDir reads $HOME)."""
    home = environ.get("HOME", "")
    if not home:
        raise CliError("$HOME is not defined")
    return os.path.join(home, ".permguard", "config.toml")


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return value


def _needs_quoting(text: str) -> bool:
    return any(ch in "'\r\n" or (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in text)


def toml_string(text: str) -> str:
    """Encode a string as go-toml v2 does: a literal string, else a basic string."""
    if not _needs_quoting(text):
        return f"'{text}'"
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """Encode a key as go-toml v2 does: bare when it can be."""
    if key and re.match(r"^[A-Za-z0-9_-]+$", key):
        return key
    return toml_string(key) if key else "''"


def toml_value(value: Any) -> str:
    """Encode a scalar or an array value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in sorted(value.items())) + "}"
    return toml_string(value.isoformat()) if hasattr(value, "isoformat") else toml_string(str(value))


def render_config(values: Dict[str, Any], parents: Tuple[str, ...] = ()) -> str:
    """Render a configuration as viper's WriteConfig does (go-toml v2 Marshal of the settings map)."""
    plain = sorted((k, v) for k, v in values.items() if v is not None and not isinstance(v, dict))
    tables = sorted((k, v) for k, v in values.items() if isinstance(v, dict))
    lines = [f"{toml_key(k)} = {toml_value(v)}\n" for k, v in plain]
    out = ""
    if parents:
        out += "[" + ".".join(toml_key(p) for p in parents) + "]\n"
    out += "".join(lines)
    for index, (key, table) in enumerate(tables):
        if index > 0 or lines:
            out += "\n"
        out += render_config(table, (*parents, key))
    return out


def sync_config(path: str) -> Dict[str, Any]:
    """Create, read, seed and rewrite config.toml as the real CLI does at every start; return its settings.

    Raises ``OSError`` or ``tomllib.TOMLDecodeError``, which the caller turns into a silent exit 1.
    """
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    with open(path, "rb") as handle:
        values = _lower_keys(tomllib.load(handle))
    for key, default in CONFIG_DEFAULTS.items():
        values.setdefault(key, default)
    # In place (O_TRUNC): inode, owner and mode stay; viper's WriteConfig ignores its own error.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(render_config(values))
    except OSError:
        pass
    return values


# --------------------------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class FlagSpec:
    """A pflag flag."""

    name: str
    kind: str  # string, bool, int32, int64
    default: Any
    usage: str
    short: str = ""


GLOBAL_FLAGS = (
    FlagSpec("workdir", "string", ".", "workdir", "w"),
    FlagSpec("output", "string", "terminal", "output format", "o"),
    FlagSpec("verbose", "bool", False, "true for verbose output", "v"),
    FlagSpec("tls-ca-file", "string", "", "path to CA certificate for server verification (PEM)"),
    FlagSpec("tls-cert-file", "string", "", "path to client certificate for mTLS (PEM)"),
    FlagSpec("tls-key-file", "string", "", "path to client private key for mTLS (PEM)"),
    FlagSpec("tls-skip-verify", "bool", False, "skip server certificate verification (insecure, dev only)"),
    FlagSpec("spiffe-enabled", "bool", False, "enable native SPIFFE mTLS via Workload API"),
    FlagSpec(
        "spiffe-endpoint", "string", "", "SPIFFE Workload API socket path (defaults to SPIFFE_ENDPOINT_SOCKET env)"
    ),
)
ZONES_LIST_FLAGS = (
    FlagSpec("page", "int32", 1, "specify the page number for pagination", "p"),
    FlagSpec("size", "int32", 1000, "specify the number of items per page", "s"),
    FlagSpec("zone-id", "int64", 0, "filter results by zone ID"),
)
COMMANDS = {
    (): "The official Permguard Command Line Interface (test double)",
    ("version",): "Show the version details",
    ("zones",): "Manage zones on the remote server",
    ("zones", "list"): "List remote zones",
}


@dataclass
class CommandLine:
    """A parsed command line."""

    path: Tuple[str, ...] = ()
    given: Dict[str, Any] = field(default_factory=dict)
    help: bool = False


def _flags_for(path: Tuple[str, ...]) -> Dict[str, FlagSpec]:
    specs = {spec.name: spec for spec in GLOBAL_FLAGS}
    if path[:1] == ("zones",):
        specs["zone-id"] = ZONES_LIST_FLAGS[2]
    if path == ("zones", "list"):
        specs.update({spec.name: spec for spec in ZONES_LIST_FLAGS})
    return specs


def _parse_value(spec: FlagSpec, text: str, shown: str) -> Any:
    try:
        if spec.kind == "bool":
            return go_parse_bool(text)
        if spec.kind in ("int32", "int64"):
            if not re.match(r"^[+-]?\d+$", text):
                raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
            value = int(text)
            bits = 31 if spec.kind == "int32" else 63
            if not -(2**bits) <= value < 2**bits:
                raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
            return value
        return text
    except ValueError as exc:
        raise FlagError(f"invalid argument {go_quote(text)} for {go_quote(shown)} flag: {exc}") from None


def _find_path(argv: Sequence[str]) -> Tuple[str, ...]:
    """Cobra's Find: the longest known command path among the leading non-flag words."""
    words: List[str] = []
    specs = _flags_for(())
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            spec = specs.get(name) or _flags_for(("zones", "list")).get(name)
            skip = "=" not in arg and spec is not None and spec.kind != "bool"
            continue
        if arg.startswith("-") and len(arg) > 1:
            short = arg[1]
            spec = next((s for s in (*GLOBAL_FLAGS, *ZONES_LIST_FLAGS) if s.short == short), None)
            skip = len(arg) == 2 and spec is not None and spec.kind != "bool"
            continue
        words.append(arg)
    path: Tuple[str, ...] = ()
    for word in words:
        if (*path, word) in COMMANDS:
            path = (*path, word)
        else:
            if path in ((), ("zones",)) or path == ("zones", "list"):
                shown = "permguard" + "".join(f" {p}" for p in path)
                raise FlagError(f"unknown command {go_quote(word)} for {go_quote(shown)}")
            break
    return path


def _short_flag(arg: str, args: List[str], shorts: Dict[str, FlagSpec]) -> Tuple[str, Any]:
    """One ``-x``, ``-xVALUE``, ``-x=VALUE`` or ``-x VALUE``; consumes the value from ``args``."""
    letter, rest = arg[1], arg[2:]
    spec = shorts.get(letter)
    if spec is None:
        raise FlagError(f"unknown shorthand flag: {letter!r} in {arg}")
    if spec.kind == "bool":
        value = rest[1:] if rest.startswith("=") else "true"
    elif rest:
        value = rest[1:] if rest.startswith("=") else rest
    elif args:
        value = args.pop(0)
    else:
        raise FlagError(f"flag needs an argument: {letter!r} in -{letter}")
    return spec.name, _parse_value(spec, value, f"-{letter}, --{spec.name}")


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Parse the command and its flags as cobra and pflag do; raise FlagError."""
    result = CommandLine(path=_find_path(argv))
    specs = _flags_for(result.path)
    shorts = {spec.short: spec for spec in specs.values() if spec.short}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if arg in ("-h", "--help"):
            result.help = True
            continue
        if arg.startswith("--"):
            name, has_value, value = arg[2:].partition("=")
            spec = specs.get(name)
            if spec is None:
                raise FlagError(f"unknown flag: --{name}")
            if not has_value:
                if spec.kind == "bool":
                    value = "true"
                elif args:
                    value = args.pop(0)
                else:
                    raise FlagError(f"flag needs an argument: --{name}")
            result.given[name] = _parse_value(spec, value, f"--{name}")
        elif arg.startswith("-") and len(arg) > 1:
            name, value = _short_flag(arg, args, shorts)
            result.given[name] = value
    return result


def help_text(path: Tuple[str, ...]) -> str:
    """A usage page (the double's own words)."""
    shown = "permguard" + "".join(f" {p}" for p in path)
    lines = [COMMANDS[path], "", "Usage:", f"  {shown} [flags]"]
    children = [c[-1] for c in COMMANDS if len(c) == len(path) + 1 and c[: len(path)] == path]
    if children:
        lines += [f"  {shown} [command]", "", "Available Commands:"]
        lines += [f"  {child:<12} {COMMANDS[(*path, child)]}" for child in sorted(children)]
    lines += ["", "Flags:"]
    for spec in _flags_for(path).values():
        short = f"-{spec.short}, " if spec.short else "    "
        lines.append(f"  {short}--{spec.name} {spec.kind if spec.kind != 'bool' else ''}".rstrip() + f"   {spec.usage}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- settings


class Settings:
    """Viper's view: flag given > PERMGUARD_* environment > config.toml > flag default."""

    def __init__(self, given: Dict[str, Any], environ: Dict[str, str], config: Dict[str, Any]) -> None:
        """Keep the three sources."""
        self._given = given
        self._environ = environ
        self._config = config
        self._defaults = {spec.name: spec.default for spec in (*GLOBAL_FLAGS, *ZONES_LIST_FLAGS)}

    def get(self, key: str, viper_key: str = "") -> Any:
        """Return a setting, or None when no source has it; ``viper_key`` when the flag is bound under another."""
        if key in self._given:
            return self._given[key]
        viper_key = viper_key or key
        env = self._environ.get("PERMGUARD_" + re.sub(r"[-.]", "_", viper_key).upper(), "")
        if env != "":
            return env
        if viper_key in self._config:
            return self._config[viper_key]
        return self._defaults.get(key)

    def string(self, key: str) -> str:
        """GetString."""
        return cast_string(self.get(key))

    def boolean(self, key: str) -> bool:
        """GetBool."""
        return cast_bool(self.get(key))


@dataclass(frozen=True)
class TlsClientConfig:
    """grpctls.ClientConfig of the real CLI."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    skip_verify: bool = False
    spiffe: bool = False
    spiffe_socket_path: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, environ: Dict[str, str]) -> TlsClientConfig:
        """Read the TLS settings; the SPIFFE path is the setting, else SPIFFE_ENDPOINT_SOCKET taken raw."""
        return cls(
            ca_file=settings.string("tls-ca-file"),
            cert_file=settings.string("tls-cert-file"),
            key_file=settings.string("tls-key-file"),
            skip_verify=settings.boolean("tls-skip-verify"),
            spiffe=settings.boolean("spiffe-enabled"),
            spiffe_socket_path=settings.string("spiffe-endpoint") or environ.get("SPIFFE_ENDPOINT_SOCKET", ""),
        )

    def validate(self) -> None:
        """Consistency checks, real texts."""
        if bool(self.cert_file) != bool(self.key_file):
            raise CliError("tls: both cert-file and key-file must be provided together for mTLS")
        if self.spiffe and not self.spiffe_socket_path:
            raise CliError("tls: spiffe-enabled requires spiffe-socket-path")

    def has_tls(self) -> bool:
        """Whether any TLS setting is given (the key file alone does not count, as in the real code)."""
        return bool(self.ca_file or self.cert_file or self.skip_verify or self.spiffe)


# --------------------------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Endpoint:
    """A parsed grpc:// or grpcs:// endpoint."""

    url: str
    host: str
    port: int
    authority: str
    tls: bool


def parse_endpoint(endpoint: str) -> Endpoint:
    """Validate the scheme as the real client does; grpc-go's default port is 443."""
    if endpoint == "":
        raise CliError("client: endpoint is required (e.g., grpc://localhost:9091 or grpcs://localhost:9091)")
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if endpoint.startswith(scheme):
            authority = endpoint[len(scheme) :]
            if authority == "":
                raise CliError(f"client: endpoint host:port is required after {scheme} (e.g., {scheme}localhost:9091)")
            match = re.match(r"^\[([^\]]+)\](?::(\d*))?$|^([^:]*)(?::(\d*))?$", authority)
            if not match:
                host, port = authority, "443"
            else:
                host = match.group(1) or match.group(3) or "localhost"
                port = match.group(2) or match.group(4) or "443"
            return Endpoint(endpoint, host, int(port), authority, tls)
    raise CliError(
        f"client: endpoint scheme must be grpc:// or grpcs://, got {go_quote(endpoint)} "
        "(use grpc:// for plaintext or grpcs:// for TLS)"
    )


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except IsADirectoryError:
        raise CliError(f"read {path}: is a directory") from None
    except OSError as exc:
        raise CliError(f"open {path}: {go_strerror(exc)}") from None


def client_context(cfg: TlsClientConfig) -> ssl.SSLContext:
    """grpctls.NewClientCredentials: TLS 1.2+, the CA file as the only roots, the client key pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    context.check_hostname = False  # Go's host name rules are applied after the handshake
    if cfg.skip_verify:
        context.verify_mode = ssl.CERT_NONE
    if cfg.ca_file:
        try:
            data = _read_file(cfg.ca_file)
        except CliError as exc:
            raise CliError(f"tls: failed to read CA file {cfg.ca_file}: {exc}") from None
        try:
            context.load_verify_locations(cadata=data.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise CliError(f"tls: failed to parse CA certificates from {cfg.ca_file}") from None
    elif not cfg.skip_verify:
        context.load_default_certs()
    if cfg.cert_file and cfg.key_file:
        _load_key_pair(context, cfg.cert_file, cfg.key_file)
    return context


def _load_key_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    prefix = "tls: failed to load client certificate: "
    try:
        cert_pem = _read_file(cert_file)
        key_pem = _read_file(key_file)
    except CliError as exc:
        raise CliError(prefix + str(exc)) from None
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise CliError(prefix + "tls: failed to find any PEM data in certificate input")
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_pem):
        if b"-----BEGIN CERTIFICATE-----" in key_pem:
            raise CliError(prefix + "tls: found a certificate rather than a key in the PEM for the private key")
        raise CliError(prefix + "tls: failed to find any PEM data in key input")
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc.reason or exc):
            raise CliError(prefix + "tls: private key does not match public key") from None
        raise CliError(prefix + "tls: failed to parse private key") from None


def spiffe_credentials(cfg: TlsClientConfig) -> ssl.SSLContext:
    """Seam for the Workload API client: resolve the address as the real CLI does, then report."""
    address = "unix://" + cfg.spiffe_socket_path
    parts = urllib.parse.urlsplit(address)
    prefix = "spiffe: failed to create X509 source: "
    if "@" in parts.netloc:
        raise CliError(prefix + "workload endpoint unix socket URI must not include user info")
    if parts.query:
        raise CliError(prefix + "workload endpoint unix socket URI must not include query values")
    if parts.fragment:
        raise CliError(prefix + "workload endpoint unix socket URI must not include a fragment")
    if parts.netloc:
        raise CliError(
            prefix + f"grpc-go cannot dial {address} (a unix:// URI with an authority); the real CLI waits for its "
            "first SVID forever here - set spiffe-endpoint to the bare socket path"
        )
    raise CliError(prefix + f"the SPIFFE Workload API client is not implemented by this double yet ({address})")


# --------------------------------------------------------------------------------------------- Go's host name check


def _dns_match(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        labels = host.split(".", 1)
        return len(labels) == 2 and labels[0] != "" and labels[1] == pattern[2:]
    return pattern == host


def verify_hostname(peer: Dict[str, Any], host: str) -> Optional[str]:
    """Go's VerifyHostname on a verified peer: None when it matches, else x509.HostnameError's text."""
    sans = peer.get("subjectAltName", ())
    dns_names = [value for kind, value in sans if kind == "DNS"]
    ips = [value for kind, value in sans if kind == "IP Address"]
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        wanted = None
    if wanted is not None:
        parsed = [ipaddress.ip_address(value.strip()) for value in ips]
        if wanted in parsed:
            return None
        if not parsed:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        return f"x509: certificate is valid for {', '.join(str(ip) for ip in parsed)}, not {host}"
    if any(_dns_match(name, host) for name in dns_names):
        return None
    if not dns_names:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {', '.join(dns_names)}, not {host}"


def _ssl_error_text(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls: failed to verify certificate: " + GO_VERIFY_ERRORS.get(
            exc.verify_code, f"x509: {exc.verify_message}"
        )
    for suffix, text in GO_ALERTS.items():
        if reason.endswith("ALERT_" + suffix):
            return f"remote error: tls: {text}"
    if reason in NOT_TLS_REASONS:
        return "tls: first record does not look like a TLS handshake"
    if isinstance(exc, ssl.SSLEOFError) or reason in ("UNEXPECTED_EOF_WHILE_READING", "EOF"):
        return "EOF"
    return f"tls: {reason.lower().replace('_', ' ') or exc}"


# --------------------------------------------------------------------------------------------- the call


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zone_fetch_request(page: int, size: int, zone_id: int) -> bytes:
    """ZoneFetchRequest{Page, PageSize, ZoneID when > 0} in protobuf wire format."""
    message = b"\x08" + _varint(page) + b"\x10" + _varint(size)
    if zone_id > 0:
        message += b"\x18" + _varint(zone_id)
    return message


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_zone(message: bytes) -> Tuple[int, str]:
    """ZoneResponse's ZoneID (1) and Name (4); other fields are skipped."""
    zone_id, name, pos = 0, "", 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if number == 1:
                zone_id = value
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            if number == 4:
                name = message[pos : pos + length].decode("utf-8", "replace")
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            break
    return zone_id, name


@dataclass
class CallResult:
    """What the call saw."""

    messages: List[bytes] = field(default_factory=list)
    facts: Dict[str, Any] = field(default_factory=dict)


def _unavailable(desc: str) -> RpcError:
    return RpcError(14, f"connection error: desc = {go_quote(desc)}")


def _dial(endpoint: Endpoint, deadline: float) -> socket.socket:
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise RpcError(14, "name resolver error: produced zero addresses") from None
    last: Optional[str] = None
    for family, kind, proto, _name, address in infos:
        shown = f"[{address[0]}]:{address[1]}" if family == socket.AF_INET6 else f"{address[0]}:{address[1]}"
        sock = socket.socket(family, kind, proto)
        sock.settimeout(max(0.1, min(CONNECT_TIMEOUT, deadline - time.monotonic())))
        try:
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError:
            sock.close()
            raise RpcError(4, "context deadline exceeded") from None
        except OSError as exc:
            sock.close()
            last = f"transport: Error while dialing: dial tcp {shown}: connect: {go_strerror(exc)}"
    raise _unavailable(last or "transport: Error while dialing: no address")


def _handshake(sock: socket.socket, endpoint: Endpoint, context: ssl.SSLContext, verify: bool) -> ssl.SSLSocket:
    prefix = "transport: authentication handshake failed: "
    try:
        tls = context.wrap_socket(sock, server_hostname=endpoint.host)
    except ssl.SSLError as exc:
        sock.close()
        raise _unavailable(prefix + _ssl_error_text(exc)) from None
    except (ConnectionResetError, BrokenPipeError):
        sock.close()
        raise _unavailable(prefix + "read: connection reset by peer") from None
    except TimeoutError:
        sock.close()
        raise RpcError(4, "context deadline exceeded") from None
    except OSError as exc:
        sock.close()
        raise _unavailable(prefix + go_strerror(exc)) from None
    if verify:
        mismatch = verify_hostname(tls.getpeercert() or {}, endpoint.host)
        if mismatch:
            tls.close()
            raise _unavailable(prefix + "tls: failed to verify certificate: " + mismatch)
    if tls.selected_alpn_protocol() != "h2":
        tls.close()
        raise _unavailable(prefix + "credentials: cannot check peer: missing selected ALPN property")
    return tls


def _peer_facts(tls: ssl.SSLSocket) -> Dict[str, Any]:
    facts: Dict[str, Any] = {"tls_version": tls.version(), "alpn": tls.selected_alpn_protocol()}
    peer = tls.getpeercert() or {}
    if peer:
        facts["serial"] = (peer.get("serialNumber") or "").lstrip("0") or "0"  # as format(serial, "X")
        issuer = dict(pair[0] for pair in peer.get("issuer", ()) if pair)
        facts["issuer"] = issuer.get("commonName")
        facts["subject"] = dict(pair[0] for pair in peer.get("subject", ()) if pair).get("commonName")
    return facts


def grpc_server_streaming(
    endpoint: Endpoint, path: str, request: bytes, context: Optional[ssl.SSLContext], verify: bool
) -> CallResult:
    """One server-streaming call over one connection, as grpc-go makes it; raise RpcError."""
    deadline = time.monotonic() + CALL_TIMEOUT
    sock = _dial(endpoint, deadline)
    result = CallResult()
    if context is not None:
        tls = _handshake(sock, endpoint, context, verify)
        result.facts = _peer_facts(tls)
        sock = tls
    try:
        result.messages = _Exchange(sock, endpoint, deadline).call(path, request)
    except RpcError as exc:
        exc.facts = result.facts
        raise
    finally:
        sock.close()
    return result


class _Exchange:
    """One gRPC call over an HTTP/2 connection on ``sock`` (h2's sans-I/O state machine)."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, deadline: float) -> None:
        """Prepare the connection preface."""
        self.sock = sock
        self.endpoint = endpoint
        self.deadline = deadline
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.preface_seen = False
        self.status: Optional[Dict[str, str]] = None
        self.buffer = b""

    def call(self, path: str, request: bytes) -> List[bytes]:
        """Send the request, read until the status arrives; return the messages or raise RpcError."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https" if self.endpoint.tls else "http"),
                (":path", path),
                (":authority", self.endpoint.authority),
                ("content-type", "application/grpc"),
                ("user-agent", f"permguard-cli-double/{__version__} grpc-go/1.79.2"),
                ("te", "trailers"),
                ("grpc-timeout", f"{int(CALL_TIMEOUT)}S"),
            ],
        )
        self.conn.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
        try:
            _send(self.sock, self.conn.data_to_send(), self.preface_seen)
            while self.status is None:
                self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
                self._handle(_recv(self.sock, self.preface_seen))
                outgoing = self.conn.data_to_send()
                if outgoing:
                    _send(self.sock, outgoing, self.preface_seen)
        except TimeoutError:
            raise RpcError(4, "context deadline exceeded") from None
        messages = []
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[1:5], "big")
            messages.append(self.buffer[5 : 5 + length])
            self.buffer = self.buffer[5 + length :]
        code = int(self.status.get("grpc-status", "2"))
        if code != 0:
            message = urllib.parse.unquote(self.status.get("grpc-message", ""))
            raise RpcError(code if code < len(GRPC_CODES) else 2, message)
        return messages

    def _handle(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.FrameTooLargeError:
            raise _unavailable(_phase(self.preface_seen) + "http2: frame too large") from None
        except h2.exceptions.ProtocolError as exc:
            raise _unavailable(_phase(self.preface_seen) + f"http2: {exc}") from None
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.preface_seen = True
            elif isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                if headers.get(":status") != "200":
                    code = headers.get(":status")
                    raise RpcError(2, f"unexpected HTTP status code received from server: {code}")
                if "grpc-status" in headers:
                    self.status = headers
            elif isinstance(event, h2.events.DataReceived):
                self.buffer += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.status = dict(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                raise RpcError(13, f"stream terminated by RST_STREAM with error code: {event.error_code.name}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise _unavailable(f"received GOAWAY with error code {event.error_code.name}")


def _send(sock: socket.socket, data: bytes, preface_seen: bool) -> None:
    """Send; a peer that already dropped the connection is reported by what the next read finds."""
    try:
        sock.sendall(data)
    except ssl.SSLError as exc:
        raise _unavailable(_phase(preface_seen) + _ssl_error_text(exc)) from None
    except (BrokenPipeError, ConnectionResetError):
        _recv(sock, preface_seen)  # raises with the alert or EOF the peer left behind
        raise _unavailable(_phase(preface_seen) + "write: broken pipe") from None


def _phase(preface_seen: bool) -> str:
    return "error reading from server: " if preface_seen else "error reading server preface: "


def _recv(sock: socket.socket, preface_seen: bool) -> bytes:
    phase = _phase(preface_seen)
    try:
        data = sock.recv(65535)
    except ssl.SSLError as exc:
        raise _unavailable(phase + _ssl_error_text(exc)) from None
    except ConnectionResetError:
        raise _unavailable(phase + "read: connection reset by peer") from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            raise
        raise _unavailable(phase + go_strerror(exc)) from None
    if not data:
        raise _unavailable(phase + "EOF")
    return data


def wrap_grpc_error(text: str) -> str:
    """The CLI's wrapGrpcErr: hints for TLS/plaintext mismatches, in its order."""
    if "connection reset by peer" in text or "error reading server preface" in text:
        return text + (
            " (hint: the server may require TLS — use grpcs:// scheme or add --tls-skip-verify for self-signed"
            " certificates)"
        )
    if "first record does not look like a TLS handshake" in text:
        return text + " (hint: the server does not appear to have TLS enabled — use grpc:// scheme instead of grpcs://)"
    if "certificate signed by unknown authority" in text:
        return text + (
            " (hint: use --tls-skip-verify to skip certificate verification or --tls-ca-file to provide the CA"
            " certificate)"
        )
    if "certificate required" in text:
        return (
            text + " (hint: the server requires a client certificate (mTLS) — use --tls-cert-file and --tls-key-file)"
        )
    return text


# --------------------------------------------------------------------------------------------- output


def _go_json(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def print_error(output: str, message: str) -> None:
    """The CLI printer's ErrorWithOutput: first line as ``error:``, the causes sanitised."""
    lines = message.replace("\r\n", "\n").split("\n")

    def sanitize(line: str) -> str:
        index = line.find(" desc = ")
        return line[index + len(" desc = ") :] if index != -1 else line

    if output == "JSON":
        sys.stdout.write(_go_json({"error": lines[0], "causes": [sanitize(line) for line in lines[1:]]}) + "\n")
        return
    text = f"error: {lines[0].removeprefix('cli: ')}\n"
    for line in lines[1:]:
        cleaned = sanitize(line)
        if not cleaned.startswith(("rpc error:", "sql:", "storage:")):
            text += f"  - {cleaned}\n"
    sys.stdout.write(text)


def _cast_int(value: Any) -> int:
    """Viper's GetInt32/GetInt64 (spf13/cast): unparsable values are 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def run_zones_list(settings: Settings, environ: Dict[str, str], output: str) -> int:
    """``permguard zones list``."""
    failed = "cli: failed to list zones"
    try:
        endpoint_value = settings.get("zap-endpoint")
        if endpoint_value is None:
            raise CliError(
                "cli: zap endpoint is not set — use 'permguard config set zap-endpoint grpc://host:port' to "
                "configure it"
            )
        endpoint = parse_endpoint(cast_string(endpoint_value))
        cfg = TlsClientConfig.from_settings(settings, environ)
        cfg.validate()
        if not endpoint.tls and cfg.has_tls():
            raise CliError("cli: TLS flags (--tls-*) require the grpcs:// scheme")
        context: Optional[ssl.SSLContext] = None
        if endpoint.tls:
            context = spiffe_credentials(cfg) if cfg.spiffe else client_context(cfg)
        page, size, zone_id = (
            _cast_int(settings.get(name, f"zones-list-{name}")) for name in ("page", "size", "zone-id")
        )
        if page <= 0:
            raise CliError("cli: --page must be a positive integer")
        if size <= 0:
            raise CliError("cli: --size must be a positive integer")
        request = zone_fetch_request(page, size, zone_id)
        try:
            result = grpc_server_streaming(endpoint, ZAP_FETCH_ZONES, request, context, not cfg.skip_verify)
            unimplemented = False
        except RpcError as exc:
            if exc.code != GRPC_UNIMPLEMENTED:
                raise CliError(wrap_grpc_error(str(exc))) from None
            result, unimplemented = CallResult(facts=exc.facts), True
    except CliError as exc:
        print_error(output, f"{failed}\n{exc}")
        return EXIT_FAILURE
    zones = [decode_zone(message) for message in result.messages]
    if output == "JSON":
        sys.stdout.write(_go_json({"zones": [{"zone_id": zid, "name": name} for zid, name in zones]}) + "\n")
    else:
        for zid, name in sorted(zones, key=lambda item: str(item[0])):
            sys.stdout.write(f"{zid}: {name}\n")
    facts = result.facts
    described = (
        f"{facts.get('tls_version')}, ALPN {facts.get('alpn')}, server certificate serial {facts.get('serial')}"
        f" issued by {facts.get('issuer')}"
        if facts
        else "plaintext"
    )
    sys.stderr.write(f"{NOTE} connected to {endpoint.url} ({described})\n")
    if unimplemented:
        sys.stderr.write(
            f"{NOTE} FetchZones answered UNIMPLEMENTED (the server double has no business RPCs): transport ok\n"
        )
    return 0


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> int:
    """Run the double; return the process exit code."""
    argv = list(sys.argv if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    try:
        config = sync_config(config_path(environ))
    except (OSError, CliError, tomllib.TOMLDecodeError):
        return EXIT_FAILURE  # the real CLI exits 1 without a word
    try:
        command = parse_command_line(argv[1:])
    except FlagError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_FAILURE
    if command.help or command.path in ((), ("zones",)):
        sys.stdout.write(help_text(command.path))
        return 0
    settings = Settings(command.given, environ, config)
    output = settings.string("output").strip().upper()
    if output not in ("TERMINAL", "JSON"):
        sys.stdout.write(f"cli: {settings.string('output')} is an invalid output\n")
        return EXIT_FAILURE
    if command.path == ("version",):
        if output == "JSON":
            details = {"version": __version__}
            if settings.boolean("verbose"):
                details.update(build_time="unknown", git_commit="unknown")
            sys.stdout.write(_go_json(details) + "\n")
        else:
            sys.stdout.write(f"{__version__}\n")
        return 0
    return run_zones_list(settings, environ, output)


if __name__ == "__main__":
    sys.exit(main())
