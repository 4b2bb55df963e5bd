"""spiffe_svid_info run as Ansible runs it (a subprocess fed a JSON arguments file) against the SPIRE agent double.

The agent double runs in-process (``spire_agent`` fixture of the plugins' conftest: this test's uid is registered
as the probe, another uid as the Permguard server); every failure reason is caused for real. Permission failures
need a caller the kernel checks: when the tests run as root, the module runs as root without the DAC-override
capabilities (``setpriv``), which makes directory and socket modes apply to it.
"""

from __future__ import annotations

import ast
import datetime
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest
import yaml
from ansible_collections.permguard.secure.plugins.module_utils import spiffe_workload
from ansible_collections.permguard.secure.plugins.modules import spiffe_svid_info
from cryptography import x509

MODULE = "ansible_collections.permguard.secure.plugins.modules.spiffe_svid_info"
MODULE_FILE = Path(spiffe_svid_info.__file__)
CLIENT_ID = "spiffe://example.org/ops/probe"
NOBODY = 65534
_counter = itertools.count()


class Runner:
    """Runs the module with JSON arguments; ``prefix`` wraps the interpreter (setpriv), ``env`` adds variables."""

    def __init__(self, tmp_path: Path, collections_root: str) -> None:
        self.tmp_path = tmp_path
        self.collections_root = collections_root

    def __call__(
        self,
        args: dict,
        *,
        env: Optional[dict] = None,
        path: Sequence[str] = (),
        prefix: Sequence[str] = (),
        check_mode: bool = False,
    ) -> dict:
        args_file = self.tmp_path / f"args-{next(_counter)}.json"
        module_args = dict(args, _ansible_check_mode=check_mode)
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
        os.chmod(args_file, 0o644)
        environment = {k: v for k, v in os.environ.items() if k != spiffe_workload.SOCKET_ENV}
        environment.update(env or {})
        environment["PYTHONPATH"] = os.pathsep.join((*path, self.collections_root))
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", MODULE, str(args_file)],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"module printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert (proc.returncode != 0) == bool(output.get("failed")), proc.stdout
        return output


@pytest.fixture
def run(tmp_path: Path, collections_root: str) -> Runner:
    return Runner(tmp_path, collections_root)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="svid-info-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _setpriv_works() -> bool:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return False
    probe = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-c", "pass"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def unprivileged() -> tuple:
    """A command prefix under which directory and socket modes apply to the module."""
    if os.geteuid() != 0:
        return ()
    if not _setpriv_works():
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here")
    return (shutil.which("setpriv"), "--bounding-set=-dac_override,-dac_read_search", "--")


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


# --------------------------------------------------------------------------- success


def test_fetches_the_default_svid_and_bundle(run, spire_agent):
    out = run({"socket_path": spire_agent.socket_path})
    assert "failed" not in out, out["msg"]
    svid = spire_agent.svid(CLIENT_ID)
    assert out["changed"] is False
    assert out["spiffe_id"] == CLIENT_ID
    assert out["trust_domain"] == "example.org"
    assert out["serial"] == format(svid.serial_number, "X")
    assert out["not_after"] == iso(svid.not_after)
    assert 0 < out["seconds_left"] <= spire_agent.svid_ttl
    assert out["days_left"] == 0
    assert out["hint"] is None
    assert [(s["spiffe_id"], s["default"], s["chain_length"]) for s in out["svids"]] == [(CLIENT_ID, True, 1)]
    assert out["bundles"] == {"example.org": {"count": 1}}, "no PEM unless include_bundle"
    assert (out["uid"], out["socket_path"], out["socket_source"]) == (os.geteuid(), spire_agent.socket_path, "option")
    assert out["msg"].startswith(f"{CLIENT_ID} (uid {os.geteuid()}")
    assert "bundles: example.org (1 authority)" in out["msg"]
    assert "key" not in json.dumps(out).lower(), "no private key material is returned"


def test_uri_form_include_bundle_and_check_mode(run, spire_agent):
    out = run({"socket_path": spire_agent.endpoint, "include_bundle": True}, check_mode=True)
    assert "failed" not in out, out["msg"]
    assert out["socket_path"] == spire_agent.socket_path, "the unix:// URI is reported as the bare path"
    assert out["bundles"]["example.org"]["pem"] == spire_agent.bundle_pem().decode()


