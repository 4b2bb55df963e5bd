"""The module run as Ansible runs it: a subprocess fed an ``ANSIBLE_MODULE_ARGS`` file, against real servers."""

from __future__ import annotations

import ast
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import ansible
import pytest
import yaml
from ansible_collections.permguard.secure.plugins.module_utils.tls_probe import DIAGNOSIS_CLASSES
from ansible_collections.permguard.secure.plugins.modules import grpc_tls_probe

MODULE = "ansible_collections.permguard.secure.plugins.modules.grpc_tls_probe"
MODULE_FILE = Path(grpc_tls_probe.__file__)
SYSTEM_PYTHON = "/usr/bin/python3"
GRPCLIB_WHEEL = Path("/root/.cache/permguard-secure/wheels/grpclib-0.4.9-py3-none-any.whl")
_counter = itertools.count()


class Runner:
    """Runs the module with JSON arguments, optionally under another Python and extra import paths."""

    def __init__(self, tmp_path: Path, collections_root: str) -> None:
        self.tmp_path = tmp_path
        self.collections_root = collections_root

    def __call__(
        self, args: dict, python: str = sys.executable, path: tuple[str, ...] = (), **internal: object
    ) -> dict:
        args_file = self.tmp_path / f"args-{next(_counter)}.json"
        module_args = dict(args, **{f"_ansible_{key}": value for key, value in internal.items()})
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((*path, self.collections_root)))
        proc = subprocess.run(
            [python, "-m", MODULE, str(args_file)], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"module printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert (proc.returncode != 0) == bool(output.get("failed")), proc.stdout
        return output


@pytest.fixture
def run(tmp_path, collections_root) -> Runner:
    return Runner(tmp_path, collections_root)


def warnings_of(out: dict) -> list:
    """Warning texts; ansible-core 2.19 returns them as structured events, older releases as strings."""
    return [w if isinstance(w, str) else w.get("event", {}).get("msg", "") for w in out.get("warnings", [])]


def url(port: int, scheme: str = "grpc") -> str:
    return f"{scheme}://127.0.0.1:{port}"


# --------------------------------------------------------------------------- success and failure


def test_hosts_times_named_ports(run, servers):
    ports = {name: servers.grpclib() for name in ("zap", "pap", "pdp")}
    out = run({"hosts": ["127.0.0.1"], "ports": ports, "scheme": "grpc"})
    assert out["changed"] is False
    assert "failed" not in out
    assert [r["name"] for r in out["results"]] == ["zap", "pap", "pdp"]
    assert all(r["health_status"] == "SERVING" for r in out["results"])
    assert out["failed_endpoints"] == []
    lines = out["msg"].splitlines()
    assert lines == out["summary"]
    assert len(lines) == 3
    assert lines[0].startswith(f"OK   grpc://127.0.0.1:{ports['zap']} (zap): SERVING, plaintext")


def test_failure_names_endpoint_diagnosis_and_fix(run, servers, pki, server_ctx):
    good = servers.grpclib()
    tls_port = servers.grpclib(server_ctx(pki.server))
    out = run({"endpoints": [url(good), url(tls_port)]})
    assert out["failed"] is True
    assert out["msg"].startswith("1 of 2 endpoints failed:\n")
    assert f"grpc://127.0.0.1:{tls_port}: plaintext_to_tls_server - " in out["msg"]
    assert "Fix: The server runs a TLS mode" in out["msg"]
    assert f"grpc://127.0.0.1:{good}" not in out["msg"]
    assert out["failed_endpoints"] == [url(tls_port)]
    assert out["results"][0]["ok"] is True
    assert out["results"][1]["diagnosis"]["class"] == "plaintext_to_tls_server"


def test_fail_on_error_false_reports_without_failing(run, servers):
    port = servers.closed_port()
    out = run({"endpoints": [url(port)], "fail_on_error": False})
    assert "failed" not in out
    assert out["results"][0]["diagnosis"]["class"] == "nothing_listening"
    assert out["msg"].startswith(f"FAIL grpc://127.0.0.1:{port}: nothing_listening")


def test_check_mode_still_probes(run, servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.server, pki.ca.cert_file))
    args = {
        "endpoints": [url(port, "grpcs")],
        "ca_file": pki.ca.cert_file,
        "cert_file": pki.client[0],
        "key_file": pki.client[1],
    }
    out = run(args, check_mode=True)
    result = out["results"][0]
    assert result["ok"] is True, out["msg"]
    assert result["verified"] is True
    assert result["tls"]["client_cert_requested"] is True
    assert result["peer_certificate"]["dns_sans"] == ["localhost", "permguard"]


def test_skip_verify_warns(run, servers, pki, server_ctx):
    port = servers.grpclib(server_ctx(pki.server_other))
    out = run({"endpoints": [url(port, "grpcs")], "skip_verify": True})
    assert out["results"][0]["verification"] == "skipped"
    assert any("unverified" in warning for warning in warnings_of(out))


