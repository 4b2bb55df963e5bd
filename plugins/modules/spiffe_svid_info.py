#!/usr/bin/python
# Copyright (c) permguard.secure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: spiffe_svid_info
short_description: Fetch the caller's X.509-SVID and trust bundles from a SPIFFE Workload API socket
version_added: 0.1.0
description:
  - Asks the SPIFFE Workload API (a SPIRE agent) for the X.509-SVIDs of the Unix user the task runs as, once, and
    returns the default SVID's SPIFFE ID, trust domain, serial and expiry, every SVID, and the X.509 trust bundle of
    every trust domain the agent hands out.
  - The agent attests the caller by its Unix user, so the answer depends on who runs the task - use C(become_user)
    to check what a service user (for example C(permguard)) will get before the service is started.
  - Before any gRPC call the socket is checked, so each failure comes with a stable RV(reason) and a message that
    says what to fix - a missing socket (C(socket_missing)), a path that is not a socket (C(not_a_socket)), a
    directory the user cannot enter or a socket it may not write to (C(permission_denied)), a stale socket nothing
    listens on (C(nothing_listening)), an agent that has no registration entry for this user (C(no_identity), the
    message names the uid and the C(spire-server entry create ... -selector unix:uid:<uid>) entry to create), an
    agent that hands out nothing in time (C(timeout)), any other error (C(fetch_failed)), a bad O(socket_path)
    (C(invalid_socket)), a bad O(timeout) (C(invalid_argument)) or the missing Python package (C(missing_library)).
  - The fetch is bounded by O(timeout) whatever the client library does inside, so a hung agent cannot hang the
    task.
  - The module only reads; private keys are never returned.
author:
  - permguard.secure maintainers (@permguard)
