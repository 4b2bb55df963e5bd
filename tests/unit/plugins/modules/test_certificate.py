"""permguard.secure.certificate end to end without a playbook, on real files.

The action plugin's functions run here as on the controller; the module runs as Ansible runs it (a subprocess
fed a JSON argument file).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import ansible
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cert_fixtures.py beside conftest.py

import cert_fixtures
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.permguard.secure.plugins.action import certificate as action
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    CertificateError,
    certificate_pem,
    create_ca,
    key_spec,
    leaf_issued_by,
    load_certificate,
    load_certificates,
    load_private_key,
    private_key_pem,
    public_key_der,
)
from ansible_collections.permguard.secure.plugins.modules import certificate as module

MODULE = "ansible_collections.permguard.secure.plugins.modules.certificate"
SYSTEM_PYTHON = "/usr/bin/python3"
PASSPHRASE = "vault-secret-passphrase"
_counter = itertools.count()


class Host:
    """Runs the module like Ansible does and records every execution (step, output)."""

    def __init__(self, workdir: Path, collections_root: str, python: str = sys.executable, path: tuple = ()) -> None:
        self.workdir = workdir
        self.collections_root = collections_root
        self.python = python
        self.path = path
        self.calls: list = []
        self.stdout: list = []

    def run(self, args: dict, check_mode: bool = False, diff: bool = False) -> dict:
        args_file = self.workdir / f"args-{next(_counter)}.json"
        module_args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join((*self.path, self.collections_root)))
        proc = subprocess.run(
            [self.python, "-m", MODULE, str(args_file)], capture_output=True, text=True, env=env, check=False
        )
        self.stdout.append(proc.stdout + proc.stderr)
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"module printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert (proc.returncode != 0) == bool(output.get("failed")), proc.stdout
        self.calls.append(((args.get("_controller") or {}).get("step"), output))
        return output


class Setup:
    """A CA on the 'controller' and a directory on the 'host'."""

    def __init__(self, tmp_path: Path, collections_root: str) -> None:
        self.pki = cert_fixtures.Pki(tmp_path / "controller")
        self.ca_cert, self.ca_key = self.pki.write_ca(self.pki.ca, "ca", PASSPHRASE)
        self.host_dir = tmp_path / "host"
        self.host_dir.mkdir()
        self.host = Host(tmp_path, collections_root)
        self.cert_path = self.host_dir / "server.pem"
        self.key_path = self.host_dir / "server-key.pem"
        self.bundle_path = self.host_dir / "ca.pem"

    def args(self, **overrides: object) -> dict:
        """Task arguments after the action plugin's argument validation (defaults filled in)."""
        task = {
            "path": str(self.cert_path),
            "key_path": str(self.key_path),
            "ca_path": str(self.bundle_path),
            "common_name": "pg-1.example.org",
            "subject_alt_names": list(cert_fixtures.NAMES),
            "ca_cert": self.ca_cert,
            "ca_key": self.ca_key,
            "ca_key_passphrase": PASSPHRASE,
        }
        task.update(overrides)
        result = ArgumentSpecValidator(module.ARGUMENT_SPEC).validate(task)
        assert not result.error_messages, result.error_messages
        return result.validated_parameters

    def converge(self, check_mode: bool = False, diff: bool = False, **overrides: object) -> dict:
        """What the action plugin does for one task; returns its result."""
        plan = action.prepare(self.args(**overrides))
        return action.converge(plan, lambda module_args: self.host.run(module_args, check_mode, diff))

    def host_state(self) -> dict:
        """Contents, modes and inodes of every file in the host directory."""
        return {
            path.name: (path.read_bytes(), path.stat().st_mode, path.stat().st_ino)
            for path in sorted(self.host_dir.iterdir())
        }


@pytest.fixture
def setup(tmp_path, collections_root) -> Setup:
    return Setup(tmp_path, collections_root)


def steps(host: Host) -> list:
    return [call[0] for call in host.calls]


# --------------------------------------------------------------------------- the flow