def test_socket_from_spiffe_endpoint_socket(run, spire_agent):
    out = run({}, env={spiffe_workload.SOCKET_ENV: spire_agent.endpoint})
    assert "failed" not in out, out["msg"]
    assert (out["socket_path"], out["socket_source"]) == (spire_agent.socket_path, "SPIFFE_ENDPOINT_SOCKET")
    assert out["spiffe_id"] == CLIENT_ID


def test_default_socket_is_spires(run):
    if os.path.exists(spiffe_workload.DEFAULT_SOCKET_PATH):
        pytest.skip("a Workload API socket exists at SPIRE's default path on this machine")
    out = run({"timeout": 2})
    assert (out["socket_path"], out["socket_source"]) == ("/tmp/spire-agent/public/api.sock", "default")
    assert out["reason"] == "socket_missing"
    assert "PrivateTmp" in out["msg"], "a socket under /tmp gets the PrivateTmp hint"


def test_several_svids_and_a_rotated_ca(run, spire_agent):
    second = "spiffe://example.org/ops/second"
    spire_agent.set_identity(os.getuid(), [CLIENT_ID, second])
    spire_agent.rotate_ca()
    out = run({"socket_path": spire_agent.socket_path, "include_bundle": True})
    assert "failed" not in out, out["msg"]
    assert [(s["spiffe_id"], s["default"]) for s in out["svids"]] == [(CLIENT_ID, True), (second, False)]
    assert out["svids"][1]["serial"] == format(spire_agent.svid(second).serial_number, "X")
    assert out["bundles"]["example.org"]["count"] == 2, "old and new CA during a CA rotation"
    assert out["bundles"]["example.org"]["pem"].count("BEGIN CERTIFICATE") == 2
    assert "and 1 more SVID" in out["msg"]


# --------------------------------------------------------------------------- failures


def test_no_identity_names_the_uid_and_the_entry_to_create(run, spire_agent):
    spire_agent.remove_identity(os.getuid())
    started = time.monotonic()
    out = run({"socket_path": spire_agent.socket_path})
    assert time.monotonic() - started < 10
    uid = os.geteuid()
    assert out["failed"] is True
    assert out["reason"] == "no_identity"
    assert f"issues no X.509-SVID to uid {uid}" in out["msg"]
    assert "no identity issued" in out["msg"], "the agent's own words"
    assert "spire-server entry create -parentID <the agent's SPIFFE ID> -spiffeID spiffe://" in out["msg"]
    assert f"-selector unix:uid:{uid}" in out["msg"]
    assert out["uid"] == uid


def test_missing_socket(run, short_dir):
    socket_path = short_dir / "gone" / "api.sock"
    out = run({"socket_path": str(socket_path)})
    assert out["reason"] == "socket_missing"
    assert out["msg"].startswith(f"the Workload API socket {socket_path} does not exist (nor does its directory")
    assert "is the SPIRE agent running" in out["msg"]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_not_a_socket(run, short_dir, kind):
    target = short_dir / "api.sock"
    if kind == "file":
        target.write_text("")
    else:
        target.mkdir()
    out = run({"socket_path": str(target)})
    assert out["reason"] == "not_a_socket"
    assert out["msg"].startswith(f"{target} exists but is a {'regular file' if kind == 'file' else 'directory'}")


def test_stale_socket_nothing_listening(run, short_dir):
    path = short_dir / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    out = run({"socket_path": str(path)})
    assert out["reason"] == "nothing_listening"
    assert "start or restart the SPIRE agent" in out["msg"]


