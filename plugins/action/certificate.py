# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of ``permguard.secure.certificate``: read the CA, run the module, sign its CSR.

The plugin class stays thin; the decisions live in plain functions (:func:`prepare`,
:func:`install_args`, :func:`sign`, :func:`final_result`) that the unit tests call directly. The CA key
and its passphrase stay on the controller: the module gets the CA certificate, the trust bundle and,
for the second step, the signed certificate - public data only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.permguard.secure.plugins.module_utils.certificates import (
    CertificateAuthority,
    CertificateError,
    CertificateRequest,
    certificate_pem,
    load_ca,
    load_certificates,
    public_key_der,
    request_from_params,
    sign_csr,
    validity,
)
from ansible_collections.permguard.secure.plugins.modules.certificate import ARGUMENT_SPEC

MODULE = "permguard.secure.certificate"
CONTROLLER_ONLY = ("ca_key_passphrase",)  # never sent to the host
STEP_KEYS = ("csr", "key_staged")  # what the first step returns for the controller only

display = Display()


@dataclass
class Plan:
    """Everything the controller settled before touching the host."""

    request: CertificateRequest
    ca: CertificateAuthority
    bundle_pem: str
    module_args: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)


def read_controller_file(path: str, option: str) -> bytes:
    """Read a file on the controller; the error names the option that points at it."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CertificateError(f"{option} {path}: {exc.strerror or exc}", option) from None


def _trust_bundle(args: Dict[str, Any], ca: CertificateAuthority) -> str:
    """The bundle for the host: the trust_bundle file (which must hold the signing CA), or the CA alone."""
    if not args.get("trust_bundle"):
        return ca.cert_pem.decode("ascii")
    path = args["trust_bundle"]
    data = read_controller_file(path, "trust_bundle")
    certificates = load_certificates(data, f"trust_bundle {path}")
    ca_key = public_key_der(ca.cert.public_key())
    if not any(
        cert.subject == ca.cert.subject and public_key_der(cert.public_key()) == ca_key for cert in certificates
    ):
        raise CertificateError(
            f"trust_bundle {path} does not contain ca_cert ({ca.cert.subject.rfc4514_string()}): clients that trust"
            " it could not verify the certificates this CA signs",
            "trust_bundle",
        )
    return "".join(certificate_pem(cert).decode("ascii") for cert in certificates)


def prepare(args: Dict[str, Any], now: Optional[datetime.datetime] = None) -> Plan:
    """Validate the task and load the CA; raise :class:`CertificateError` before the host is touched."""
    if "_controller" in args and args["_controller"] is not None:
        raise CertificateError("_controller is set by the action plugin, not by a task", "_controller")
    request = request_from_params(args)
    ca = load_ca(
        read_controller_file(args["ca_cert"], "ca_cert"),
        read_controller_file(args["ca_key"], "ca_key"),
        args.get("ca_key_passphrase"),
        cert_name=f"ca_cert {args['ca_cert']}",
        key_name=f"ca_key {args['ca_key']}",
        passphrase_name="ca_key_passphrase",
        now=now,
    )
    bundle_pem = _trust_bundle(args, ca)
    warnings = []
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_not_after = validity(ca.cert)[1]
    if ca_not_after < now + datetime.timedelta(days=request.validity_days):
        warnings.append(
            f"the CA ({ca.cert.subject.rfc4514_string()}) expires on {ca_not_after:%Y-%m-%d}, before a certificate"
            f" issued now for {request.validity_days} days: rotate the CA with permguard.secure.ca"
        )
    if request.profile != "client" and not any(name.startswith(("DNS:", "IP:")) for name in request.subject_alt_names):
        warnings.append(
            f"a {request.profile} certificate without DNS or IP subject_alt_names cannot be verified by host name"
        )
    # None means "not set": the module's own defaults and choices apply.
    module_args = {key: value for key, value in args.items() if key not in CONTROLLER_ONLY and value is not None}
    module_args["_controller"] = {"step": "inspect", "ca_pem": ca.cert_pem.decode("ascii"), "bundle_pem": bundle_pem}
    return Plan(request, ca, bundle_pem, module_args, warnings)


def sign(plan: Plan, csr: str, now: Optional[datetime.datetime] = None) -> str:
    """Sign the host's CSR; the PEM to write - the leaf, followed by the CA when the CA is not a root."""
    cert = sign_csr(csr.encode("ascii"), plan.request, plan.ca, now)
    chain = certificate_pem(cert) + (b"" if plan.ca.self_signed else plan.ca.cert_pem)
    return chain.decode("ascii")


def install_args(plan: Plan, inspected: Dict[str, Any], certificate: str) -> Dict[str, Any]:
    """Module arguments of the second step: the same task, with the signed certificate."""
    args = dict(plan.module_args)
    args["_controller"] = dict(
        plan.module_args["_controller"],
        step="install",
        certificate_pem=certificate,
        key_staged=bool(inspected.get("key_staged")),
        reason=inspected.get("reason"),
    )
    return args


def final_result(inspected: Dict[str, Any], installed: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One task result from one or two module runs: the reason of the first, the facts of the second."""
    result = {key: value for key, value in inspected.items() if key not in STEP_KEYS}
    if installed is None:
        return result
    if installed.get("failed"):
        failed = dict(installed)
        failed["reason"] = inspected.get("reason")
        failed["changed"] = bool(inspected.get("trust_bundle_changed")) or bool(installed.get("changed"))
        return failed
    result.update({key: value for key, value in installed.items() if key not in STEP_KEYS})
    result["reason"] = inspected.get("reason")
    result["reason_text"] = inspected.get("reason_text")
    result["trust_bundle_changed"] = bool(inspected.get("trust_bundle_changed"))
    before = (inspected.get("diff") or {}).get("before")
    after = (installed.get("diff") or {}).get("after")
    if before is not None or after is not None:
        result["diff"] = {"before": before or {}, "after": after or {}}
    return result


def converge(plan: Plan, run_module: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Dict[str, Any]:
    """Inspect the host; when it returns a CSR, sign it and install the certificate (a second run)."""
    inspected = run_module(plan.module_args)
    if inspected.get("failed") or not inspected.get("csr"):
        return final_result(inspected)
    try:
        certificate = sign(plan, inspected["csr"])
    except CertificateError as exc:
        failed = final_result(inspected)
        failed.update(failed=True, msg=f"signing failed: {exc}; the host's key and certificate are unchanged")
        return failed
    return final_result(inspected, run_module(install_args(plan, inspected, certificate)))


class ActionModule(ActionBase):
    """Runs ``permguard.secure.certificate``: one module execution when nothing is due, two when reissuing."""

    TRANSFERS_FILES = False

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Validate and load the CA, inspect the host, and when due sign and install."""
        result = super().run(tmp, task_vars)
        del tmp
        try:
            if "_controller" in self._task.args:
                raise CertificateError("_controller is set by the action plugin, not by a task", "_controller")
            args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
            plan = prepare(self._controller_paths(args))
        except (AnsibleActionFail, CertificateError) as exc:
            result.update(failed=True, msg=str(exc), changed=False)
            return result
        for warning in plan.warnings:
            display.warning(warning)
        result.update(converge(plan, lambda module_args: self._run_module(module_args, task_vars)))
        return result

    def _controller_paths(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Relative controller paths are relative to the playbook (or role), like other controller files."""
        args = dict(args)
        for option in ("ca_cert", "ca_key", "trust_bundle"):
            if args.get(option) and not os.path.isabs(args[option]):
                args[option] = self._loader.path_dwim(args[option])
        return args

    def _run_module(self, module_args: Dict[str, Any], task_vars: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        return self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