def test_tls_options_on_plaintext_endpoints_warn(run, servers, pki):
    out = run({"endpoints": [url(servers.grpclib())], "ca_file": pki.ca.cert_file})
    assert out["results"][0]["ok"] is True
    assert "ca_file is ignored: every endpoint is plaintext (grpc://)" in warnings_of(out)


def test_client_certificate_required(run, servers, pki, server_ctx):
    port = servers.tls_front(server_ctx(pki.server, pki.ca.cert_file))
    out = run({"endpoints": [url(port, "grpcs")], "ca_file": pki.ca.cert_file, "fail_on_error": False})
    diagnosis = out["results"][0]["diagnosis"]
    assert diagnosis["class"] == "client_cert_required"
    assert "certificate_required (116)" in diagnosis["message"]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"endpoints": ["https://h:9091"]}, "endpoints: 'https://h:9091' has unknown scheme 'https'"),
        ({}, "one of the following is required: endpoints, hosts"),
        ({"hosts": ["h"], "cert_file": "/c.pem"}, "parameters are required together: cert_file, key_file"),
        ({"hosts": ["h"], "timeout": -1}, "timeout: must be a positive number"),
        ({"hosts": ["h"], "ports": {"zap": "ninety"}}, "ports: zap: 'ninety' is not a port number"),
        ({"hosts": ["h"], "spiffe_socket": "/etc/hostname"}, "spiffe_socket: /etc/hostname is not a Unix socket"),
        ({"hosts": ["h"], "ca_file": "/nonexistent/ca.pem"}, "ca_file: /nonexistent/ca.pem does not exist"),
    ],
)
def test_argument_errors_name_the_option(run, args, message):
    out = run(args)
    assert out["failed"] is True
    assert message in out["msg"], out["msg"]


def test_skip_verify_with_ca_file(run, pki):
    out = run({"hosts": ["h"], "skip_verify": True, "ca_file": pki.ca.cert_file})
    assert out["msg"].startswith("skip_verify: cannot be combined with ca_file")
    assert out["option"] == "skip_verify"


def test_key_not_matching_certificate(run, pki):
    cert_file, key_file = pki.client_key_mismatch
    out = run({"hosts": ["h"], "cert_file": cert_file, "key_file": key_file})
    assert out["msg"] == f"key_file: {key_file} does not match the certificate in {cert_file}"


def test_socket_path_that_is_not_a_socket(run, tmp_path):
    out = run({"hosts": ["h"], "spiffe_socket": str(tmp_path)})
    assert out["msg"] == f"spiffe_socket: {tmp_path} is not a Unix socket"


def test_missing_workload_api_socket(run, tmp_path):
    sock = tmp_path / "api.sock"
    out = run({"hosts": ["127.0.0.1"], "spiffe_socket": str(sock), "fail_on_error": False})
    assert [r["diagnosis"]["class"] for r in out["results"]] == ["workload_api_unavailable"] * 3


# --------------------------------------------------------------------------- mode spiffe through the Workload API

SPIFFE_SERVER_ID = "spiffe://example.org/permguard/server"
SPIFFE_CLIENT_ID = "spiffe://example.org/ops/probe"


@pytest.mark.parametrize("form", ["path", "uri"])
def test_spiffe_socket_against_a_spiffe_server(run, spire_agent, spiffe_server, form):
    """The module fetches its own SVID from the SPIRE agent double and proves an SVID-only mTLS server."""
    server = spiffe_server()
    socket_value = spire_agent.socket_path if form == "path" else spire_agent.endpoint
    out = run({"endpoints": [server.url], "spiffe_socket": socket_value, "expected_spiffe_id": SPIFFE_SERVER_ID})
    assert "failed" not in out, out["msg"]
    result = out["results"][0]
    assert result["ok"] is True
    assert result["verification"] == "spiffe"
    assert result["peer_certificate"]["spiffe_id"] == SPIFFE_SERVER_ID
    assert result["peer_certificate"]["dns_sans"] == []
    assert result["tls"]["client_spiffe_id"] == SPIFFE_CLIENT_ID
    assert server.health.client_ids == [[SPIFFE_CLIENT_ID]]
    assert server.health.client_serials == [spire_agent.svid(SPIFFE_CLIENT_ID).serial_number]
    assert out["msg"].startswith(f"OK   {server.url}: SERVING, TLSv1.3 h2, verified (SPIFFE), client certificate")


def test_spiffe_wrong_trust_domain_fails_the_task(run, spire_agent, spiffe_server):
    server = spiffe_server()
    out = run(
        {"endpoints": [server.url], "spiffe_socket": spire_agent.socket_path, "expected_trust_domain": "other.org"}
    )
    assert out["failed"] is True
    assert out["results"][0]["diagnosis"]["class"] == "unexpected_spiffe_id"
    assert f"{server.url}: unexpected_spiffe_id - the server presents SPIFFE ID {SPIFFE_SERVER_ID}" in out["msg"]