def _lock(path: str, mode_as_root: int, mode_otherwise: int) -> int:
    """Make ``path`` out of reach for the module: someone else's with ``mode_as_root``, or ours without access."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, mode_as_root)
        return mode_as_root
    os.chmod(path, mode_otherwise)
    return mode_otherwise


def test_directory_the_user_cannot_enter(run, spire_agent, unprivileged):
    directory = Path(spire_agent.socket_path).parent
    mode = _lock(str(directory), 0o700, 0o600)
    try:
        out = run({"socket_path": spire_agent.socket_path}, prefix=unprivileged)
    finally:
        os.chmod(directory, 0o755)
    assert out["reason"] == "permission_denied", out["msg"]
    assert out["msg"].startswith(f"uid {os.geteuid()}")
    assert f"cannot enter the directory {directory} (mode {mode:04o}" in out["msg"]


def test_socket_the_user_may_not_write(run, spire_agent, unprivileged):
    path = spire_agent.socket_path
    mode = _lock(path, 0o755, 0o555)
    try:
        out = run({"socket_path": path}, prefix=unprivileged)
    finally:
        os.chmod(path, 0o777)
    assert out["reason"] == "permission_denied", out["msg"]
    assert f"may not connect to the Workload API socket {path} (mode {mode:04o}" in out["msg"]


def test_silent_agent_ends_within_the_timeout(run, short_dir):
    path = short_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)  # accepts (kernel backlog), never answers
    try:
        started = time.monotonic()
        out = run({"socket_path": str(path), "timeout": 1})
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 8, f"the module took {elapsed:.1f} s with a 1 s timeout"
    assert out["reason"] == "timeout"
    assert out["msg"] == f"the Workload API at {path} handed out no X.509-SVID within the 1 s timeout"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("run/spire/agent.sock", "socket_path: 'run/spire/agent.sock' must be an absolute path or unix:///path"),
        ("unix://run/agent.sock", "is a unix URI with an authority ('run')"),
        ("tcp://127.0.0.1:8081", "is not a Unix socket"),
    ],
)
def test_invalid_socket_values(run, value, message):
    out = run({"socket_path": value})
    assert out["reason"] == "invalid_socket"
    assert message in out["msg"]
    assert out["socket_path"] is None


def test_bad_timeout(run):
    out = run({"socket_path": "/tmp/x.sock", "timeout": 0})
    assert (out["reason"], out["msg"]) == ("invalid_argument", "timeout: must be a positive number of seconds")


def test_missing_spiffe_package(run, spire_agent, tmp_path):
    fake = tmp_path / "hide" / "spiffe"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'spiffe'\", name='spiffe')\n")
    out = run({"socket_path": spire_agent.socket_path}, path=(str(fake.parent),))
    assert out["reason"] == "missing_library"
    assert "Failed to import the required Python library (spiffe)" in out["msg"]
    assert "spiffe_id" not in out


# --------------------------------------------------------------------------- engine, documentation, portability


def test_resolve_socket_forms():
    resolve = spiffe_workload.resolve_socket
    assert resolve("/run/spire/agent.sock", {}) == ("/run/spire/agent.sock", "option")
    assert resolve("unix:///run/spire/agent.sock", {}) == ("/run/spire/agent.sock", "option")
    assert resolve("unix:/run/spire/agent.sock", {}) == ("/run/spire/agent.sock", "option")
    assert resolve(None, {"SPIFFE_ENDPOINT_SOCKET": "unix:///a/b.sock"}) == ("/a/b.sock", "SPIFFE_ENDPOINT_SOCKET")
    assert resolve("", {"SPIFFE_ENDPOINT_SOCKET": ""}) == (spiffe_workload.DEFAULT_SOCKET_PATH, "default")
    with pytest.raises(spiffe_workload.WorkloadApiError, match="SPIFFE_ENDPOINT_SOCKET: 'unix:a' must be an absolute"):
        resolve(None, {"SPIFFE_ENDPOINT_SOCKET": "unix:a"})


def test_every_reason_is_documented():
    returned = yaml.safe_load(spiffe_svid_info.RETURN)["reason"]["description"]
    assert [name for name in spiffe_workload.REASONS if f"C({name})" not in returned] == []


def test_documentation_matches_argument_spec():
    options = yaml.safe_load(spiffe_svid_info.DOCUMENTATION)["options"]
    spec = spiffe_svid_info.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, documented in options.items():
        assert documented["type"] == spec[name]["type"], name
        assert documented.get("default") == spec[name].get("default"), name


@pytest.mark.parametrize("path", [MODULE_FILE, Path(spiffe_workload.__file__)])
def test_compiles_for_python_3_8(path):
    ast.parse(path.read_text(), feature_version=(3, 8))


ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")


@pytest.mark.skipif(not ANSIBLE_DOC.exists(), reason="ansible-doc is not installed beside this Python")
def test_ansible_doc_renders(collections_root):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_root)
    proc = subprocess.run(
        [str(ANSIBLE_DOC), "permguard.secure.spiffe_svid_info"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "SPIFFE_ENDPOINT_SOCKET" in proc.stdout
    assert "[WARNING]" not in proc.stderr, proc.stderr
