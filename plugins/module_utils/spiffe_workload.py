# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch the caller's X.509-SVIDs and trust bundles from a SPIFFE Workload API socket, and say why it failed.

The engine behind ``permguard.secure.spiffe_svid_info``, reusable by roles and other plugins:

* :func:`resolve_socket` turns an option value, ``SPIFFE_ENDPOINT_SOCKET`` or SPIRE's default into a bare path
  (a ``unix://`` URI is accepted);
* :func:`check_socket` tells a missing socket, a path that is not a socket, a directory the caller cannot enter,
  a socket it may not write to and a socket nothing listens on apart, before any gRPC call;
* :func:`fetch_x509_context` asks the agent once (py-spiffe's ``WorkloadApiClient.fetch_x509_context``), bounded
  by a timeout in a daemon thread whatever py-spiffe does inside;
* :func:`svid_info` runs all three and returns the facts; every failure is a :class:`WorkloadApiError` whose
  ``reason`` is one of :data:`REASONS` (a stable interface) and whose message says what to do.

The ``spiffe`` package (py-spiffe, grpcio) is imported only when a fetch happens.
"""

from __future__ import annotations

import datetime
import errno
import inspect
import os
import pwd
import socket
import stat
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

#: The SPIRE agent's default Workload API socket.
DEFAULT_SOCKET_PATH = "/tmp/spire-agent/public/api.sock"
#: The environment variable SPIFFE clients read the Workload API address from (a ``unix:///path`` URI).
SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"

#: Every failure reason, with what it means. The names are a stable interface.
REASONS: Dict[str, str] = {
    "invalid_socket": "the socket value is neither an absolute path nor a unix:///absolute/path URI",
    "socket_missing": "nothing exists at the socket path (agent not running, wrong path, or hidden by PrivateTmp)",
    "not_a_socket": "the path exists but is not a Unix socket",
    "permission_denied": "the caller cannot enter a directory on the way to the socket, or may not write to it",
    "nothing_listening": "the socket file exists but nothing accepts connections on it (a stale socket)",
    "no_identity": "the agent answers but has no registration entry for the caller's Unix user (PermissionDenied)",
    "timeout": "the agent did not hand out an X.509-SVID within the timeout",
    "fetch_failed": "the agent answered with another error, or its answer could not be read",
    "missing_library": "the spiffe Python package (py-spiffe) is not installed where the task runs",
}

_NO_IDENTITY_FIX = (
    "SPIRE attests a workload by the Unix user of its process: create a registration entry for uid {uid}, for "
    "example 'spire-server entry create -parentID <the agent's SPIFFE ID> -spiffeID spiffe://<trust-domain>/<name> "
    "-selector unix:uid:{uid}', wait a few seconds for the agent to sync it, and try again (or run as a user that "
    "already has an entry)"
)


class WorkloadApiError(Exception):
    """A failure with a stable ``reason`` (see :data:`REASONS`) and a message that says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        """Keep the reason and the message."""
        super().__init__(message)
        self.reason = reason


def user_label(uid: int) -> str:
    """Return ``uid N (name)``, or ``uid N`` for a uid without a passwd entry."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def resolve_socket(value: Optional[str], environ: Optional[Dict[str, str]] = None) -> Tuple[str, str]:
    """Return ``(bare absolute path, source)``; source is ``option``, ``SPIFFE_ENDPOINT_SOCKET`` or ``default``.

    Accepts a bare absolute path, ``unix:///path`` and ``unix:/path``. A relative path, a ``unix://`` URI with an
    authority (``unix://run/agent.sock``) or another scheme raises ``invalid_socket``.
    """
    environ = os.environ if environ is None else environ
    if value:
        source = "option"
    elif environ.get(SOCKET_ENV):
        value, source = environ[SOCKET_ENV], SOCKET_ENV
    else:
        value, source = DEFAULT_SOCKET_PATH, "default"
    return _bare_path(value, source), source


def _bare_path(value: str, source: str) -> str:
    where = "socket_path" if source == "option" else source
    path = value
    if value.lower().startswith("unix://"):
        rest = value[len("unix://") :]
        if not rest.startswith("/"):
            authority = rest.split("/", 1)[0]
            raise WorkloadApiError(
                "invalid_socket",
                f"{where}: {value!r} is a unix URI with an authority ({authority!r}); a Unix socket URI needs three "
                f"slashes and an absolute path, for example unix:///run/spire/agent.sock",
            )
        path = rest
    elif value.lower().startswith("unix:"):
        path = value[len("unix:") :]
    elif "://" in value:
        raise WorkloadApiError(
            "invalid_socket",
            f"{where}: {value!r} is not a Unix socket; the Workload API is reached through a Unix socket "
            "(a bare path or unix:///path)",
        )
    if not os.path.isabs(path):
        raise WorkloadApiError("invalid_socket", f"{where}: {value!r} must be an absolute path or unix:///path")
    return os.path.normpath(path)


def _describe_mode(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "mode unknown"
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}"


def _can_enter(directory: str) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(directory, os.X_OK, effective_ids=effective)


def _blocking_directory(path: str) -> Optional[str]:
    """Return the first directory on the way to ``path`` that the caller cannot enter (search permission)."""
    parts = os.path.dirname(path).split(os.sep)
    current = os.sep
    for part in [p for p in parts if p]:
        if not _can_enter(current):
            return current
        current = os.path.join(current, part)
    return current if not _can_enter(current) else None


def _missing_message(path: str) -> str:
    directory = os.path.dirname(path)
    where = f"the Workload API socket {path} does not exist"
    if not os.path.isdir(directory):
        where += f" (nor does its directory {directory})"
    hint = "is the SPIRE agent running, and is this its socket_path? SPIRE's default is " + DEFAULT_SOCKET_PATH + "."
    if path.startswith(("/tmp/", "/var/tmp/")):
        hint += (
            " A socket under /tmp is invisible to a systemd service with PrivateTmp=yes: point the agent at a "
            "directory such as /run/spire/sockets, or disable PrivateTmp for the service."
        )
    return f"{where}: {hint}"


def check_socket(path: str, timeout: float) -> None:
    """Check that ``path`` is a Unix socket the caller can reach and that something accepts connections on it."""
    who = user_label(os.geteuid())
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise WorkloadApiError("socket_missing", _missing_message(path)) from None
    except PermissionError:
        blocked = _blocking_directory(path) or os.path.dirname(path)
        raise WorkloadApiError(
            "permission_denied",
            f"{who} cannot enter the directory {blocked} ({_describe_mode(blocked)}), so it cannot reach the "
            f"Workload API socket {path}: give this user search (x) permission on every directory on the way "
            "(SPIRE creates the socket's directory 0755), for example through a group",
        ) from None
    except OSError as exc:
        raise WorkloadApiError(
            "socket_missing", f"cannot look at the Workload API socket {path}: {exc.strerror}"
        ) from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "not a socket"
        raise WorkloadApiError(
            "not_a_socket", f"{path} exists but is {kind}, not a Unix socket: is this the agent's socket_path?"
        )
    _probe_connect(path, timeout, who)


def _probe_connect(path: str, timeout: float, who: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(max(timeout, 0.01))  # a full listen backlog would block connect() for good
    try:
        probe.connect(path)
    except socket.timeout:
        raise WorkloadApiError(
            "timeout",
            f"the Workload API socket {path} accepted no connection within {timeout:g} s (is the agent stuck?)",
        ) from None
    except PermissionError:
        raise WorkloadApiError(
            "permission_denied",
            f"{who} may not connect to the Workload API socket {path} ({_describe_mode(path)}): connecting needs "
            "write permission on the socket (SPIRE makes it 0777)",
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise WorkloadApiError(
                "nothing_listening",
                f"nothing accepts connections on the Workload API socket {path} (a stale socket left by an agent "
                "that stopped?): start or restart the SPIRE agent",
            ) from None
        raise WorkloadApiError("nothing_listening", f"cannot connect to {path}: {exc.strerror}") from None
    finally:
        probe.close()


def _import_client() -> Any:
    """Return py-spiffe's ``WorkloadApiClient``; an ImportError that names ``spiffe`` when it is missing."""
    try:
        from spiffe import WorkloadApiClient  # noqa: PLC0415 - optional, imported when used
    except ImportError as exc:
        raise ImportError(f"the spiffe package (py-spiffe) cannot be imported: {exc}", name="spiffe") from exc
    return WorkloadApiClient


def _accepts(function: Any, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _fetch(path: str, timeout: float) -> Any:
    client_class = _import_client()
    client = client_class("unix://" + path)
    try:
        fetch = client.fetch_x509_context
        return fetch(timeout=timeout) if _accepts(fetch, "timeout") else fetch()
    finally:
        client.close()


def _grpc_code_name(exc: Optional[BaseException]) -> Optional[str]:
    """The gRPC status code name (``PERMISSION_DENIED``...) of a grpcio error anywhere in ``exc``'s chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                name = getattr(code(), "name", None)
            except Exception:  # not a grpc.Call after all
                name = None
            if isinstance(name, str):
                return name
        exc = exc.__cause__ or exc.__context__
    return None


def _grpc_details(exc: Optional[BaseException]) -> Optional[str]:
    """The status message (``no identity issued``...) of a grpcio error anywhere in ``exc``'s chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        details = getattr(exc, "details", None)
        if callable(details):
            try:
                text = details()
            except Exception:  # not a grpc.Call after all
                text = None
            if isinstance(text, str):
                return text
        exc = exc.__cause__ or exc.__context__
    return None


def _classify(exc: BaseException, path: str, timeout: float) -> WorkloadApiError:
    code = _grpc_code_name(exc)
    text = str(exc) or type(exc).__name__
    if code == "PERMISSION_DENIED" or (code is None and "PERMISSION_DENIED" in text):
        uid = os.geteuid()
        answer = f"PermissionDenied: {_grpc_details(exc)}" if _grpc_details(exc) is not None else text
        return WorkloadApiError(
            "no_identity",
            f"the SPIRE agent at {path} issues no X.509-SVID to {user_label(uid)} (it answered {answer}). "
            + _NO_IDENTITY_FIX.format(uid=uid),
        )
    if code == "DEADLINE_EXCEEDED" or (code is None and "DEADLINE_EXCEEDED" in text):
        return _timeout(path, timeout)
    return WorkloadApiError("fetch_failed", f"fetching the X.509-SVID from {path} failed: {text}")


def _timeout(path: str, timeout: float) -> WorkloadApiError:
    return WorkloadApiError(
        "timeout", f"the Workload API at {path} handed out no X.509-SVID within the {timeout:g} s timeout"
    )


def fetch_x509_context(path: str, timeout: float, stated_timeout: Optional[float] = None) -> Any:
    """Fetch py-spiffe's X509Context from the socket at ``path``, in a daemon thread bounded by ``timeout``.

    The thread, not only py-spiffe's own deadline, bounds the wait: a call that outlives it is abandoned (its late
    result dropped) and cannot hold the caller or its exit up. ImportError passes through (``spiffe`` missing).
    Messages name ``stated_timeout`` (the caller's whole budget) when given.
    """
    _import_client()
    stated = timeout if stated_timeout is None else stated_timeout
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = _fetch(path, timeout)
        except Exception as exc:  # handed to the caller
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="spiffe-svid-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _timeout(path, stated)
    error = outcome.get("error")
    if isinstance(error, ImportError):
        raise error
    if error is not None:
        raise _classify(error, path, stated)
    return outcome["value"]


# --------------------------------------------------------------------------- facts


def _validity(cert: Any) -> Tuple[datetime.datetime, datetime.datetime]:
    utc = datetime.timezone.utc
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=utc)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=utc)
    return before, after


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _trust_domain_of(spiffe_id: str) -> str:
    return spiffe_id[len("spiffe://") :].split("/", 1)[0]


def _svid_facts(svid: Any, now: datetime.datetime, default: bool) -> Dict[str, Any]:
    leaf = svid.leaf
    not_before, not_after = _validity(leaf)
    spiffe_id = str(svid.spiffe_id)
    left = (not_after - now).total_seconds()
    return {
        "spiffe_id": spiffe_id,
        "trust_domain": _trust_domain_of(spiffe_id),
        "hint": getattr(svid, "hint", None) or None,
        "default": default,
        "serial": format(leaf.serial_number, "X"),
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "seconds_left": int(left),
        "days_left": int(left // 86400),
        "chain_length": len(svid.cert_chain),
    }


def _pem(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - py-spiffe depends on cryptography

    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _bundle_facts(context: Any, include_pem: bool) -> Dict[str, Dict[str, Any]]:
    bundles: Dict[str, Dict[str, Any]] = {}
    for bundle in context.x509_bundle_set.bundles:
        authorities = sorted(bundle.x509_authorities, key=lambda cert: (_validity(cert)[0], cert.serial_number))
        entry: Dict[str, Any] = {"count": len(authorities)}
        if include_pem:
            entry["pem"] = "".join(_pem(cert) for cert in authorities)
        bundles[str(bundle.trust_domain)] = entry
    return dict(sorted(bundles.items()))


def context_facts(context: Any, include_bundle: bool = False, now: Optional[datetime.datetime] = None) -> dict:
    """Describe a py-spiffe X509Context: the default SVID at the top level, every SVID, every bundle."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    svids: List[Dict[str, Any]] = [_svid_facts(svid, now, index == 0) for index, svid in enumerate(context.x509_svids)]
    if not svids:
        raise WorkloadApiError("fetch_failed", "the Workload API answered with no X.509-SVID")
    default = svids[0]
    facts = {key: default[key] for key in ("spiffe_id", "trust_domain", "serial", "not_before", "not_after")}
    facts.update(days_left=default["days_left"], seconds_left=default["seconds_left"], hint=default["hint"])
    facts["svids"] = svids
    facts["bundles"] = _bundle_facts(context, include_bundle)
    return facts


def svid_info(socket_value: Optional[str], timeout: float, include_bundle: bool = False) -> dict:
    """Resolve and check the socket, fetch the caller's X.509 context within ``timeout`` s, return the facts.

    Raises WorkloadApiError (with a ``reason``) or ImportError (``spiffe`` missing).
    """
    if timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    deadline = time.monotonic() + timeout
    _import_client()  # a missing package is an error of the task, whatever the socket looks like
    path, source = resolve_socket(socket_value)
    check_socket(path, min(timeout, 5.0))
    remaining = max(deadline - time.monotonic(), 0.01)
    context = fetch_x509_context(path, remaining, timeout)
    facts = context_facts(context, include_bundle)
    facts.update(socket_path=path, socket_source=source)
    return facts


__all__ = [
    "DEFAULT_SOCKET_PATH",
    "REASONS",
    "SOCKET_ENV",
    "WorkloadApiError",
    "check_socket",
    "context_facts",
    "fetch_x509_context",
    "resolve_socket",
    "svid_info",
    "user_label",
]