requirements:
  - spiffe (py-spiffe) >= 0.2, which brings grpcio, protobuf and cryptography
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs (and reports real results) in check mode too.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: The Workload API is reached through a Unix socket.
options:
  socket_path:
    description:
      - The Workload API socket, as a bare absolute path (C(/run/spire/sockets/agent.sock), the form Permguard's
        C(--server-tls-spiffe-socket-path) flag takes) or as a URI (C(unix:///run/spire/sockets/agent.sock), the form
        of C(SPIFFE_ENDPOINT_SOCKET)).
      - When not set, C(SPIFFE_ENDPOINT_SOCKET) from the environment of the task is used, then SPIRE's default
        C(/tmp/spire-agent/public/api.sock). RV(socket_source) says which one was used.
    type: str
  timeout:
    description:
      - Time limit in seconds for the whole check, socket checks and fetch together.
    type: float
    default: 10
  include_bundle:
    description:
      - Also return the PEM of each trust bundle in RV(bundles), for example to write a CA file for a client that
        does not speak the Workload API.
    type: bool
    default: false
notes:
  - With registration entries that select by user (C(unix:uid), C(unix:user)) every process of a user gets the same
    answer, so this module sees what the service will get; entries that select on other attributes (C(unix:path),
    container or Kubernetes selectors) may give the service another identity than the module.
  - A registration entry created on the SPIRE server reaches the agent after its next sync (a few seconds), so a
    C(no_identity) right after creating the entry may need a retry (C(until)/C(retries)).
  - A socket under C(/tmp) (SPIRE's default) is invisible to a systemd service that runs with C(PrivateTmp=yes),
    even when this module, run outside the service, finds it.
  - py-spiffe 0.3 does not expose the hints of the SVIDs; RV(svids[].hint) is then null.
seealso:
  - module: permguard.secure.grpc_tls_probe
    description: Proves a server in mode spiffe with the SVID this module describes.
"""

EXAMPLES = r"""
- name: What identity does the SPIRE agent give to root?
  permguard.secure.spiffe_svid_info:
    socket_path: /run/spire/sockets/agent.sock
  register: svid

- name: Show it
  ansible.builtin.debug:
    msg: "{{ svid.spiffe_id }} expires in {{ svid.days_left }} days ({{ svid.not_after }})"

- name: Preflight - the service user gets an SVID before Permguard is started in mode spiffe
  permguard.secure.spiffe_svid_info:
    socket_path: "{{ permguard_spiffe_socket_path }}"
    timeout: 5
  become: true
  become_user: permguard
  register: server_svid

- name: Retry while a new registration entry reaches the agent
  permguard.secure.spiffe_svid_info:
    socket_path: unix:///run/spire/sockets/agent.sock
  register: svid
  until: svid is succeeded or svid.reason | default('') != 'no_identity'
  retries: 6
  delay: 5

- name: Check the trust domain of the SVID
  ansible.builtin.assert:
    that: svid.trust_domain == 'example.org'
    fail_msg: "the agent issued {{ svid.spiffe_id }}, not an example.org identity"

- name: Fetch the trust bundle as PEM, to give it to a client that does not speak the Workload API
  permguard.secure.spiffe_svid_info:
    include_bundle: true
  register: spiffe

- name: Write it
  ansible.builtin.copy:
    dest: /etc/permguard/spiffe-bundle.pem
    content: "{{ spiffe.bundles[spiffe.trust_domain].pem }}"
    mode: "0644"
"""

RETURN = r"""
msg:
  description: One human line - the SPIFFE ID and its expiry, or why no SVID was fetched and what to do.
  returned: always
  type: str
  sample: "spiffe://example.org/permguard/server (uid 998 (permguard)), serial 4F1C, expires 2026-12-03T16:51:28Z
    (in 3599 s), bundles: example.org (1 authority)"
reason:
  description: On failure, why - one of C(invalid_socket), C(socket_missing), C(not_a_socket), C(permission_denied),
    C(nothing_listening), C(no_identity), C(timeout), C(fetch_failed), C(invalid_argument), C(missing_library).
    A stable interface.
  returned: failure
  type: str
  sample: no_identity
uid:
  description: The effective uid the module ran as - the one the agent attests.
  returned: always
  type: int
  sample: 998
user:
  description: The user name of RV(uid), or null when it has no passwd entry.
  returned: always
  type: str
  sample: permguard
socket_path:
  description: The socket asked, as a bare path (null when O(socket_path) could not be read as one).
  returned: always
  type: str
  sample: /run/spire/sockets/agent.sock
socket_source:
  description: Where RV(socket_path) came from - C(option), C(SPIFFE_ENDPOINT_SOCKET) or C(default).
  returned: always
  type: str
  sample: option
spiffe_id:
  description: SPIFFE ID of the default X.509-SVID (the first the agent sends, the one SPIFFE libraries use).
  returned: success
  type: str
  sample: spiffe://example.org/permguard/server
trust_domain:
  description: Trust domain of RV(spiffe_id).
  returned: success
  type: str
  sample: example.org
serial:
  description: Serial number of the default SVID, upper-case hexadecimal.
  returned: success
  type: str
  sample: 5497E6079BF47FF277C42F0907FFC90348D79FB3
not_before:
  description: Start of the default SVID's validity, UTC, ISO 8601.
  returned: success
  type: str
  sample: "2026-12-03T15:51:18Z"
not_after:
  description: End of the default SVID's validity, UTC, ISO 8601. SPIRE SVIDs are short-lived and renewed by the
    agent at about half their lifetime.
  returned: success
  type: str
  sample: "2026-12-03T16:51:28Z"
seconds_left:
  description: Seconds until RV(not_after) (negative once expired).
  returned: success
  type: int
  sample: 3599
days_left:
  description: Whole days until RV(not_after) (0 for an SVID that lives less than a day).
  returned: success
  type: int
  sample: 0
hint:
  description: Hint of the default SVID, or null.
  returned: success
  type: str
svids:
  description: Every X.509-SVID the agent hands to this user, the default one first.
  returned: success
  type: list
  elements: dict
  contains:
    spiffe_id:
      description: SPIFFE ID of the SVID.
      type: str
    trust_domain:
      description: Trust domain of the SPIFFE ID.
      type: str
    hint:
      description: The agent's hint for this SVID (to pick one among several), or null - also when py-spiffe does
        not expose hints.
      type: str
    default:
      description: Whether this is the default SVID (the first).
      type: bool
    serial:
      description: Serial number, upper-case hexadecimal.
      type: str
    not_before:
      description: Start of validity, UTC, ISO 8601.
      type: str
    not_after:
      description: End of validity, UTC, ISO 8601.
      type: str
    seconds_left:
      description: Seconds until RV(svids[].not_after).
      type: int
    days_left:
      description: Whole days until RV(svids[].not_after).
      type: int
    chain_length:
      description: Certificates in the SVID's chain (1 when the agent's CA is a root of the bundle).
      type: int
bundles:
  description: The X.509 trust bundles handed out with the SVIDs (the SVIDs' trust domain and any federated one),
    by trust domain name.
  returned: success
  type: dict
  sample:
    example.org:
      count: 1
  contains:
    count:
      description: Number of X.509 authorities (CA certificates) in the bundle; more than one during a CA rotation.
      type: int
    pem:
      description: The authorities as concatenated PEM, oldest first. Only with O(include_bundle).
      type: str
      returned: when O(include_bundle=true)
"""

import contextlib
import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.permguard.secure.plugins.module_utils.spiffe_workload import (
    WorkloadApiError,
    resolve_socket,
    svid_info,
    user_label,
)

ARGUMENT_SPEC = {
    "socket_path": {"type": "str"},
    "timeout": {"type": "float", "default": 10},
    "include_bundle": {"type": "bool", "default": False},
}


def _user_name(uid: int) -> str | None:
    label = user_label(uid)
    return label[label.index("(") + 1 : -1] if "(" in label else None


def _summary(facts: dict, uid: int) -> str:
    bundles = ", ".join(
        f"{domain} ({entry['count']} authorit{'y' if entry['count'] == 1 else 'ies'})"
        for domain, entry in facts["bundles"].items()
    )
    others = len(facts["svids"]) - 1
    extra = f", and {others} more SVID{'s' if others > 1 else ''}" if others > 0 else ""
    return (
        f"{facts['spiffe_id']} ({user_label(uid)}), serial {facts['serial']}, expires {facts['not_after']} "
        f"(in {facts['seconds_left']} s){extra}, bundles: {bundles or 'none'}"
    )


def main() -> None:
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    uid = os.geteuid()
    base = {"changed": False, "uid": uid, "user": _user_name(uid), "socket_path": None, "socket_source": None}
    if params["timeout"] <= 0:
        module.fail_json(msg="timeout: must be a positive number of seconds", reason="invalid_argument", **base)
    with contextlib.suppress(WorkloadApiError):  # svid_info raises it again, with its reason
        base["socket_path"], base["socket_source"] = resolve_socket(params["socket_path"])
    try:
        facts = svid_info(params["socket_path"], params["timeout"], params["include_bundle"])
    except ImportError as exc:
        module.fail_json(
            msg=missing_required_lib("spiffe"),
            reason="missing_library",
            exception="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            **base,
        )
    except WorkloadApiError as exc:
        module.fail_json(msg=str(exc), reason=exc.reason, **base)
    base.update(facts)
    module.exit_json(msg=_summary(facts, uid), **base)


if __name__ == "__main__":
    main()
