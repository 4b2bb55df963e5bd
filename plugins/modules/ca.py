#!/usr/bin/python
# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ca
short_description: Keep the collection's certificate authority and its trust bundle in a controller directory
version_added: 0.1.0
description:
  - Manages a CA directory on the controller (run it with C(delegate_to=localhost) and C(run_once=true)) - creates
    a root CA, or adopts a bring-your-own CA, and keeps C(bundle.pem), the bundle of every CA currently trusted.
  - "Rotates the CA with overlap, in explicit steps given by O(rotation):
    C(introduce) a new CA - it joins the bundle but does not sign yet;
    C(activate) it - it signs new leaves, the old CA stays in the bundle;
    C(retire) the old CA - it leaves the bundle, refused while a certificate in O(leaves_in_use) is still issued
    by it. Between the steps, redistribute the bundle and reissue the leaves (M(permguard.secure.certificate) reissues
    every leaf that the active CA did not sign), so no client with a current bundle ever fails a handshake."
  - "Layout: C(<path>/cas/<id>/ca.pem) and C(ca-key.pem) per CA (C(<id>) is the start of the certificate's SHA-256
    fingerprint), C(<path>/active) (a symbolic link to the active CA's directory), C(<path>/bundle.pem) and
    C(<path>/state.json) (each CA's status - C(active), C(introduced), C(trusted) or C(retired) - and when it
    changed). Directories are 0700, keys 0600, certificates and the bundle 0644. Retired CAs stay on disk, out of
    the bundle."
  - Every run checks the active CA - its certificate is a CA, its key decrypts with O(passphrase) and matches - and
    rewrites C(bundle.pem) and C(active) if they drifted from C(state.json).
author:
  - permguard.secure maintainers (@permguard)
requirements:
  - cryptography >= 38.0 on the controller
attributes:
  check_mode:
    support: full
    description: Reports what would change (new CAs show with a null id); nothing is written.
  diff_mode:
    support: none
    description: The directory's changes are listed in RV(msg); there is no diff.
  platform:
    support: full
    platforms: posix
    description: Needs a POSIX file system (modes, owners, atomic renames).
options:
  path:
    description:
      - The CA directory on the controller. It is created (0700) when missing.
    type: path
    required: true
  rotation:
    description:
      - One rotation step. Without it, the module only ensures that an active CA exists (creating or importing one
        into an empty directory).
      - C(introduce) adds a new CA (generated, or O(import_cert)/O(import_key)) to the bundle without letting it
        sign. Repeated while that CA waits for activation, it changes nothing.
      - C(activate) makes the introduced CA the one that signs; the previous one stays trusted. Without an introduced
        CA it changes nothing.
      - C(retire) removes every trusted, no longer active CA from the bundle - unless a certificate in
        O(leaves_in_use) is still issued by it. Without such a CA it changes nothing.
    type: str
    choices: [introduce, activate, retire]
  common_name:
    description:
      - Subject common name of a CA the module generates.
    type: str
    default: Permguard Root CA
  key_type:
    description:
      - Kind of key of a CA the module generates.
    type: str
    choices: [ecdsa, rsa]
    default: ecdsa
  curve:
    description:
      - Curve of an ECDSA CA key; C(P-256) when not set.
    type: str
    choices: [P-256, P-384]
  key_size:
    description:
      - Size in bits of an RSA CA key; C(3072) when not set.
    type: int
    choices: [2048, 3072, 4096]
  validity_days:
    description:
      - Validity of a CA the module generates, in days.
    type: int
    default: 3650
  passphrase:
    description:
      - Passphrase of the CA keys, for example from Ansible Vault. New and imported keys are stored encrypted with
        it; existing keys are checked with it, and a wrong passphrase fails the task.
      - Without it the keys are stored unencrypted (0600).
    type: str
  import_cert:
    description:
      - Bring your own CA - path on the controller of its certificate. It must be a CA (C(CA:TRUE) and keyCertSign)
        that is valid now. Adopted into an empty directory, or introduced with O(rotation=introduce).
      - An intermediate CA is accepted; the certificates it signs then carry it after the leaf.
    type: path
  import_key:
    description:
      - Path on the controller of the private key of O(import_cert). It must match the certificate; when encrypted,
        O(passphrase) must decrypt it.
    type: path
  leaves_in_use:
    description:
      - Certificates still in service, as controller paths or PEM text. O(rotation=retire) refuses to retire a CA
        that issued any of them, and names them.
    type: list
    elements: str
    default: []
notes:
  - The CA key never leaves this directory; M(permguard.secure.certificate) reads it on the controller to sign.
  - Each rotation step is idempotent on its own, but running the three steps again starts a new rotation. Drive a
    rotation with a variable that names the step, with the bundle redistributed and the leaves reissued between
    steps.
seealso:
  - module: permguard.secure.certificate
"""

EXAMPLES = r"""
- name: Create the CA (once; later runs only check it)
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
    passphrase: "{{ vault_permguard_ca_passphrase }}"
  delegate_to: localhost
  run_once: true
  register: permguard_ca

- name: Adopt the organisation's CA instead
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
    import_cert: /secure/corp-issuing-ca.pem
    import_key: /secure/corp-issuing-ca-key.pem
    passphrase: "{{ vault_corp_ca_passphrase }}"
  delegate_to: localhost
  run_once: true

- name: Rotation step 1 of 3 - introduce a new CA (then push bundle.pem to every host)
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
    rotation: introduce
    passphrase: "{{ vault_permguard_ca_passphrase }}"
  delegate_to: localhost
  run_once: true

- name: Rotation step 2 of 3 - the new CA signs (then reissue every leaf)
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
    rotation: activate
    passphrase: "{{ vault_permguard_ca_passphrase }}"
  delegate_to: localhost
  run_once: true

- name: Read the certificate each host serves
  ansible.builtin.slurp:
    src: /etc/permguard/tls/server.pem
  register: served_certificate

- name: Rotation step 3 of 3 - retire the old CA once no leaf uses it (then push bundle.pem again)
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
    rotation: retire
    passphrase: "{{ vault_permguard_ca_passphrase }}"
    leaves_in_use: >-
      {{ ansible_play_hosts | map('extract', hostvars, ['served_certificate', 'content']) | map('b64decode') | list }}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
cert:
  description: Path of the active CA's certificate (null in check mode before the first CA exists).
  returned: always
  type: str
  sample: /srv/ansible/pki/cas/3f2a9c0d1e4b5a67/ca.pem
key:
  description: Path of the active CA's private key.
  returned: always
  type: str
  sample: /srv/ansible/pki/cas/3f2a9c0d1e4b5a67/ca-key.pem
bundle:
  description: Path of the bundle of every trusted CA.
  returned: always
  type: str
  sample: /srv/ansible/pki/bundle.pem
active:
  description: Id of the active CA.
  returned: always
  type: str
  sample: 3f2a9c0d1e4b5a67
cas:
  description: Every CA of the directory, in the order they came in, retired ones included.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Id of the CA (the start of its SHA-256 fingerprint); null for one that check mode would create.
      type: str
    status:
      description: C(active), C(introduced), C(trusted) or C(retired).
      type: str
    in_bundle:
      description: Whether the CA is in the trust bundle.
      type: bool
    subject:
      description: Subject, RFC 4514.
      type: str
    sha256:
      description: SHA-256 fingerprint, colon-separated upper-case hexadecimal.
      type: str
    not_after:
      description: End of validity, UTC, ISO 8601.
      type: str
    days_left:
      description: Whole days until C(not_after).
      type: int
    cert:
      description: Path of its certificate.
      type: str
msg:
  description: What happened.
  returned: always
  type: str
"""

import datetime
import json
import os
from typing import Any, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    CertificateAuthority,
    CertificateError,
    ca_problem,
    certificate_facts,
    certificate_pem,
    check_ca_certificate,
    create_ca,
    fingerprint_sha256,
    is_encrypted_pem,
    key_spec,
    leaf_issued_by,
    load_certificate,
    load_private_key,
    private_key_pem,
    public_key_der,
    validity,
    write_atomically,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "path": {"type": "path", "required": True},
    "rotation": {"type": "str", "choices": ["introduce", "activate", "retire"]},
    "common_name": {"type": "str", "default": "Permguard Root CA"},
    "key_type": {"type": "str", "choices": ["ecdsa", "rsa"], "default": "ecdsa", "no_log": False},
    "curve": {"type": "str", "choices": ["P-256", "P-384"]},
    "key_size": {"type": "int", "choices": [2048, 3072, 4096], "no_log": False},
    "validity_days": {"type": "int", "default": 3650},
    "passphrase": {"type": "str", "no_log": True},
    "import_cert": {"type": "path"},
    "import_key": {"type": "path", "no_log": False},
    "leaves_in_use": {"type": "list", "elements": "str", "default": []},
}

IN_BUNDLE = ("active", "introduced", "trusted")
STATE_VERSION = 1
EXPIRY_WARNING_DAYS = 365


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def ca_id(cert: Any) -> str:
    """Directory name of a CA: the first 16 hex digits of its SHA-256 fingerprint."""
    return fingerprint_sha256(cert).replace(":", "")[:16].lower()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: {exc.strerror or exc}") from None


class CaDirectory:
    """The CA directory: its state, the changes of one run, and writing them."""

    def __init__(self, path: str, passphrase: Optional[str], check_mode: bool) -> None:
        self.path = path
        self.passphrase = passphrase
        self.check_mode = check_mode
        self.state = self._load_state()
        self.new: Dict[str, CertificateAuthority] = {}  # CAs made or imported in this run, by id
        self.changes: List[str] = []
        self.warnings: List[str] = []

    # ----------------------------------------------------------------- reading

    @property
    def state_path(self) -> str:
        """Path of ``state.json``."""
        return os.path.join(self.path, "state.json")

    def cert_path(self, ident: str) -> str:
        """Path of a CA's certificate."""
        return os.path.join(self.path, "cas", ident, "ca.pem")

    def key_path(self, ident: str) -> str:
        """Path of a CA's key."""
        return os.path.join(self.path, "cas", ident, "ca-key.pem")

    def _load_state(self) -> Dict[str, Any]:
        if not os.path.exists(self.state_path):
            if os.path.isdir(os.path.join(self.path, "cas")):
                raise CertificateError(f"{self.path} has a cas/ directory but no state.json; restore it from backup")
            return {"version": STATE_VERSION, "cas": []}
        try:
            state = json.loads(_read(self.state_path, "state"))
            statuses = [entry["status"] for entry in state["cas"]]
            if state.get("version") != STATE_VERSION or not all(
                status in (*IN_BUNDLE, "retired") for status in statuses
            ):
                raise ValueError("unknown version or status")
        except (ValueError, KeyError, TypeError) as exc:
            raise CertificateError(f"{self.state_path} is not a state file of this module: {exc}") from None
        if statuses and statuses.count("active") != 1:
            raise CertificateError(f"{self.state_path} must name exactly one active CA")
        return state

    def entries(self, *statuses: str) -> List[Dict[str, Any]]:
        """State entries with one of ``statuses`` (all when none is given), in the order they came in."""
        return [entry for entry in self.state["cas"] if not statuses or entry["status"] in statuses]

    def certificate(self, ident: str) -> Any:
        """The certificate of a CA of the directory (or of this run)."""
        if ident in self.new:
            return self.new[ident].cert
        return load_certificate(
            _read(self.cert_path(ident), "CA certificate"), f"CA certificate {self.cert_path(ident)}"
        )

    def check_signing_ca(self, ident: str, usable_now: bool = True) -> None:
        """The CA is a CA whose key decrypts with the passphrase and matches; expired only when not ``usable_now``.

        The active CA is checked with ``usable_now=False``: an expired one only warns, so that a rotation can
        still replace it.
        """
        if ident in self.new:
            return
        cert = self.certificate(ident)
        if usable_now:
            check_ca_certificate(cert, f"CA certificate {self.cert_path(ident)}")
        else:
            problem = ca_problem(cert)
            if problem:
                raise CertificateError(f"CA certificate {self.cert_path(ident)} is not a CA: {problem}")
            not_after = validity(cert)[1]
            if not_after <= _now():
                self.warnings.append(f"CA {ident} expired on {not_after:%Y-%m-%d}: rotate it out")
        self._load_key(_read(self.key_path(ident), "CA key"), self.key_path(ident), cert)

    def _load_key(self, data: bytes, path: str, cert: Any) -> Any:
        encrypted = is_encrypted_pem(data)
        if self.passphrase and not encrypted:
            self.warnings.append(f"{path} is not encrypted although a passphrase is set")
        key = load_private_key(data, self.passphrase if encrypted else None, path, "passphrase")
        if public_key_der(key) != public_key_der(cert.public_key()):
            raise CertificateError(f"the key {path} does not match its certificate ({cert.subject.rfc4514_string()})")
        return key

    # ----------------------------------------------------------------- changes

    def add(self, ca: CertificateAuthority, status: str, source: str) -> str:
        """Record a new CA with ``status``; returns its id."""
        ident = ca_id(ca.cert)
        if any(entry["id"] == ident for entry in self.state["cas"]):
            raise CertificateError(f"CA {ident} ({ca.cert.subject.rfc4514_string()}) is already in {self.path}")
        self.new[ident] = ca
        self.state["cas"].append({"id": ident, "status": status, "source": source, status: _iso_now()})
        self.changes.append(f"{'created' if source == 'generated' else 'imported'} CA {ident} as {status}")
        return ident

    def set_status(self, entry: Dict[str, Any], status: str) -> None:
        """Move a CA to ``status``, remembering when."""
        entry["status"] = status
        entry[status] = _iso_now()
        self.changes.append(f"CA {entry['id']} is now {status}")

    # ----------------------------------------------------------------- writing

    def bundle_pem(self) -> bytes:
        """Every trusted CA: the active one first, then the introduced, then the older trusted ones."""
        order = {"active": 0, "introduced": 1, "trusted": 2}
        entries = sorted(self.entries(*IN_BUNDLE), key=lambda entry: order[entry["status"]])
        return b"".join(certificate_pem(self.certificate(entry["id"])) for entry in entries)

    def write(self) -> bool:
        """Write new CAs, ``state.json``, ``bundle.pem`` and the ``active`` link; True when anything changed."""
        changed = bool(self.changes)
        if self.check_mode:
            return changed or self._drifted()
        for directory in (self.path, os.path.join(self.path, "cas")):
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
        for ident, ca in self.new.items():
            os.makedirs(os.path.dirname(self.cert_path(ident)), 0o700, exist_ok=True)
            write_atomically(self.key_path(ident), private_key_pem(ca.key, self.passphrase), 0o600)
            write_atomically(self.cert_path(ident), ca.cert_pem, 0o644)
        if changed:
            state = json.dumps(self.state, indent=2, sort_keys=True).encode("utf-8") + b"\n"
            write_atomically(self.state_path, state, 0o644)
        bundle_path = os.path.join(self.path, "bundle.pem")
        if _read_or_none(bundle_path) != self.bundle_pem():
            write_atomically(bundle_path, self.bundle_pem(), 0o644)
            changed = True
        return self._link_active() or changed

    def _drifted(self) -> bool:
        bundle = _read_or_none(os.path.join(self.path, "bundle.pem"))
        return bool(self.state["cas"]) and (bundle != self.bundle_pem() or self._active_link_wrong())

    def _active_link_wrong(self) -> bool:
        link = os.path.join(self.path, "active")
        target = os.path.join("cas", self.active_id or "")
        return not os.path.islink(link) or os.readlink(link) != target

    def _link_active(self) -> bool:
        if not self._active_link_wrong():
            return False
        link = os.path.join(self.path, "active")
        tmp = link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("cas", self.active_id or ""), tmp)
        os.replace(tmp, link)
        return True

    # ----------------------------------------------------------------- results

    @property
    def active_id(self) -> Optional[str]:
        """Id of the active CA, if any."""
        active = self.entries("active")
        return active[0]["id"] if active else None

    def describe(self) -> List[Dict[str, Any]]:
        """Every CA with status, fingerprint and expiry."""
        listing = []
        for entry in self.state["cas"]:
            facts = certificate_facts(self.certificate(entry["id"]))
            unwritten = self.check_mode and entry["id"] in self.new
            listing.append(
                {
                    "id": None if unwritten else entry["id"],
                    "status": entry["status"],
                    "in_bundle": entry["status"] in IN_BUNDLE,
                    "subject": facts["subject"],
                    "sha256": facts["sha256"],
                    "not_after": facts["not_after"],
                    "days_left": facts["days_left"],
                    "cert": None if unwritten else self.cert_path(entry["id"]),
                }
            )
        return listing


