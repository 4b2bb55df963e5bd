#!/usr/bin/python
# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: grpc_tls_probe
short_description: Prove gRPC endpoints with a real TLS handshake and a health check, and diagnose failures
version_added: 0.1.0
description:
  - Connects to each endpoint, performs the TLS handshake a Permguard client would (TLS 1.2 or newer, ALPN C(h2)),
    then calls C(grpc.health.v1.Health/Check) over that same connection with a deadline.
  - Works for every Permguard transport mode - C(none) (C(grpc://)), C(tls), C(mtls), C(external) (C(grpcs://)),
    and SPIFFE peers whose certificate carries only a C(spiffe://) URI SAN (verified by chain and SPIFFE ID instead
    of host name).
  - For mode C(spiffe) the probe takes its own X.509-SVID and the trust bundle from the SPIRE agent's Workload API
    (O(spiffe_socket)), once per task, presents that SVID as its client certificate and verifies the server against
    the bundle. The agent attests the probe by the Unix user the task runs as, so that user needs a SPIRE
    registration entry (for example C(unix:uid:0) when the task runs as root).
  - Reports facts per endpoint - health status, timings, TLS version, cipher, ALPN, the peer certificate (subject,
    issuer, serial, validity, days left, SHA-256, SANs, SPIFFE ID, chain length) and whether the server demanded a
    client certificate.
  - On failure each endpoint gets a RV(results[].diagnosis) with a stable C(class), the underlying message and the
    fix, for example C(plaintext_to_tls_server), C(unknown_authority), C(client_cert_required),
    C(not_valid_for_any_names) or C(health_not_serving). When one failed attempt is ambiguous, the module takes a
    second look at the port (an unverified handshake, or a plaintext health check) to tell the causes apart.
  - All endpoints are probed concurrently within one overall O(timeout).
  - The module only reads; it never changes anything, so it runs the same in check mode.
author:
  - permguard.secure maintainers (@permguard)
requirements:
  - grpclib >= 0.4.7
  - protobuf >= 3.20
  - cryptography >= 38.0
  - spiffe (py-spiffe), only with O(spiffe_socket)
attributes:
  check_mode:
    support: full
    description: The probe only reads, so it runs (and reports real results) in check mode too.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
options:
  endpoints:
    description:
      - Endpoints to probe, as C(grpc://host:port) (plaintext) or C(grpcs://host:port) (TLS), the schemes of the
        Permguard CLI. IPv6 literals go in brackets.
      - At least one of O(endpoints) and O(hosts) is required; both may be given.
    type: list
    elements: str
  hosts:
    description:
      - Hosts to probe on every port of O(ports), with the scheme O(scheme).
    type: list
    elements: str
  ports:
    description:
      - Named ports probed on every host of O(hosts); the names label the results.
    type: dict
    default:
      zap: 9091
      pap: 9092
      pdp: 9094
  scheme:
    description:
      - Scheme for the endpoints built from O(hosts) and O(ports).
    type: str
    choices: [grpc, grpcs]
    default: grpcs
  ca_file:
    description:
      - PEM file with the CA certificates that verify the server. Without it the system trust store is used.
      - Cannot be combined with O(skip_verify).
    type: path
  cert_file:
    description:
      - PEM client certificate (and chain) to present, for servers in mode C(mtls) or C(external).
      - Requires O(key_file).
    type: path
  key_file:
    description:
      - Unencrypted PEM private key of O(cert_file).
    type: path
  server_name:
    description:
      - Name sent as SNI and checked against the server certificate instead of the endpoint's host, for example
        C(localhost) when probing by address a server whose certificate names only C(localhost).
    type: str
  skip_verify:
    description:
      - Do not verify the server certificate. Results are marked C(verified=false), C(verification=skipped) and
        carry a warning. For development only; cannot be combined with O(ca_file).
    type: bool
    default: false
  expected_spiffe_id:
    description:
      - Verify the server as a SPIFFE workload - its chain against O(ca_file) (or the Workload API bundle), then its
        URI SAN against this SPIFFE ID; the host name is not checked.
    type: str
  expected_trust_domain:
    description:
      - Like O(expected_spiffe_id), but accept any SPIFFE ID in this trust domain (C(example.org) or
        C(spiffe://example.org)).
    type: str
  spiffe_socket:
    description:
      - SPIFFE Workload API socket (a bare path or C(unix:///path)) from which the probe takes its own X.509-SVID and
        the trust bundle, for servers in mode C(spiffe). Peers are then verified as SPIFFE workloads - chain against
        the bundle, then O(expected_spiffe_id) or O(expected_trust_domain) when given; with neither, any SPIFFE ID
        the bundle vouches for passes, as Permguard's own C(tlsconfig.AuthorizeAny) does.
      - SPIRE's default is C(/tmp/spire-agent/public/api.sock); Kubernetes setups often use
        C(/run/spire/sockets/agent.sock). The SVID is fetched once per task (the default one, the first the agent
        sends), within O(timeout).
      - A path that exists but is not a Unix socket is an argument error. A missing socket, one nothing listens on,
        or an agent that hands out nothing within O(timeout) is reported per endpoint as C(workload_api_unavailable),
        and an agent that has no registration entry for the task's Unix user as C(no_workload_identity); the
        endpoints are then not contacted.
      - Needs the C(spiffe) Python package (py-spiffe) on the host that runs the task.
      - Cannot be combined with O(ca_file), O(cert_file), O(key_file) or O(skip_verify).
    type: path
  health_service:
    description:
      - Service name sent in the health check. Permguard registers the overall service, the empty string.
    type: str
    default: ""
  timeout:
    description:
      - Overall time limit in seconds for all endpoints together (they are probed concurrently).
    type: float
    default: 10
  fail_on_error:
    description:
      - Fail the task when any endpoint fails, with a message naming each failed endpoint, its diagnosis and fix.
      - With V(false) the task succeeds and failures are only reported in RV(results[].ok) and RV(results[].diagnosis).
    type: bool
    default: true
notes:
  - Connections are made from the host the task runs on. Run it on the controller with C(delegate_to) to test from
    outside, or on a fleet host to test from inside.
  - Certificate checks follow Go clients such as the Permguard CLI - the subject common name is never used as a
    host name, only DNS and IP SANs.
  - "Diagnosis classes are stable names. How each is detected:"
  - C(plaintext_to_tls_server) - a C(grpc://) probe is answered with a TLS record, or dropped by a port that then
    completes a TLS handshake.
  - C(tls_to_plaintext_server) - the TLS handshake fails before any TLS reply and the port answers plaintext gRPC.
  - C(unknown_authority), C(certificate_expired), C(certificate_not_yet_valid), C(hostname_mismatch) and
    C(certificate_invalid) - from OpenSSL's verification error code.
  - C(not_valid_for_any_names) - the host name check fails on a certificate with no DNS or IP SAN (an X.509-SVID,
    which carries only a C(spiffe://) URI SAN).
  - C(server_without_cert_paths) - verification fails on a certificate issued by C(PermGuard Auto CA), which the
    server generates when mode C(tls) starts without cert paths. A server whose TLS settings are so incomplete
    that it does not start shows up as C(nothing_listening), whose fix names the start-up errors to look for.
  - C(client_cert_required) - the server sent a TLS CertificateRequest and, with no certificate presented, dropped
    the connection - with alert 116 C(certificate_required) (Go, OpenSSL), silently after the TLS 1.3 handshake
    (BoringSSL, grpcio), or with C(handshake_failure) under TLS 1.2. C(client_cert_rejected) - the same, with a
    certificate presented.
  - C(unexpected_spiffe_id) - the verified peer's SPIFFE ID does not match O(expected_spiffe_id) or
    O(expected_trust_domain). C(workload_api_unavailable) - O(spiffe_socket) is missing, refuses connections or
    gives no SVID in time.
  - C(no_workload_identity) - the SPIRE agent answers O(spiffe_socket) with PermissionDenied (C(no identity
    issued)) - it has no registration entry for the Unix user the probe runs as. The message and the fix name that
    uid and the C(spire-server entry create ... -selector unix:uid:<uid>) entry to create.
  - C(nothing_listening), C(host_unreachable), C(name_resolution_failed), C(timeout) (the message names the phase),
    C(connection_closed), C(tls_handshake_failed) - from the connection.
  - C(health_not_serving), C(health_unimplemented), C(health_service_unknown), C(grpc_error) - from the health
    check's answer.
"""

EXAMPLES = r"""
- name: Prove every port of every Permguard server, from the controller
  permguard.secure.grpc_tls_probe:
    hosts: "{{ groups['permguard_servers'] }}"
    ca_file: /etc/permguard/pki/ca.pem
  delegate_to: localhost
  run_once: true

- name: Mode none - plaintext health checks
  permguard.secure.grpc_tls_probe:
    endpoints:
      - grpc://pg1.example.com:9091
      - grpc://pg1.example.com:9092
      - grpc://pg1.example.com:9094

- name: Mode mtls or external - present a client certificate
  permguard.secure.grpc_tls_probe:
    hosts: [pg1.example.com, pg2.example.com]
    ca_file: /etc/permguard/pki/ca.pem
    cert_file: /etc/permguard/pki/probe.pem
    key_file: /etc/permguard/pki/probe-key.pem

- name: Mode external with SPIRE-issued files - verify the server by SPIFFE ID, not host name
  permguard.secure.grpc_tls_probe:
    endpoints: [grpcs://pg1.example.com:9094]
    ca_file: /spiffe-workload-api/bundle.pem
    cert_file: /spiffe-workload-api/svid.pem
    key_file: /spiffe-workload-api/svid-key.pem
    expected_spiffe_id: spiffe://example.org/permguard/server

- name: Mode spiffe - each server probes its own ports with an SVID from its local SPIRE agent
  permguard.secure.grpc_tls_probe:
    hosts: ["{{ inventory_hostname }}"]
    spiffe_socket: /tmp/spire-agent/public/api.sock
    expected_spiffe_id: spiffe://example.org/permguard/server
  # The agent attests the probe by its Unix user: root needs a registration entry with -selector unix:uid:0.
  become: true

- name: Mode spiffe - accept any workload of the trust domain, and report instead of failing
  permguard.secure.grpc_tls_probe:
    endpoints: [grpcs://pg1.example.com:9091, grpcs://pg1.example.com:9094]
    spiffe_socket: unix:///run/spire/sockets/agent.sock
    expected_trust_domain: example.org
    fail_on_error: false
  register: spiffe_probe

- name: Stop with the fix when the SPIRE agent has no registration entry for the probe's user
  ansible.builtin.fail:
    msg: "{{ spiffe_probe.results[0].diagnosis.fix }}"
  when: spiffe_probe.results[0].diagnosis.class | default('') == 'no_workload_identity'

- name: A negative test - a client without certificate must be refused
  permguard.secure.grpc_tls_probe:
    endpoints: [grpcs://pg1.example.com:9091]
    ca_file: /etc/permguard/pki/ca.pem
    fail_on_error: false
  register: probe

- name: Check the refusal
  ansible.builtin.assert:
    that:
      - not probe.results[0].ok
      - probe.results[0].diagnosis.class == 'client_cert_required'

- name: Warn two months before any certificate expires
  ansible.builtin.assert:
    that: item.peer_certificate.days_left > 60
    fail_msg: "{{ item.endpoint }} certificate expires {{ item.peer_certificate.not_after }}"
  loop: "{{ probe.results | selectattr('peer_certificate') }}"
  loop_control:
    label: "{{ item.endpoint }}"
"""

RETURN = r"""
msg:
  description: One human line per endpoint - C(OK) with health, TLS facts, expiry and time, or C(FAIL) with the
    diagnosis class, message and fix.
  returned: always
  type: str
  sample: "OK   grpcs://pg1.example.com:9091 (zap): SERVING, TLSv1.3 h2, verified, certificate expires in 364 days
    (2027-12-03T15:47:23Z), 8 ms"
summary:
  description: The lines of RV(msg) as a list.
  returned: always
  type: list
  elements: str
failed_endpoints:
  description: URLs of the endpoints that failed.
  returned: always
  type: list
  elements: str
  sample: ["grpcs://pg2.example.com:9092"]
results:
  description: One entry per endpoint, in the order given (O(endpoints) first, then O(hosts) times O(ports)).
  returned: always
  type: list
  elements: dict
  contains:
    endpoint:
      description: The endpoint URL.
      type: str
      sample: grpcs://pg1.example.com:9091
    name:
      description: The port's name from O(ports), or null for O(endpoints).
      type: str
      sample: zap
    scheme:
      description: C(grpc) (plaintext) or C(grpcs) (TLS).
      type: str
    host:
      description: Host part of the endpoint.
      type: str
    port:
      description: Port of the endpoint.
      type: int
    server_name:
      description: Name used for SNI and the host name check (TLS only).
      type: str
    ok:
      description: Whether the endpoint answered SERVING over a transport that passed every requested check.
      type: bool
    verified:
      description: Whether the server's identity was verified (false for plaintext and O(skip_verify)).
      type: bool
    verification:
      description: How the peer was verified - C(none) (plaintext), C(hostname), C(spiffe) or C(skipped).
      type: str
    health_service:
      description: Service name sent in the health check.
      type: str
    health_status:
      description: C(SERVING), C(NOT_SERVING), C(UNKNOWN) or C(SERVICE_UNKNOWN); null when no answer came.
      type: str
      sample: SERVING
    timings:
      description: Durations in milliseconds; null for a phase that did not complete.
      type: dict
      contains:
        connect_ms:
          description: TCP connect.
          type: float
        handshake_ms:
          description: TLS handshake (null for plaintext).
          type: float
        rpc_ms:
          description: HTTP/2 set-up and the health check.
          type: float
        total_ms:
          description: The whole probe of this endpoint, second looks included.
          type: float
    tls:
      description: Negotiated TLS parameters; null for plaintext or when the handshake failed.
      type: dict
      contains:
        version:
          description: Protocol version.
          type: str
          sample: TLSv1.3
        cipher:
          description: Cipher suite.
          type: str
          sample: TLS_AES_128_GCM_SHA256
        alpn:
          description: Negotiated ALPN protocol (Permguard servers negotiate C(h2)).
          type: str
          sample: h2
        client_cert_requested:
          description: Whether the server demanded a client certificate (null if the Python runtime cannot tell).
          type: bool
        client_cert_presented:
          description: Whether the probe presented a client certificate.
          type: bool
        client_spiffe_id:
          description: The SPIFFE ID of the X.509-SVID the probe presented, taken from O(spiffe_socket); null
            without it.
          type: str
          sample: spiffe://example.org/ops/probe
    peer_certificate:
      description:
        - The server's leaf certificate. After a failed verification it comes from a second, unverified handshake
          (to show what the server presents).
      type: dict
      contains:
        subject:
          description: Subject, RFC 4514.
          type: str
        issuer:
          description: Issuer, RFC 4514.
          type: str
        issuer_common_name:
          description: Common name of the issuer.
          type: str
        serial:
          description: Serial number, upper-case hexadecimal.
          type: str
        not_before:
          description: Start of validity, UTC, ISO 8601.
          type: str
        not_after:
          description: End of validity, UTC, ISO 8601.
          type: str
        days_left:
          description: Whole days until C(not_after); negative once expired.
          type: int
        sha256:
          description: SHA-256 fingerprint of the DER certificate, colon-separated upper-case hex.
          type: str
        dns_sans:
          description: DNS subject alternative names.
          type: list
          elements: str
        ip_sans:
          description: IP address subject alternative names.
          type: list
          elements: str
        uri_sans:
          description: URI subject alternative names.
          type: list
          elements: str
        spiffe_id:
          description: The SPIFFE ID, when the certificate carries exactly one C(spiffe://) URI SAN.
          type: str
        chain_length:
          description: Number of certificates the server sent (null if the Python runtime cannot tell).
          type: int
    diagnosis:
      description: Null on success; otherwise why the endpoint failed.
      type: dict
      contains:
        class:
          description: Stable class name, listed in the notes.
          type: str
          sample: client_cert_required
        message:
          description: What was observed, with the underlying error.
          type: str
          sample: "the SPIRE agent at /tmp/spire-agent/public/api.sock issues no X.509-SVID to this probe
            (uid 0 (root)): Error fetching X.509 SVID: Could not process response from the Workload API: no
            identity issued (StatusCode.PERMISSION_DENIED)"
        fix:
          description:
            - What to change.
            - For C(no_workload_identity) it names the uid the probe runs as and the registration entry to
              create, for example C(spire-server entry create -parentID <the agent's SPIFFE ID>
              -spiffeID spiffe://<trust-domain>/<probe> -selector unix:uid:0), then to wait for the agent to
              sync it and probe again, or to run the task as a user that already has an entry.
          type: str
    warnings:
      description: Concerns that do not fail the endpoint, such as an unverified result or an auto-generated
        server certificate.
      type: list
      elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.permguard.secure.plugins.module_utils.tls_probe import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    DEFAULT_PORTS,
    GRPCLIB_IMPORT_ERROR,
    ProbeArgumentError,
    ProbeOptions,
    expand_endpoints,
    run_probes,
    summary_line,
)

ARGUMENT_SPEC = {
    "endpoints": {"type": "list", "elements": "str"},
    "hosts": {"type": "list", "elements": "str"},
    "ports": {"type": "dict", "default": dict(DEFAULT_PORTS)},
    "scheme": {"type": "str", "choices": ["grpc", "grpcs"], "default": "grpcs"},
    "ca_file": {"type": "path"},
    "cert_file": {"type": "path"},
    "key_file": {"type": "path", "no_log": False},
    "server_name": {"type": "str"},
    "skip_verify": {"type": "bool", "default": False},
    "expected_spiffe_id": {"type": "str"},
    "expected_trust_domain": {"type": "str"},
    "spiffe_socket": {"type": "path"},
    "health_service": {"type": "str", "default": ""},
    "timeout": {"type": "float", "default": 10},
    "fail_on_error": {"type": "bool", "default": True},
}

_OPTION_NAMES = (
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
    "skip_verify",
    "expected_spiffe_id",
    "expected_trust_domain",
    "spiffe_socket",
    "health_service",
    "timeout",
)


def _missing_library(error: BaseException | None) -> str | None:
    """Name the pip package behind an import error of the engine."""
    if error is None:
        return None
    missing = getattr(error, "name", None) or ""
    return "protobuf" if missing.startswith("google") else missing.split(".")[0] or "grpclib"


def _fail_message(results: list, failed: list) -> str:
    lines = [summary_line(result) for result in failed]
    return f"{len(failed)} of {len(results)} endpoints failed:\n" + "\n".join(lines)


def _tls_options_unused(params: dict, endpoints: list) -> list:
    if any(endpoint.tls for endpoint in endpoints):
        return []
    tls_only = (
        "ca_file",
        "cert_file",
        "server_name",
        "skip_verify",
        "expected_spiffe_id",
        "expected_trust_domain",
        "spiffe_socket",
    )
    return [name for name in tls_only if params[name]]


def _format_exception(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _probe(module: AnsibleModule) -> tuple:
    params = module.params
    try:
        endpoints = expand_endpoints(params["endpoints"], params["hosts"], params["ports"], params["scheme"])
        opts = ProbeOptions(**{name: params[name] for name in _OPTION_NAMES})
        return endpoints, run_probes(endpoints, opts)
    except ProbeArgumentError as exc:
        module.fail_json(msg=str(exc), option=exc.option)
    except ImportError as exc:  # py-spiffe, needed only with spiffe_socket
        module.fail_json(msg=missing_required_lib(_missing_library(exc) or "spiffe"), exception=_format_exception(exc))
    raise AssertionError("fail_json returned")  # pragma: no cover


def main() -> None:
    """Run the module."""
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("endpoints", "hosts")],
        required_together=[("cert_file", "key_file")],
        supports_check_mode=True,
    )
    for error in (GRPCLIB_IMPORT_ERROR, CRYPTOGRAPHY_IMPORT_ERROR):
        if error is not None:
            module.fail_json(msg=missing_required_lib(_missing_library(error)), exception=_format_exception(error))
    params = module.params
    endpoints, results = _probe(module)
    for name in _tls_options_unused(params, endpoints):
        module.warn(f"{name} is ignored: every endpoint is plaintext (grpc://)")
    for warning in sorted({text for result in results for text in result["warnings"]}):
        module.warn(warning)
    summary = [summary_line(result) for result in results]
    failed = [result for result in results if not result["ok"]]
    output = {
        "changed": False,
        "msg": "\n".join(summary),
        "summary": summary,
        "results": results,
        "failed_endpoints": [result["endpoint"] for result in failed],
    }
    if failed and params["fail_on_error"]:
        output["msg"] = _fail_message(results, failed)
        module.fail_json(**output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