def test_first_run_issues_then_one_execution_and_unchanged(setup):
    first = setup.converge()
    assert first["changed"] is True, first
    assert first["reason"] == "certificate_missing"
    assert steps(setup.host) == ["inspect", "install"]
    assert "csr" not in first
    assert "key_staged" not in first
    cert = load_certificate(setup.cert_path.read_bytes())
    key = load_private_key(setup.key_path.read_bytes())
    assert public_key_der(key) == public_key_der(cert.public_key())
    assert leaf_issued_by(cert, setup.pki.ca.cert)
    assert setup.key_path.stat().st_mode & 0o777 == 0o600
    assert setup.cert_path.stat().st_mode & 0o777 == 0o644
    assert setup.bundle_path.read_bytes() == certificate_pem(setup.pki.ca.cert)
    assert first["trust_bundle_changed"] is True
    facts = first["certificate"]
    assert facts["serial"] == format(cert.serial_number, "X")
    assert facts["subject"] == "CN=pg-1.example.org"
    assert facts["issuer"] == "CN=Permguard Test CA"
    assert facts["subject_alt_names"] == [
        "DNS:pg-1.example.org",
        "IP:127.0.0.1",
        "URI:spiffe://example.org/permguard/server",
    ]
    assert facts["days_left"] in (364, 365)
    assert first["path"] == str(setup.cert_path)
    assert first["key_path"] == str(setup.key_path)
    assert sorted(p.name for p in setup.host_dir.iterdir()) == ["ca.pem", "server-key.pem", "server.pem"]

    setup.host.calls.clear()
    before = setup.host_state()
    second = setup.converge()
    assert second["changed"] is False, second
    assert second["reason"] is None
    assert steps(setup.host) == ["inspect"], "an unchanged run is exactly one module execution"
    assert second["certificate"]["serial"] == facts["serial"]
    assert setup.host_state() == before


def test_private_key_never_leaves_the_host(setup):
    setup.converge()
    setup.converge(force=True)
    setup.converge(diff=True, force=True)
    key_pem = setup.key_path.read_text()
    key_body = "".join(key_pem.strip().splitlines()[1:-1])
    everything = "\n".join(setup.host.stdout)
    assert "PRIVATE KEY" not in everything
    assert key_body[:40] not in everything
    assert PASSPHRASE not in everything
    for _step, output in setup.host.calls:
        assert output["invocation"]["module_args"]["ca_key_passphrase"] is None  # never sent
    ca_key_body = "".join(Path(setup.ca_key).read_text().strip().splitlines()[1:-1])
    assert ca_key_body[:40] not in everything


def test_forced_reissue_makes_a_new_key_unless_reuse_key(setup):
    setup.converge()
    old_key, old_serial = setup.key_path.read_bytes(), load_certificate(setup.cert_path.read_bytes()).serial_number
    setup.host.calls.clear()
    result = setup.converge(force=True)
    assert result["changed"] is True
    assert result["reason"] == "forced"
    assert steps(setup.host) == ["inspect", "install"]
    assert setup.key_path.read_bytes() != old_key
    assert load_certificate(setup.cert_path.read_bytes()).serial_number != old_serial
    kept = setup.key_path.read_bytes()
    setup.converge(force=True, reuse_key=True)
    assert setup.key_path.read_bytes() == kept
    assert setup.converge()["changed"] is False


def test_renew_window_reissues_then_settles(setup):
    cert, key = setup.pki.leaf(cert_fixtures.request(), issued=cert_fixtures.now() - cert_fixtures.ago(340))
    setup.cert_path.write_bytes(certificate_pem(cert))
    setup.key_path.write_bytes(private_key_pem(key))
    setup.key_path.chmod(0o600)
    result = setup.converge()
    assert result["reason"] == "renew_window"
    assert result["reason_text"] == "the certificate expires within renew_before_days"
    assert result["certificate"]["days_left"] >= 364
    assert result["certificate"]["serial"] != format(cert.serial_number, "X")
    assert setup.converge()["changed"] is False


def test_ca_rotation_reissues_under_the_new_ca(setup):
    setup.converge()
    new_ca = create_ca("Permguard Test CA", key_spec())  # the same name, as a rotated CA may have
    new_cert, new_key = setup.pki.write_ca(new_ca, "ca2")
    bundle = setup.pki.write("bundle.pem", data=certificate_pem(new_ca.cert) + certificate_pem(setup.pki.ca.cert))
    result = setup.converge(ca_cert=new_cert, ca_key=new_key, ca_key_passphrase=None, trust_bundle=str(bundle))
    assert result["reason"] == "issuer_changed"
    assert leaf_issued_by(load_certificate(setup.cert_path.read_bytes()), new_ca.cert)
    assert len(load_certificates(setup.bundle_path.read_bytes())) == 2
    again = setup.converge(ca_cert=new_cert, ca_key=new_key, ca_key_passphrase=None, trust_bundle=str(bundle))
    assert again["changed"] is False