def _iso_now() -> str:
    return _now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_or_none(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def obtain_ca(params: Dict[str, Any]) -> tuple:
    """The CA to add: (CA, 'imported') from import_cert/import_key, or (CA, 'generated') made now."""
    if params["import_cert"]:
        cert_path, key_path = params["import_cert"], params["import_key"]
        cert = load_certificate(_read(cert_path, "import_cert"), f"import_cert {cert_path}")
        check_ca_certificate(cert, f"import_cert {cert_path}")
        data = _read(key_path, "import_key")
        passphrase = params["passphrase"] if is_encrypted_pem(data) else None
        key = load_private_key(data, passphrase, f"import_key {key_path}", "passphrase")
        if public_key_der(key) != public_key_der(cert.public_key()):
            raise CertificateError(f"import_key {key_path} does not match import_cert {cert_path}")
        return CertificateAuthority(cert, key), "imported"
    if params["key_type"] == "rsa" and params["key_size"] is None:
        spec = key_spec("rsa", None, 3072)
    else:
        spec = key_spec(params["key_type"], params["curve"], params["key_size"])
    if params["validity_days"] < 1:
        raise CertificateError("validity_days must be at least 1")
    return create_ca(params["common_name"], spec, params["validity_days"]), "generated"


def _imported_id(params: Dict[str, Any]) -> Optional[str]:
    if not params["import_cert"]:
        return None
    path = params["import_cert"]
    return ca_id(load_certificate(_read(path, "import_cert"), f"import_cert {path}"))


def load_leaf(item: str) -> Any:
    """A certificate in use, given as PEM text or as a controller path."""
    if "-----BEGIN" in item:
        return load_certificate(item.encode("ascii"), "a PEM certificate in leaves_in_use")
    return load_certificate(_read(item, "leaves_in_use:"), f"leaves_in_use {item}")


def _leaf_name(item: str, leaf: Any) -> str:
    if "-----BEGIN" not in item:
        return item
    return f"{leaf.subject.rfc4514_string()} (serial {leaf.serial_number:X})"


def ensure_present(directory: CaDirectory, params: Dict[str, Any]) -> None:
    """An empty directory gets its first CA; an existing one must not be asked to adopt another."""
    if not directory.entries():
        ca, source = obtain_ca(params)
        directory.add(ca, "active", source)
        return
    wanted = _imported_id(params)
    known = [entry["id"] for entry in directory.entries(*IN_BUNDLE)]
    if wanted and wanted not in known:
        raise CertificateError(
            f"{directory.path} already has the active CA {directory.active_id}; to bring in import_cert, use"
            " rotation=introduce, then activate"
        )


def introduce(directory: CaDirectory, params: Dict[str, Any]) -> None:
    """Add a new CA to the bundle without letting it sign (once: a waiting one is kept)."""
    if not directory.entries():
        raise CertificateError(f"{directory.path} has no CA yet: run without rotation first to create one")
    waiting = directory.entries("introduced")
    wanted = _imported_id(params)
    if waiting:
        if wanted and wanted != waiting[0]["id"]:
            raise CertificateError(
                f"CA {waiting[0]['id']} is already introduced and waits for rotation=activate; activate or remove it"
                " before introducing import_cert"
            )
        return
    if wanted and any(entry["id"] == wanted for entry in directory.entries()):
        raise CertificateError(f"import_cert is CA {wanted}, which {directory.path} already has")
    ca, source = obtain_ca(params)
    directory.add(ca, "introduced", source)


def activate(directory: CaDirectory) -> None:
    """The introduced CA signs from now on; the one it replaces stays trusted."""
    waiting = directory.entries("introduced")
    if not waiting:
        return
    directory.check_signing_ca(waiting[0]["id"])
    for entry in directory.entries("active"):
        directory.set_status(entry, "trusted")
    directory.set_status(waiting[0], "active")


def retire(directory: CaDirectory, leaves_in_use: List[str]) -> None:
    """Take every trusted, no longer active CA out of the bundle, unless a leaf in use still depends on it."""
    retiring = directory.entries("trusted")
    if not retiring:
        return
    leaves = [(_leaf_name(item, leaf), leaf) for item, leaf in ((item, load_leaf(item)) for item in leaves_in_use)]
    blocked = []
    for entry in retiring:
        ca_cert = directory.certificate(entry["id"])
        users = [name for name, leaf in leaves if leaf_issued_by(leaf, ca_cert)]
        if users:
            blocked.append(f"CA {entry['id']} ({ca_cert.subject.rfc4514_string()}) still issued {', '.join(users)}")
    if blocked:
        raise CertificateError(
            "refusing to retire: " + "; ".join(blocked) + " - reissue them under the active CA first"
        )
    for entry in retiring:
        directory.set_status(entry, "retired")


def run(params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    """Apply one run of the module to the directory; returns the result (without ``warnings``)."""
    directory = CaDirectory(params["path"], params["passphrase"], check_mode)
    rotation = params["rotation"]
    if rotation is None:
        ensure_present(directory, params)
    elif rotation == "introduce":
        introduce(directory, params)
    elif rotation == "activate":
        activate(directory)
    else:
        retire(directory, params["leaves_in_use"])
    if not directory.entries():
        raise CertificateError(f"{directory.path} has no CA yet: run without rotation first to create one")
    directory.check_signing_ca(directory.active_id or "", usable_now=False)
    for entry in directory.entries("introduced"):
        directory.check_signing_ca(entry["id"], usable_now=False)
    changed = directory.write()
    active = directory.active_id
    unwritten = active in directory.new and check_mode
    cas = directory.describe()
    for ca in cas:
        if ca["status"] == "active" and 0 <= ca["days_left"] < EXPIRY_WARNING_DAYS:
            directory.warnings.append(
                f"the active CA expires in {ca['days_left']} days ({ca['not_after']}): plan a rotation"
            )
    return {
        "changed": changed,
        "cert": None if unwritten else directory.cert_path(active or ""),
        "key": None if unwritten else directory.key_path(active or ""),
        "bundle": os.path.join(directory.path, "bundle.pem"),
        "active": None if unwritten else active,
        "cas": cas,
        "msg": "; ".join(directory.changes) or f"CA {active} is active; nothing to change",
        "warnings_": directory.warnings,
    }


def main() -> None:
    """Run the module."""
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_together=[("import_cert", "import_key")],
        supports_check_mode=True,
    )
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    try:
        result = run(module.params, module.check_mode)
    except CertificateError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    else:
        for warning in result.pop("warnings_"):
            module.warn(warning)
        module.exit_json(**result)


if __name__ == "__main__":
    main()