def test_spiffe_probe_without_registration_entry(run, spire_agent, spiffe_server):
    """The task's user has no identity in the agent: a stable class whose fix names the entry to create."""
    server = spiffe_server()
    spire_agent.remove_identity(os.getuid())
    started = time.monotonic()
    out = run({"hosts": ["127.0.0.1"], "ports": {"zap": server.port}, "spiffe_socket": spire_agent.socket_path})
    assert time.monotonic() - started < 10
    assert out["failed"] is True
    diagnosis = out["results"][0]["diagnosis"]
    assert diagnosis["class"] == "no_workload_identity"
    assert f"uid {os.geteuid()}" in diagnosis["message"]
    assert f"-selector unix:uid:{os.geteuid()}" in diagnosis["fix"]
    assert "no_workload_identity" in out["msg"]
    assert f"-selector unix:uid:{os.geteuid()}" in out["msg"]
    assert server.health.client_certs == []


def test_silent_workload_api_keeps_the_module_within_its_timeout(run):
    """A Workload API that never answers: the module still ends at its timeout, with a diagnosis."""
    path = f"/tmp/silent-{os.getpid()}-{time.monotonic_ns()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    try:
        started = time.monotonic()
        out = run({"endpoints": ["grpcs://127.0.0.1:9"], "spiffe_socket": path, "timeout": 1, "fail_on_error": False})
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        os.unlink(path)
    assert elapsed < 6, f"the module took {elapsed:.1f} s with a 1 s timeout"
    diagnosis = out["results"][0]["diagnosis"]
    assert diagnosis["class"] == "workload_api_unavailable"
    assert "within the 1 s timeout" in diagnosis["message"]


def test_missing_spiffe_package_is_reported(run, spire_agent, tmp_path):
    fake = tmp_path / "hide" / "spiffe"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'spiffe'\", name='spiffe')\n")
    out = run({"hosts": ["127.0.0.1"], "spiffe_socket": spire_agent.socket_path}, path=(str(fake.parent),))
    assert out["failed"] is True
    assert "Failed to import the required Python library (spiffe)" in out["msg"]
    assert "results" not in out


# --------------------------------------------------------------------------- packaging and portability


def test_missing_library_is_reported(run, tmp_path):
    fake = tmp_path / "hide" / "grpclib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'grpclib'\", name='grpclib')\n")
    out = run({"hosts": ["h"]}, path=(str(fake.parent),))
    assert out["failed"] is True
    assert "Failed to import the required Python library (grpclib)" in out["msg"]


@pytest.mark.skipif(
    not (os.path.exists(SYSTEM_PYTHON) and GRPCLIB_WHEEL.exists()), reason="needs Debian 12's python3 and the wheel"
)
def test_runs_on_debian12_system_python(run, servers, pki, server_ctx, tmp_path):
    """Debian 12 targets: Python 3.11, cryptography 38, protobuf 3.21, h2 4.1 from apt, grpclib from its wheel."""
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import cryptography, google.protobuf, h2, multidict"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("Debian's python3-cryptography, -protobuf, -h2, -multidict are not installed")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ansible").symlink_to(Path(ansible.__file__).parent)  # ansible's module_utils only, as AnsiballZ ships
    port = servers.grpclib(server_ctx(pki.server, pki.ca.cert_file))
    args = {"endpoints": [url(port, "grpcs")], "ca_file": pki.ca.cert_file, "cert_file": pki.client[0]}
    out = run(dict(args, key_file=pki.client[1]), python=SYSTEM_PYTHON, path=(str(GRPCLIB_WHEEL), str(shim)))
    result = out["results"][0]
    assert result["ok"] is True, out["msg"]
    assert result["peer_certificate"]["days_left"] >= 363
    assert result["peer_certificate"]["not_after"].endswith("Z")


def test_module_compiles_for_python_3_8():
    ast.parse(MODULE_FILE.read_text(), feature_version=(3, 8))


def test_documentation_matches_argument_spec():
    """What ansible-test validate-modules checks first: every option documented with its type and default."""
    options = yaml.safe_load(grpc_tls_probe.DOCUMENTATION)["options"]
    spec = grpc_tls_probe.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, documented in options.items():
        assert documented["type"] == spec[name]["type"], name
        assert documented.get("default") == spec[name].get("default"), name
        assert documented.get("choices") == spec[name].get("choices"), name
        assert documented.get("elements") == spec[name].get("elements"), name


def test_documentation_lists_every_diagnosis_class():
    notes = " ".join(yaml.safe_load(grpc_tls_probe.DOCUMENTATION)["notes"])
    assert [name for name in DIAGNOSIS_CLASSES if f"C({name})" not in notes] == []


ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")


@pytest.mark.skipif(not ANSIBLE_DOC.exists(), reason="ansible-doc is not installed beside this Python")
def test_ansible_doc_renders(collections_root):
    ansible_doc = str(ANSIBLE_DOC)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_root)
    proc = subprocess.run(
        [ansible_doc, "permguard.secure.grpc_tls_probe"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "client_cert_required" in proc.stdout
    assert "[WARNING]" not in proc.stderr, proc.stderr