def test_bundle_change_alone_is_one_execution(setup):
    setup.converge()
    bundle = setup.pki.write(
        "bundle.pem", data=certificate_pem(setup.pki.ca.cert) + certificate_pem(setup.pki.other_ca.cert)
    )
    setup.host.calls.clear()
    result = setup.converge(trust_bundle=str(bundle))
    assert result["changed"] is True
    assert result["reason"] is None
    assert result["trust_bundle_changed"] is True
    assert steps(setup.host) == ["inspect"]
    assert setup.bundle_path.read_bytes() == bundle.read_bytes()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"common_name": "pg-2.example.org"}, "subject_changed"),
        ({"subject_alt_names": ["pg-1.example.org"]}, "subject_alt_names_changed"),
        ({"profile": "server_client"}, "usage_changed"),
        ({"key_type": "rsa"}, "key_type_changed"),
        ({"curve": "P-384"}, "key_type_changed"),
    ],
)
def test_changed_request_reissues(setup, change, reason):
    setup.converge()
    result = setup.converge(**change)
    assert result["reason"] == reason
    assert setup.converge(**change)["changed"] is False


def test_rsa_client_certificate(setup):
    result = setup.converge(profile="client", key_type="rsa", key_size=3072, subject_alt_names=[])
    assert result["certificate"]["key"] == "RSA 3072"
    assert setup.converge(profile="client", key_type="rsa", key_size=3072, subject_alt_names=[])["changed"] is False


# --------------------------------------------------------------------------- check and diff mode


def test_check_mode_reports_and_changes_nothing(setup):
    result = setup.converge(check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["reason"] == "certificate_missing"
    assert result["certificate"] is None
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["serial"] == "(new)"
    assert result["diff"]["after"]["subject_alt_names"][0] == "DNS:pg-1.example.org"
    assert steps(setup.host) == ["inspect"], "check mode never signs"
    assert list(setup.host_dir.iterdir()) == []

    setup.converge()
    before = setup.host_state()
    setup.host.calls.clear()
    forced = setup.converge(check_mode=True, force=True)
    assert forced["changed"] is True
    assert forced["reason"] == "forced"
    assert steps(setup.host) == ["inspect"]
    assert setup.host_state() == before
    assert setup.converge(check_mode=True)["changed"] is False


def test_diff_mode_shows_before_and_after(setup):
    setup.converge()
    old = load_certificate(setup.cert_path.read_bytes())
    result = setup.converge(diff=True, subject_alt_names=["pg-1.example.org", "IP:10.0.0.5"])
    before, after = result["diff"]["before"], result["diff"]["after"]
    assert set(before) == set(after) == {"subject", "subject_alt_names", "serial", "not_after", "issuer"}
    assert before["serial"] == format(old.serial_number, "X")
    assert after["serial"] == result["certificate"]["serial"] != before["serial"]
    assert after["subject_alt_names"] == ["DNS:pg-1.example.org", "IP:10.0.0.5"]
    assert before["subject_alt_names"] != after["subject_alt_names"]


# --------------------------------------------------------------------------- bad input: nothing on the host changes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"renew_before_days": 400}, r"renew_before_days \(400\) must be shorter than validity_days \(365\)"),
        ({"subject_alt_names": ["pg.example.org", "not_a_name!"]}, r"'not_a_name!' is not a valid DNS name"),
        ({"subject_alt_names": ["IP:300.1.1.1"]}, r"'IP:300.1.1.1' is not a valid IP address"),
        ({"ca_key_passphrase": "wrong"}, r"ca_key_passphrase does not decrypt ca_key "),
        ({"ca_key_passphrase": None}, r"ca_key .* is encrypted and no passphrase was given"),
        ({"ca_cert": "/nonexistent/ca.pem"}, r"ca_cert /nonexistent/ca.pem: No such file"),
        ({"key_size": 2048}, r"key_size applies only to key_type=rsa"),
    ],
)
def test_bad_input_fails_before_the_host_is_touched(setup, overrides, message):
    setup.converge()
    before = setup.host_state()
    setup.host.calls.clear()
    with pytest.raises(CertificateError, match=message):
        setup.converge(**overrides)
    assert setup.host.calls == []
    assert setup.host_state() == before


def test_ca_key_not_matching(setup):
    other_key = setup.pki.write_ca(setup.pki.other_ca, "other")[1]
    with pytest.raises(CertificateError, match=r"ca_key .*other-key.pem does not match ca_cert .*ca.pem"):
        setup.converge(ca_key=other_key, ca_key_passphrase=None)
    assert setup.host.calls == []


