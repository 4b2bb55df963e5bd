"""permguard.secure.ca run as Ansible runs it: creation, bring-your-own, and rotation with overlap."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cert_fixtures.py beside conftest.py

import cert_fixtures
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    certificate_pem,
    create_ca,
    fingerprint_sha256,
    is_encrypted_pem,
    key_spec,
    leaf_issued_by,
    load_ca,
    load_certificate,
    load_certificates,
)
from ansible_collections.permguard.secure.plugins.modules import ca as module

MODULE = "ansible_collections.permguard.secure.plugins.modules.ca"
PASSPHRASE = "vault-ca-passphrase"
_counter = itertools.count()


class Controller:
    """Runs the ca module with JSON arguments against one CA directory."""

    def __init__(self, tmp_path: Path, collections_root: str) -> None:
        self.tmp_path = tmp_path
        self.collections_root = collections_root
        self.dir = tmp_path / "pki"
        self.pki = cert_fixtures.Pki(tmp_path / "byo")
        self.outputs: list = []

    def __call__(self, check_mode: bool = False, **args: object) -> dict:
        args.setdefault("path", str(self.dir))
        args_file = self.tmp_path / f"args-{next(_counter)}.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode)}))
        env = dict(os.environ, PYTHONPATH=self.collections_root)
        proc = subprocess.run(
            [sys.executable, "-m", MODULE, str(args_file)], capture_output=True, text=True, env=env, check=False
        )
        self.outputs.append(proc.stdout + proc.stderr)
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"module printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert (proc.returncode != 0) == bool(output.get("failed")), proc.stdout
        return output

    def tree(self) -> dict:
        """Every file under the CA directory with its bytes (links as their target)."""
        if not self.dir.exists():
            return {}
        return {
            str(path.relative_to(self.dir)): os.readlink(path) if path.is_symlink() else path.read_bytes()
            for path in sorted(self.dir.rglob("*"))
            if path.is_symlink() or path.is_file()
        }

    def bundle(self) -> list:
        return load_certificates((self.dir / "bundle.pem").read_bytes())

    def statuses(self) -> list:
        return [entry["status"] for entry in json.loads((self.dir / "state.json").read_text())["cas"]]


@pytest.fixture
def ca(tmp_path, collections_root) -> Controller:
    return Controller(tmp_path, collections_root)


def issue_leaf(result: dict, name: str, workdir: Path, passphrase: str | None = PASSPHRASE) -> Path:
    """A leaf signed by the active CA of a result, written to a file: a certificate in service."""
    authority = load_ca(Path(result["cert"]).read_bytes(), Path(result["key"]).read_bytes(), passphrase)
    pki = cert_fixtures.Pki(workdir)
    cert = pki.leaf(ca=authority)[0]
    return pki.write(f"{name}.pem", cert)


# --------------------------------------------------------------------------- creation


def test_creates_a_root_ca_then_changes_nothing(ca):
    result = ca(passphrase=PASSPHRASE)
    assert result["changed"] is True, result
    ident = result["active"]
    assert result["cert"] == str(ca.dir / "cas" / ident / "ca.pem")
    assert result["key"] == str(ca.dir / "cas" / ident / "ca-key.pem")
    assert result["bundle"] == str(ca.dir / "bundle.pem")
    cert = load_certificate(Path(result["cert"]).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Permguard Root CA"
    assert fingerprint_sha256(cert).replace(":", "").lower().startswith(ident)
    authority = load_ca(Path(result["cert"]).read_bytes(), Path(result["key"]).read_bytes(), PASSPHRASE)
    assert authority.key.curve.name == "secp256r1"
    assert is_encrypted_pem(Path(result["key"]).read_bytes())
    assert (ca.dir.stat().st_mode & 0o777, (ca.dir / "cas" / ident).stat().st_mode & 0o777) == (0o700, 0o700)
    assert Path(result["key"]).stat().st_mode & 0o777 == 0o600
    assert os.readlink(ca.dir / "active") == f"cas/{ident}"
    assert [c.subject for c in ca.bundle()] == [cert.subject]
    assert result["cas"] == [
        {
            "id": ident,
            "status": "active",
            "in_bundle": True,
            "subject": "CN=Permguard Root CA",
            "sha256": fingerprint_sha256(cert),
            "not_after": result["cas"][0]["not_after"],
            "days_left": result["cas"][0]["days_left"],
            "cert": result["cert"],
        }
    ]
    assert result["cas"][0]["days_left"] in (3649, 3650)
    tree = ca.tree()
    again = ca(passphrase=PASSPHRASE)
    assert again["changed"] is False, again
    assert again["active"] == ident
    assert ca.tree() == tree
    assert PASSPHRASE not in "".join(ca.outputs)


def test_options_of_a_generated_ca(ca):
    result = ca(common_name="Example Fleet CA", key_type="rsa", validity_days=730)
    cert = load_certificate(Path(result["cert"]).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Example Fleet CA"
    assert cert.public_key().key_size == 3072
    assert result["cas"][0]["days_left"] in (729, 730)
    assert not is_encrypted_pem(Path(result["key"]).read_bytes())


def test_check_mode_creates_nothing(ca):
    result = ca(check_mode=True)
    assert result["changed"] is True
    assert result["active"] is None
    assert result["cert"] is None
    assert result["cas"][0]["status"] == "active"
    assert not ca.dir.exists()


def test_drifted_bundle_and_link_are_repaired(ca):
    result = ca()
    (ca.dir / "bundle.pem").write_text("")
    (ca.dir / "active").unlink()
    assert ca(check_mode=True)["changed"] is True
    assert (ca.dir / "bundle.pem").read_text() == ""
    repaired = ca()
    assert repaired["changed"] is True
    assert os.readlink(ca.dir / "active") == f"cas/{result['active']}"
    assert len(ca.bundle()) == 1
    assert ca()["changed"] is False


# --------------------------------------------------------------------------- passphrases


def test_wrong_passphrase_is_named(ca):
    ca(passphrase=PASSPHRASE)
    tree = ca.tree()
    result = ca(passphrase="wrong")
    assert result["failed"] is True
    assert "passphrase does not decrypt" in result["msg"]
    assert "ca-key.pem" in result["msg"]
    missing = ca()
    assert missing["failed"] is True
    assert "is encrypted and no passphrase was given" in missing["msg"]
    assert ca.tree() == tree


# --------------------------------------------------------------------------- bring your own CA


def test_bring_your_own_ca(ca):
    cert, key = ca.pki.write_ca(ca.pki.ca, "corp", "byo-secret")
    result = ca(import_cert=cert, import_key=key, passphrase="byo-secret")
    assert result["changed"] is True, result
    assert result["cas"][0]["sha256"] == fingerprint_sha256(ca.pki.ca.cert)
    assert Path(result["cert"]).read_bytes() == certificate_pem(ca.pki.ca.cert)
    stored = load_ca(Path(result["cert"]).read_bytes(), Path(result["key"]).read_bytes(), "byo-secret")
    assert stored.key.private_numbers() == ca.pki.ca.key.private_numbers()
    assert ca(import_cert=cert, import_key=key, passphrase="byo-secret")["changed"] is False
    assert ca(passphrase="byo-secret")["changed"] is False
    other_cert, other_key = ca.pki.write_ca(ca.pki.other_ca, "other")
    refused = ca(import_cert=other_cert, import_key=other_key, passphrase="byo-secret")
    assert refused["failed"] is True
    assert "use rotation=introduce" in refused["msg"]


def test_byo_that_is_not_a_ca_is_refused(ca):
    leaf, leaf_key = ca.pki.leaf()
    cert = ca.pki.write("leaf.pem", leaf)
    key = ca.pki.write("leaf-key.pem", key=leaf_key)
    result = ca(import_cert=str(cert), import_key=str(key))
    assert result["failed"] is True
    assert f"import_cert {cert}" in result["msg"]
    assert "is not a CA: its basic constraints do not say CA:TRUE" in result["msg"]
    assert not ca.dir.exists()


def test_byo_key_not_matching_is_refused(ca):
    cert = ca.pki.write_ca(ca.pki.ca, "corp")[0]
    other_key = ca.pki.write_ca(ca.pki.other_ca, "other")[1]
    result = ca(import_cert=cert, import_key=other_key)
    assert result["failed"] is True
    assert f"import_key {other_key} does not match import_cert {cert}" in result["msg"]
    assert not ca.dir.exists()


def test_byo_wrong_passphrase_is_refused(ca):
    cert, key = ca.pki.write_ca(ca.pki.ca, "corp", "byo-secret")
    result = ca(import_cert=cert, import_key=key, passphrase="nope")
    assert result["failed"] is True
    assert f"passphrase does not decrypt import_key {key}" in result["msg"]
    assert not ca.dir.exists()


def test_import_needs_both_files(ca):
    cert = ca.pki.write_ca(ca.pki.ca, "corp")[0]
    result = ca(import_cert=cert)
    assert result["failed"] is True
    assert "import_cert" in result["msg"]
    assert "import_key" in result["msg"]


# --------------------------------------------------------------------------- rotation with overlap


def test_rotation_with_overlap(ca, tmp_path):
    first = ca(passphrase=PASSPHRASE)
    old_id = first["active"]
    old_ca = load_certificate(Path(first["cert"]).read_bytes())
    leaf_old = issue_leaf(first, "leaf-old", tmp_path / "leaves")

    # 1. introduce: the new CA joins the bundle, the old one keeps signing
    introduced = ca(rotation="introduce", passphrase=PASSPHRASE)
    assert introduced["changed"] is True
    assert introduced["active"] == old_id
    new_entry = introduced["cas"][1]
    assert (new_entry["status"], new_entry["in_bundle"]) == ("introduced", True)
    new_id = new_entry["id"]
    assert {ca_cert.subject.rfc4514_string() for ca_cert in ca.bundle()} == {"CN=Permguard Root CA"}
    assert len(ca.bundle()) == 2
    assert any(leaf_issued_by(load_certificate(leaf_old.read_bytes()), c) for c in ca.bundle())
    assert ca(rotation="introduce", passphrase=PASSPHRASE)["changed"] is False

    # 2. activate: the new CA signs, the old one stays trusted
    activated = ca(rotation="activate", passphrase=PASSPHRASE)
    assert activated["changed"] is True
    assert activated["active"] == new_id
    assert activated["cert"] == str(ca.dir / "cas" / new_id / "ca.pem")
    assert os.readlink(ca.dir / "active") == f"cas/{new_id}"
    assert [entry["status"] for entry in activated["cas"]] == ["trusted", "active"]
    assert len(ca.bundle()) == 2
    new_ca = load_certificate(Path(activated["cert"]).read_bytes())
    assert ca.bundle()[0] == new_ca  # the active CA comes first
    assert ca(rotation="activate", passphrase=PASSPHRASE)["changed"] is False

    # 3. retire is refused while a leaf in use still comes from the old CA, as a path or as PEM
    tree = ca.tree()
    refused = ca(rotation="retire", passphrase=PASSPHRASE, leaves_in_use=[str(leaf_old)])
    assert refused["failed"] is True
    assert f"CA {old_id} (CN=Permguard Root CA) still issued {leaf_old}" in refused["msg"]
    assert "reissue them under the active CA first" in refused["msg"]
    refused_pem = ca(rotation="retire", passphrase=PASSPHRASE, leaves_in_use=[leaf_old.read_text()])
    assert refused_pem["failed"] is True
    assert "CN=pg-1.example.org (serial" in refused_pem["msg"]
    assert ca.tree() == tree

    # ... and done once the leaves are reissued under the new CA
    leaf_new = issue_leaf(activated, "leaf-new", tmp_path / "leaves")
    assert ca(rotation="retire", passphrase=PASSPHRASE, leaves_in_use=[str(leaf_new)], check_mode=True)["changed"]
    assert ca.tree() == tree
    retired = ca(rotation="retire", passphrase=PASSPHRASE, leaves_in_use=[str(leaf_new)])
    assert retired["changed"] is True, retired
    assert [entry["status"] for entry in retired["cas"]] == ["retired", "active"]
    assert [entry["in_bundle"] for entry in retired["cas"]] == [False, True]
    assert ca.bundle() == [new_ca]
    assert (ca.dir / "cas" / old_id / "ca.pem").exists()  # kept on disk, out of the bundle
    assert ca(rotation="retire", passphrase=PASSPHRASE)["changed"] is False
    assert ca(passphrase=PASSPHRASE)["changed"] is False
    assert old_ca not in ca.bundle()
    assert ca.statuses() == ["retired", "active"]


def test_every_step_keeps_the_served_leaf_verifiable(ca, tmp_path):
    """At no step does a client holding the current bundle lose the CA of the certificate in service."""
    served = issue_leaf(ca(), "served", tmp_path / "leaves", passphrase=None)

    def verifiable() -> bool:
        leaf = load_certificate(served.read_bytes())
        return any(leaf_issued_by(leaf, c) for c in ca.bundle())

    assert verifiable()
    ca(rotation="introduce")
    assert verifiable()
    activated = ca(rotation="activate")
    assert verifiable()
    served = issue_leaf(activated, "served", tmp_path / "leaves", passphrase=None)  # reissued before retiring
    assert verifiable()
    assert ca(rotation="retire", leaves_in_use=[str(served)])["changed"] is True
    assert verifiable()


def test_introduce_a_bring_your_own_ca(ca):
    ca()
    cert, key = ca.pki.write_ca(ca.pki.other_ca, "corp")
    result = ca(rotation="introduce", import_cert=cert, import_key=key)
    assert result["changed"] is True
    assert result["cas"][1]["sha256"] == fingerprint_sha256(ca.pki.other_ca.cert)
    assert ca(rotation="introduce", import_cert=cert, import_key=key)["changed"] is False
    cert2, key2 = ca.pki.write_ca(ca.pki.ca, "corp2")
    clash = ca(rotation="introduce", import_cert=cert2, import_key=key2)
    assert clash["failed"] is True
    assert "already introduced and waits for rotation=activate" in clash["msg"]


def test_rotation_in_check_mode_changes_nothing(ca):
    ca()
    tree = ca.tree()
    result = ca(rotation="introduce", check_mode=True)
    assert result["changed"] is True
    assert result["cas"][1]["id"] is None
    assert ca.tree() == tree
    assert ca(rotation="activate", check_mode=True)["changed"] is False


def test_rotation_before_any_ca(ca):
    for step in ("introduce", "activate", "retire"):
        result = ca(rotation=step)
        assert result["failed"] is True
        assert "has no CA yet: run without rotation first" in result["msg"]
    assert not ca.dir.exists()


def test_expired_active_ca_warns_and_can_be_rotated(ca):
    old = create_ca("Old CA", key_spec(), validity_days=1, now=cert_fixtures.now() - cert_fixtures.ago(3))
    cert, key = ca.pki.write_ca(old, "old")
    # import refuses an expired CA, so lay the directory out as an earlier run would have
    ident = module.ca_id(old.cert)
    (ca.dir / "cas" / ident).mkdir(parents=True)
    (ca.dir / "cas" / ident / "ca.pem").write_bytes(Path(cert).read_bytes())
    (ca.dir / "cas" / ident / "ca-key.pem").write_bytes(Path(key).read_bytes())
    state = {"version": 1, "cas": [{"id": ident, "status": "active", "source": "generated"}]}
    (ca.dir / "state.json").write_text(json.dumps(state))
    result = ca()
    assert result["changed"] is True  # bundle and link written
    assert any("expired" in str(w) for w in result["warnings"])
    assert ca(rotation="introduce")["changed"] is True
    assert ca(rotation="activate")["active"] != ident


def test_unknown_state_is_refused(ca):
    ca.dir.mkdir()
    (ca.dir / "state.json").write_text('{"version": 99, "cas": []}')
    result = ca()
    assert result["failed"] is True
    assert "is not a state file of this module" in result["msg"]


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(module.DOCUMENTATION)
    options, spec = doc["options"], module.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, entry in spec.items():
        assert options[name]["type"] == entry["type"], name
        assert options[name].get("default") == entry.get("default"), name
        assert options[name].get("required", False) == entry.get("required", False), name
        assert options[name].get("choices") == entry.get("choices"), name
    assert spec["passphrase"]["no_log"] is True
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert yaml.safe_load(module.EXAMPLES)
    assert set(yaml.safe_load(module.RETURN)) >= {"cert", "key", "bundle", "active", "cas"}
