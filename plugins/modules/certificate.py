#!/usr/bin/python
# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: certificate
short_description: Keep a private key and a certificate signed by the collection's CA on a host, in one task
version_added: 0.1.0
description:
  - Ensures that a host holds a private key and a certificate issued by the CA on the controller, for the subject,
    names and usage asked for, and keeps it valid - reissuing it when it enters its renew-before window.
  - The private key is generated on the host and never leaves it. The host builds a certificate signing request,
    the controller signs it with the CA key (which never leaves the controller), and the certificate is written
    back atomically.
  - An unchanged run executes the module once on the host and reports C(changed=false). A reissue executes it
    twice - once to inspect and make a key and a CSR, once to install the signed certificate.
  - "Regeneration is one decision with a stable reason, returned as RV(reason), checked in this order:
    C(certificate_missing), C(key_missing), C(certificate_unreadable), C(certificate_invalid), C(key_unreadable),
    C(key_invalid), C(key_mismatch), C(key_type_changed), C(issuer_changed) (issuer or authority key identifier is
    not the current CA's), C(signature_invalid), C(subject_changed), C(subject_alt_names_changed), C(usage_changed),
    C(expired), C(renew_window) and C(forced)."
  - A key file that exists but is not an unencrypted private key (C(key_invalid)) or cannot be read
    (C(key_unreadable)) fails the task without touching anything - the module never overwrites what may be
    someone else's file.
  - The old key and certificate stay in place, valid and matching, until the new pair is complete - the new key is
    staged in C(<key_path>.staged) (same owner and mode as the key) and renamed into place right after the new
    certificate. A staged key left by an interrupted run is finished (when the certificate was already replaced) or
    removed by the next run.
author:
  - permguard.secure maintainers (@permguard)
requirements:
  - cryptography >= 38.0 on the host and on the controller
attributes:
  check_mode:
    support: full
    description: Reports whether and why the certificate would be reissued; nothing is written and nothing signed.
  diff_mode:
    support: full
    description: Shows subject, subject alternative names, serial, expiry and issuer before and after.
  action:
    support: full
    description: An action plugin reads the CA on the controller and signs there; the module runs on the host.
  async:
    support: none
    description: The two steps of a reissue need the controller in between.
  platform:
    support: full
    platforms: posix
    description: Needs a POSIX file system (modes, owners, atomic renames).
options:
  path:
    description:
      - Path of the certificate on the host (PEM). When the CA is not a root, the CA certificate follows the leaf
        in this file, so that the chain is complete.
      - Its directory must exist.
    type: path
    required: true
  key_path:
    description:
      - Path of the private key on the host (unencrypted PKCS#8 PEM). Its directory must exist.
    type: path
    required: true
  ca_path:
    description:
      - When set, the host also gets the trust bundle here - the contents of O(trust_bundle), or the CA certificate
        when O(trust_bundle) is not given. It is written with O(owner), O(group) and O(mode).
    type: path
  owner:
    description:
      - Owner of the key, certificate and O(ca_path), typically the service user. By default a file keeps the owner
        of the file it replaces (or that of the key, for its staged successor), and new files belong to the remote
        user.
    type: str
  group:
    description:
      - Group of the key, certificate and O(ca_path); the same defaults as O(owner).
    type: str
  mode:
    description:
      - Mode of the certificate and of O(ca_path), as an octal string such as C('0644').
    type: raw
    default: '0644'
  key_mode:
    description:
      - Mode of the private key, as an octal string. It must not grant anything to other users.
    type: raw
    default: '0600'
  common_name:
    description:
      - The certificate's subject common name. Clients verify names against O(subject_alt_names), not this.
    type: str
    required: true
  subject_alt_names:
    description:
      - Subject alternative names, each C(DNS:name), C(IP:address) or C(URI:uri) (for example C(URI:spiffe://example.org/permguard/server)).
        A name without a prefix is an IP address when it parses as one, a URI when it contains C(://), else a DNS
        name. Invalid names fail the task, naming the value.
      - Order and case of DNS names do not matter when the certificate is compared.
    type: list
    elements: str
    default: []
  profile:
    description:
      - Key usages. C(server) - digitalSignature (plus keyEncipherment for RSA) and extended key usage serverAuth;
        C(client) - digitalSignature and clientAuth; C(server_client) - both extended key usages.
    type: str
    choices: [server, client, server_client]
    default: server
  key_type:
    description:
      - Kind of private key. A key of another kind or size is replaced (reason C(key_type_changed)).
    type: str
    choices: [ecdsa, rsa]
    default: ecdsa
  curve:
    description:
      - Curve of an ECDSA key; C(P-256) when not set. Only with O(key_type=ecdsa).
    type: str
    choices: [P-256, P-384]
  key_size:
    description:
      - Size in bits of an RSA key; C(2048) when not set. Only with O(key_type=rsa).
    type: int
    choices: [2048, 3072, 4096]
  validity_days:
    description:
      - Validity of a new certificate in days, counted from now (its C(not_before) is five minutes in the past to
        tolerate clock skew).
    type: int
    default: 365
  renew_before_days:
    description:
      - Reissue the certificate when it expires within this many days (reason C(renew_window)).
      - Must be shorter than O(validity_days).
    type: int
    default: 30
  force:
    description:
      - Reissue even when nothing else is due (reason C(forced)).
    type: bool
    default: false
  reuse_key:
    description:
      - Keep a usable existing key (of the kind asked for) when the certificate is reissued. By default every
        reissue makes a new key.
    type: bool
    default: false
  ca_cert:
    description:
      - Path on the controller of the certificate of the CA that signs, for example the
        RV(permguard.secure.ca#module:cert) that M(permguard.secure.ca) returns. It must be a CA (C(CA:TRUE),
        keyCertSign) that is valid now.
      - Leaves issued by any other CA, even one with the same name, are reissued (reason C(issuer_changed)).
    type: path
    required: true
  ca_key:
    description:
      - Path on the controller of the CA's private key (PEM). It must match O(ca_cert). It is read on the
        controller only.
    type: path
    required: true
  ca_key_passphrase:
    description:
      - Passphrase of O(ca_key), for example from Ansible Vault. Used on the controller only, never sent to the host.
    type: str
  trust_bundle:
    description:
      - Path on the controller of the bundle of every trusted CA (for example RV(permguard.secure.ca#module:bundle)),
        written to O(ca_path). It must contain O(ca_cert).
    type: path
  _controller:
    description:
      - Internal. Set by the action plugin (the CA certificate, the trust bundle, the step and the signed
        certificate - public data only). A task must not set it.
    type: dict
notes:
  - Run it with privileges that can write the target directories and set O(owner) (for example C(become=true)).
  - The certificate is compared by subject, names, usages, key, issuer and signature, never by O(validity_days);
    a changed O(validity_days) takes effect at the next reissue.
  - Permguard reads its certificates only at start-up - restart the server when this task reports a change.
seealso:
  - module: permguard.secure.ca
"""

EXAMPLES = r"""
- name: Make the controller's CA (once)
  permguard.secure.ca:
    path: "{{ playbook_dir }}/pki"
  delegate_to: localhost
  run_once: true
  register: permguard_ca

- name: Server certificate for the Permguard server, key owned by its service user
  permguard.secure.certificate:
    path: /etc/permguard/tls/server.pem
    key_path: /etc/permguard/tls/server-key.pem
    ca_path: /etc/permguard/tls/ca-bundle.pem
    owner: permguard
    group: permguard
    common_name: "{{ inventory_hostname }}"
    subject_alt_names:
      - "{{ inventory_hostname }}"
      - "{{ ansible_facts['fqdn'] }}"
      - "IP:{{ ansible_facts['default_ipv4']['address'] }}"
    profile: server
    ca_cert: "{{ permguard_ca.cert }}"
    ca_key: "{{ permguard_ca.key }}"
    ca_key_passphrase: "{{ vault_permguard_ca_passphrase }}"
    trust_bundle: "{{ permguard_ca.bundle }}"
  become: true
  register: server_certificate
  notify: Restart permguard

- name: Client certificate for an operator identity, RSA 3072, renewed 60 days ahead
  permguard.secure.certificate:
    path: /home/ops/.permguard/tls/client.pem
    key_path: /home/ops/.permguard/tls/client-key.pem
    owner: ops
    common_name: ops-admin
    profile: client
    key_type: rsa
    key_size: 3072
    renew_before_days: 60
    ca_cert: "{{ permguard_ca.cert }}"
    ca_key: "{{ permguard_ca.key }}"

- name: Show why it changed
  ansible.builtin.debug:
    msg: "{{ server_certificate.reason }}: serial {{ server_certificate.certificate.serial }}"
  when: server_certificate is changed
"""

RETURN = r"""
reason:
  description: Why the certificate was (or in check mode would be) reissued; null when nothing was due.
  returned: always
  type: str
  sample: renew_window
reason_text:
  description: The reason in words; null when nothing was due.
  returned: always
  type: str
  sample: the certificate expires within renew_before_days
path:
  description: Path of the certificate on the host.
  returned: always
  type: str
  sample: /etc/permguard/tls/server.pem
key_path:
  description: Path of the private key on the host.
  returned: always
  type: str
  sample: /etc/permguard/tls/server-key.pem
ca_path:
  description: Path of the trust bundle on the host, when O(ca_path) is set.
  returned: always
  type: str
trust_bundle_changed:
  description: Whether O(ca_path) was (or would be) rewritten.
  returned: always
  type: bool
certificate:
  description:
    - The certificate on the host after the task (before it, in check mode). Null when there is no readable
      certificate.
  returned: always
  type: dict
  contains:
    subject:
      description: Subject, RFC 4514.
      type: str
      sample: CN=pg-1.example.org
    common_name:
      description: Subject common name.
      type: str
    issuer:
      description: Issuer, RFC 4514.
      type: str
      sample: CN=Permguard Root CA
    serial:
      description: Serial number, upper-case hexadecimal.
      type: str
      sample: 5F0C2A3B9D4E41A7B6C8D9E0F1A2B3C4
    not_before:
      description: Start of validity, UTC, ISO 8601.
      type: str
      sample: "2025-01-01T00:00:00Z"
    not_after:
      description: End of validity, UTC, ISO 8601.
      type: str
      sample: "2026-01-01T00:05:00Z"
    days_left:
      description: Whole days until RV(certificate.not_after).
      type: int
      sample: 364
    subject_alt_names:
      description: Subject alternative names in the C(DNS:)/C(IP:)/C(URI:) form of O(subject_alt_names).
      type: list
      elements: str
      sample: ["DNS:pg-1.example.org", "IP:192.0.2.10"]
    sha256:
      description: SHA-256 fingerprint of the certificate, colon-separated upper-case hexadecimal.
      type: str
    key:
      description: Kind of the certificate's key.
      type: str
      sample: ECDSA P-256
msg:
  description: One line on what happened.
  returned: always
  type: str
"""

import grp
import os
import pwd
from typing import Any, Dict, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    PROFILES,
    REASONS,
    CertificateError,
    CertificateRequest,
    HostFile,
    build_csr,
    certificate_facts,
    csr_pem,
    diff_view,
    expected_facts,
    fsync_directory,
    generate_private_key,
    key_spec_of,
    load_certificate,
    load_private_key,
    private_key_pem,
    public_key_der,
    read_host_file,
    regeneration_reason,
    request_from_params,
    write_atomically,
)

ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "path": {"type": "path", "required": True},
    "key_path": {"type": "path", "required": True, "no_log": False},
    "ca_path": {"type": "path"},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "raw", "default": "0644"},
    "key_mode": {"type": "raw", "default": "0600", "no_log": False},
    "common_name": {"type": "str", "required": True},
    "subject_alt_names": {"type": "list", "elements": "str", "default": []},
    "profile": {"type": "str", "choices": list(PROFILES), "default": "server"},
    "key_type": {"type": "str", "choices": ["ecdsa", "rsa"], "default": "ecdsa", "no_log": False},
    "curve": {"type": "str", "choices": ["P-256", "P-384"]},
    "key_size": {"type": "int", "choices": [2048, 3072, 4096], "no_log": False},
    "validity_days": {"type": "int", "default": 365},
    "renew_before_days": {"type": "int", "default": 30},
    "force": {"type": "bool", "default": False},
    "reuse_key": {"type": "bool", "default": False, "no_log": False},
    "ca_cert": {"type": "path", "required": True},
    "ca_key": {"type": "path", "required": True, "no_log": False},  # a controller path, not the key
    "ca_key_passphrase": {"type": "str", "no_log": True},
    "trust_bundle": {"type": "path"},
    "_controller": {"type": "dict"},
}

STAGED_SUFFIX = ".staged"
_KEY_REFUSALS = ("key_invalid", "key_unreadable")


def parse_mode(value: Any, option: str) -> int:
    """An octal mode from a string (``'0640'``) or an integer YAML already converted."""
    if isinstance(value, int):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise CertificateError(f"{option} must be an octal mode such as '0640', not {value!r}", option) from None
    if not 0 <= mode <= 0o7777:
        raise CertificateError(f"{option} {value!r} is not a file mode", option)
    return mode


def _owner_ids(owner: Optional[str], group: Optional[str], like: Optional[str]) -> Tuple[int, int]:
    """The uid and gid for a new file: the options, else those of ``like`` when it exists, else -1 (unchanged)."""
    try:
        like_stat: Optional[os.stat_result] = os.stat(like) if like else None
    except OSError:
        like_stat = None
    uid = gid = -1
    if owner:
        uid = int(owner) if owner.isdigit() else _lookup(pwd.getpwnam, owner, "owner").pw_uid
    elif like_stat is not None:
        uid = like_stat.st_uid
    if group:
        gid = int(group) if group.isdigit() else _lookup(grp.getgrnam, group, "group").gr_gid
    elif like_stat is not None:
        gid = like_stat.st_gid
    return uid, gid


def _lookup(function: Any, name: str, option: str) -> Any:
    try:
        return function(name)
    except KeyError:
        raise CertificateError(f"{option} {name!r} does not exist on the host", option) from None


def write_staged_key(path: str, key: Any, mode: int, ids: Tuple[int, int]) -> None:
    """Create the staged key file exclusively: owner and mode are set before the key is written."""
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        if ids != (-1, -1):
            os.fchown(handle.fileno(), *ids)
        os.fchmod(handle.fileno(), mode)
        handle.write(private_key_pem(key))
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(path)


class HostCertificate:
    """The host side of one certificate task: inspect (and stage a key and CSR), or install."""

    def __init__(self, module: AnsibleModule, request: CertificateRequest, ca_cert: Any) -> None:
        self.module = module
        self.params = module.params
        self.request = request
        self.ca_cert = ca_cert
        self.controller = module.params["_controller"]
        self.staged_path = self.params["key_path"] + STAGED_SUFFIX
        self.mode = parse_mode(self.params["mode"], "mode")
        self.key_mode = parse_mode(self.params["key_mode"], "key_mode")
        if self.key_mode & 0o007:
            raise CertificateError(f"key_mode {self.params['key_mode']!r} grants access to other users", "key_mode")
        self.notes: list = []

    # ----------------------------------------------------------------- shared

    def _check_directories(self) -> None:
        for option in ("path", "key_path", "ca_path"):
            value = self.params[option]
            if value and not os.path.isdir(os.path.dirname(value) or "."):
                raise CertificateError(f"the directory of {option} {value} does not exist on the host", option)

    def _check_writable(self) -> None:
        for option in ("path", "key_path"):
            directory = os.path.dirname(self.params[option]) or "."
            if not os.access(directory, os.W_OK | os.X_OK):
                raise CertificateError(
                    f"cannot write in {directory} (the directory of {option}) as this user; use become", option
                )

    def _attributes(self, path: str, mode: int, changed: bool) -> bool:
        if not os.path.exists(path):
            return changed
        changed = self.module.set_mode_if_different(path, mode, changed)
        if self.params["owner"]:
            changed = self.module.set_owner_if_different(path, self.params["owner"], changed)
        if self.params["group"]:
            changed = self.module.set_group_if_different(path, self.params["group"], changed)
        return changed

    def _result(self, changed: bool, reason: Optional[str], facts: Optional[dict], bundle_changed: bool) -> dict:
        return {
            "changed": changed,
            "reason": reason,
            "reason_text": REASONS.get(reason) if reason else None,
            "path": self.params["path"],
            "key_path": self.params["key_path"],
            "ca_path": self.params["ca_path"],
            "trust_bundle_changed": bundle_changed,
            "certificate": facts,
        }

    # ----------------------------------------------------------------- step 1

    def inspect(self) -> dict:
        """Decide; when due (and not in check mode) stage a key and return a CSR for the controller to sign."""
        self._check_directories()
        cert_file = read_host_file(self.params["path"])
        key_file = self._refuse_foreign_key(read_host_file(self.params["key_path"]))
        changed = False
        if os.path.lexists(self.staged_path):
            changed = True
            if not self.module.check_mode:
                key_file = self._finish_or_discard_staged(cert_file, key_file)
        bundle_changed = self._ensure_bundle()
        changed = changed or bundle_changed
        reason = regeneration_reason(cert_file, key_file, self.request, self.ca_cert, force=self.params["force"])
        facts = self._facts(cert_file)
        if reason is None:
            for path, mode in ((self.params["path"], self.mode), (self.params["key_path"], self.key_mode)):
                changed = self._attributes(path, mode, changed)
            result = self._result(changed, None, facts, bundle_changed)
            result["msg"] = f"certificate is current: {facts['days_left']} days left, until {facts['not_after']}"
            if self.notes:
                result["msg"] += "; " + "; ".join(self.notes)
            return result
        result = self._result(True, reason, facts, bundle_changed)
        if self.module._diff:
            result["diff"] = {"before": diff_view(facts), "after": expected_facts(self.request, self.ca_cert)}
        result["msg"] = f"certificate is due for reissue: {reason} ({REASONS[reason]})"
        if self.module.check_mode:
            return result
        self._check_writable()
        key, staged = self._key_for_csr(key_file, reason)
        result["csr"] = csr_pem(build_csr(key, self.request)).decode("ascii")
        result["key_staged"] = staged
        return result

    def _refuse_foreign_key(self, key_file: HostFile) -> HostFile:
        """A key file that is there but not a usable key is someone's file: fail and touch nothing."""
        if not key_file.exists:
            return key_file
        path = key_file.path
        if key_file.data is None:
            raise CertificateError(
                f"key_path {path} cannot be read ({key_file.error}); nothing was changed", "key_path"
            )
        try:
            load_private_key(key_file.data, name=f"key_path {path}")
        except CertificateError as exc:
            raise CertificateError(
                f"{exc}; refusing to replace it - remove it or point key_path elsewhere (nothing was changed)",
                "key_path",
            ) from None
        return key_file

    def _finish_or_discard_staged(self, cert_file: HostFile, key_file: HostFile) -> HostFile:
        """An earlier run stopped between its renames: finish it if the staged key fits the new certificate."""
        staged = read_host_file(self.staged_path)
        try:
            staged_key = load_private_key(staged.data or b"")
            cert = load_certificate(cert_file.data or b"")
            current_key = load_private_key(key_file.data) if key_file.data else None
        except CertificateError:
            staged_key = cert = current_key = None
        fits = staged_key is not None and public_key_der(staged_key) == public_key_der(cert.public_key())
        if fits and (current_key is None or public_key_der(current_key) != public_key_der(cert.public_key())):
            os.replace(self.staged_path, self.params["key_path"])
            fsync_directory(self.params["key_path"])
            self.notes.append("finished an interrupted install: moved the staged key into place")
            return read_host_file(self.params["key_path"])
        os.unlink(self.staged_path)
        self.notes.append(f"removed a stale staged key {self.staged_path}")
        return key_file

    def _ensure_bundle(self) -> bool:
        path = self.params["ca_path"]
        if not path:
            return False
        content = self.controller["bundle_pem"].encode("ascii")
        current = read_host_file(path)
        changed = current.data != content
        if changed and not self.module.check_mode:
            write_atomically(path, content, self.mode, _owner_ids(self.params["owner"], self.params["group"], path))
        return self._attributes(path, self.mode, changed)

    def _facts(self, cert_file: HostFile) -> Optional[dict]:
        if not cert_file.data:
            return None
        try:
            return certificate_facts(load_certificate(cert_file.data))
        except CertificateError:
            return None

    def _key_for_csr(self, key_file: HostFile, reason: str) -> Tuple[Any, bool]:
        """The existing key when reuse_key allows it, else a new key staged beside the key file."""
        if self.params["reuse_key"] and key_file.data and reason != "key_type_changed":
            key = load_private_key(key_file.data)
            if key_spec_of(key) == self.request.key:
                return key, False
        key = generate_private_key(self.request.key)
        key_path = self.params["key_path"]
        ids = _owner_ids(self.params["owner"], self.params["group"], key_path)
        write_staged_key(self.staged_path, key, self.key_mode, ids)
        return key, True

    # ----------------------------------------------------------------- step 2

    def install(self) -> dict:
        """Check the signed certificate against the staged (or reused) key, then rename both into place."""
        self._check_directories()
        content = self.controller["certificate_pem"].encode("ascii")
        cert = load_certificate(content, "the signed certificate")
        staged = bool(self.controller.get("key_staged"))
        key_file = read_host_file(self.staged_path if staged else self.params["key_path"])
        if not key_file.data:
            raise CertificateError(
                f"the key {key_file.path} for the signed certificate is gone (another run?); nothing was replaced",
                "key_path",
            )
        reason = regeneration_reason(HostFile(self.params["path"], True, content), key_file, self.request, self.ca_cert)
        if reason:
            raise CertificateError(
                f"the signed certificate does not fit the request ({reason}: {REASONS[reason]}); nothing was replaced"
            )
        path = self.params["path"]
        write_atomically(path, content, self.mode, _owner_ids(self.params["owner"], self.params["group"], path))
        if staged:
            os.replace(self.staged_path, self.params["key_path"])
            fsync_directory(self.params["key_path"])
        self._attributes(self.params["key_path"], self.key_mode, True)
        facts = certificate_facts(cert)
        result = self._result(True, self.controller.get("reason"), facts, False)
        if self.module._diff:
            result["diff"] = {"after": diff_view(facts)}
        result["msg"] = f"certificate issued: serial {facts['serial']}, until {facts['not_after']}"
        return result


def main() -> None:
    """Run one step for the action plugin."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    controller = module.params["_controller"]
    if not controller or controller.get("step") not in ("inspect", "install") or not controller.get("ca_pem"):
        module.fail_json(msg="permguard.secure.certificate runs through its action plugin; _controller is internal")
    try:
        request = request_from_params(module.params)
        ca_cert = load_certificate(controller["ca_pem"].encode("ascii"), "the CA certificate")
        host = HostCertificate(module, request, ca_cert)
        result = host.inspect() if controller["step"] == "inspect" else host.install()
    except CertificateError as exc:
        module.fail_json(msg=str(exc), option=exc.option)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        module.fail_json(msg=f"{exc.strerror or exc}{where}; the next run finishes or repeats the reissue")
    else:
        module.exit_json(**result)


if __name__ == "__main__":
    main()