def test_ca_cert_that_is_not_a_ca(setup):
    leaf, leaf_key = setup.pki.leaf()
    cert = setup.pki.write("leaf.pem", leaf)
    key = setup.pki.write("leaf-key.pem", key=leaf_key)
    with pytest.raises(CertificateError, match="is not a CA: its basic constraints do not say CA:TRUE"):
        setup.converge(ca_cert=str(cert), ca_key=str(key), ca_key_passphrase=None)
    assert setup.host.calls == []


def test_trust_bundle_without_the_ca(setup):
    bundle = setup.pki.write("bundle.pem", setup.pki.other_ca.cert)
    with pytest.raises(CertificateError, match="does not contain ca_cert"):
        setup.converge(trust_bundle=str(bundle))


def test_internal_option_refused_from_a_task(setup):
    with pytest.raises(CertificateError, match="_controller is set by the action plugin"):
        setup.converge(_controller={"step": "install"})


@pytest.mark.parametrize("content", [b"this is not a key\n", b"", "certificate"])
def test_host_key_file_that_is_not_a_key(setup, content):
    setup.converge()
    if content == "certificate":
        content = setup.cert_path.read_bytes()
    setup.key_path.write_bytes(content)
    before = setup.host_state()
    for force in (False, True):
        result = setup.converge(force=force)
        assert result["failed"] is True
        assert f"key_path {setup.key_path}" in result["msg"]
        assert "refusing to replace it" in result["msg"]
        assert setup.host_state() == before


def test_host_key_path_unreadable(setup):
    setup.key_path.mkdir()
    result = setup.converge()
    assert result["failed"] is True
    assert f"key_path {setup.key_path} cannot be read" in result["msg"]
    assert not setup.cert_path.exists()


def test_missing_directory_is_named(setup):
    result = setup.converge(path=str(setup.host_dir / "nope" / "server.pem"))
    assert result["failed"] is True
    assert "the directory of path" in result["msg"]
    assert list(setup.host_dir.iterdir()) == []


def test_key_mode_for_others_is_refused(setup):
    result = setup.converge(key_mode="0644")
    assert result["failed"] is True
    assert "key_mode '0644' grants access to other users" in result["msg"]
    assert list(setup.host_dir.iterdir()) == []


def test_module_refuses_to_run_without_the_action_plugin(setup):
    args = setup.args()
    args.pop("ca_key_passphrase")
    output = setup.host.run({k: v for k, v in args.items() if v is not None})
    assert output["failed"] is True
    assert "runs through its action plugin" in output["msg"]


# --------------------------------------------------------------------------- failures keep the old pair


def test_failed_install_keeps_the_old_pair_and_the_next_run_recovers(setup):
    setup.converge()
    old = setup.host_state()
    plan = action.prepare(setup.args(force=True))

    def host_fails_at_install(module_args: dict) -> dict:
        if module_args["_controller"]["step"] == "install":
            return {"failed": True, "msg": "connection lost"}
        return setup.host.run(module_args)

    result = action.converge(plan, host_fails_at_install)
    assert result["failed"] is True
    assert result["reason"] == "forced"
    staged = setup.host_dir / "server-key.pem.staged"
    assert staged.exists()
    assert staged.stat().st_mode & 0o777 == 0o600
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        assert setup.host_state()[name] == old[name]
    cert = load_certificate(setup.cert_path.read_bytes())
    assert public_key_der(load_private_key(setup.key_path.read_bytes())) == public_key_der(cert.public_key())

    after = setup.converge()
    assert after["changed"] is True
    assert "removed a stale staged key" in after["msg"]
    assert not staged.exists()
    assert setup.converge()["changed"] is False


def test_signing_failure_leaves_the_pair(setup, monkeypatch):
    setup.converge()
    old = setup.host_state()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise CertificateError("CA refused")

    monkeypatch.setattr(action, "sign_csr", refuse)
    result = setup.converge(force=True)
    assert result["failed"] is True
    assert "signing failed: CA refused" in result["msg"]
    assert {k: v for k, v in setup.host_state().items() if not k.endswith(".staged")} == old


def test_interrupted_between_renames_is_finished(setup):
    """The certificate was replaced but the staged key not yet moved: the next run completes the pair."""
    setup.converge()
    plan = action.prepare(setup.args(force=True))
    inspected = setup.host.run(plan.module_args)
    certificate = action.sign(plan, inspected["csr"])
    staged = setup.host_dir / "server-key.pem.staged"
    setup.cert_path.write_text(certificate)  # as if the run stopped right after the certificate's rename
    result = setup.converge()
    assert "finished an interrupted install" in result["msg"]
    assert not staged.exists()
    assert result["reason"] is None
    cert = load_certificate(setup.cert_path.read_bytes())
    assert public_key_der(load_private_key(setup.key_path.read_bytes())) == public_key_der(cert.public_key())
    assert setup.converge()["changed"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_and_group_apply_to_key_staging_and_certificate(setup):
    setup.converge(owner="nobody", group="nogroup")
    for path in (setup.cert_path, setup.key_path, setup.bundle_path):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
    setup.converge(owner="nobody", group="nogroup", force=True)
    assert (setup.key_path.stat().st_uid, setup.key_path.stat().st_gid) == (65534, 65534)
    assert setup.key_path.stat().st_mode & 0o777 == 0o600
    os.chown(setup.key_path, 0, 0)
    fixed = setup.converge(owner="nobody", group="nogroup")
    assert fixed["changed"] is True
    assert fixed["reason"] is None
    assert setup.key_path.stat().st_uid == 65534


def test_unknown_owner_is_named(setup):
    result = setup.converge(owner="no-such-user-here")
    assert result["failed"] is True
    assert "no-such-user-here" in result["msg"]


def test_intermediate_ca_chain_is_written(setup):
    root = setup.pki.ca
    intermediate = create_ca("Permguard Issuing CA", key_spec())
    # re-sign the intermediate's certificate by the root, keeping its key and extensions
    builder = (
        x509.CertificateBuilder()
        .subject_name(intermediate.cert.subject)
        .issuer_name(root.cert.subject)
        .public_key(intermediate.key.public_key())
        .serial_number(intermediate.cert.serial_number)
        .not_valid_before(cert_fixtures.now() - cert_fixtures.ago(1))
        .not_valid_after(cert_fixtures.now() + cert_fixtures.ago(900))
    )
    for extension in intermediate.cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    inter_cert = builder.sign(root.key, hashes.SHA256())
    cert_file = setup.pki.write("inter.pem", inter_cert)
    key_file = setup.pki.write("inter-key.pem", key=intermediate.key)
    result = setup.converge(ca_cert=str(cert_file), ca_key=str(key_file), ca_key_passphrase=None)
    assert result["changed"] is True
    chain = load_certificates(setup.cert_path.read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=pg-1.example.org", "CN=Permguard Issuing CA"]
    again = setup.converge(ca_cert=str(cert_file), ca_key=str(key_file), ca_key_passphrase=None)
    assert again["changed"] is False


# --------------------------------------------------------------------------- Debian 12 targets


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian 12's python3")
def test_host_side_runs_on_debian12_cryptography(setup, tmp_path):
    """Debian 12 targets: Python 3.11 and cryptography 38 from apt; the controller keeps its newer cryptography."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import cryptography"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("Debian's python3-cryptography is not installed")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ansible").symlink_to(Path(ansible.__file__).parent)  # ansible's module_utils only, as AnsiballZ ships
    setup.host.python = SYSTEM_PYTHON
    setup.host.path = (str(shim),)
    first = setup.converge(subject_alt_names=["pg-1.example.org", "::1"])
    assert first["changed"] is True, first
    setup.host.calls.clear()
    assert setup.converge(subject_alt_names=["pg-1.example.org", "::1"])["changed"] is False
    assert steps(setup.host) == ["inspect"]
    renewed = setup.converge(subject_alt_names=["pg-1.example.org", "::1"], key_type="rsa")
    assert renewed["reason"] == "key_type_changed"


# --------------------------------------------------------------------------- documentation


def test_documentation_matches_argument_spec():
    """What ansible-test validate-modules checks first: every option documented with its type, default, choices."""
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    spec = module.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, entry in spec.items():
        assert options[name]["type"] == entry["type"], name
        assert options[name].get("default") == entry.get("default"), name
        assert options[name].get("required", False) == entry.get("required", False), name
        assert options[name].get("choices") == entry.get("choices"), name
    assert spec["ca_key_passphrase"]["no_log"] is True
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "full"
    assert doc["attributes"]["action"]["support"] == "full"
    assert yaml.safe_load(module.EXAMPLES)
    assert yaml.safe_load(module.RETURN)["reason"]["returned"] == "always"
