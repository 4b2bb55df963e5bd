"""Audit the -vvv log of an unchanged converge: module executions per certificate, and private key bytes.

``python audit_vvv.py --log converge-vvv.log --keys DIR --hosts h1,h2 [--report report.json] [--keys-only]``

Reads the plain (default callback, no colour) output of ``ansible-playbook -vvv``. Works with pipelining on
or off: a remote module execution is a ``<host> RUN``/``<host> EXEC`` line that starts Python on a fleet host
(``--hosts``); ``<127.0.0.1>``/``<localhost>`` lines are the controller. A task runs the certificate module when
its block carries ``Using module file .../modules/certificate.py``; without pipelining the command names the
module (``AnsiballZ_certificate.py``), with pipelining every Python start on a host in that block counts as an
execution of it (the action plugin runs no other module). Certificates per host and task are the host's
``ok``/``changed`` results in the block (one per loop item).

Checks, each a line of the verdict and a key of the JSON report:

* the run changed nothing and failed nowhere (PLAY RECAP);
* every certificate task executed the module at most ``--max-per-task`` times per certificate on a host (the
  plugin's promise: one execution when nothing is due);
* per host and run, how often the certificate module ran per certificate (every certificate task of the run
  summed - a role that also dry-runs its certificate on the host counts twice); reported, and enforced when
  ``--max-per-run`` is given;
* no byte of any private key in ``--keys`` (PEM files: the hosts' keys and the controller's CA keys) appears
  in the log, in any of the forms a leak would take: the PEM body lines, base64 of the whole PEM file (as
  ``slurp`` returns it), the DER in hex, the private number(s) in hex and decimal - for a key encrypted with a
  passphrase from ``--secrets``, those of the decrypted key too - and no passphrase verbatim. Each form is first
  checked to be found in a text that holds it, so the search cannot pass vacuously. Key material is never
  printed.

With ``--keys-only`` (the log of a run that changed things, such as a reissue) only the key search is enforced;
the counts are still reported. Exit status 0 when every enforced check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TASK_RE = re.compile(r"^TASK \[(?P<name>.*)\] \**\s*$")
EXEC_RE = re.compile(r"^<(?P<host>[^>]+)> (?:RUN|EXEC) (?P<cmd>.*)$")
USING_RE = re.compile(r"^Using module file (?P<path>\S+)\s*$")
RESULT_RE = re.compile(r"^(?P<status>ok|changed): \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\](?P<rest>.*)$")
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)"
)
CERTIFICATE_MODULE = re.compile(r"/modules/certificate\.py$")
ANSIBALLZ_RE = re.compile(r"python3?\S*\s+\S*AnsiballZ_(?P<module>\w+)\.py")
MIN_FRAGMENT = 24  # shorter base64/hex runs could occur by chance


@dataclass
class Block:
    """The lines of one task."""

    name: str
    modules: List[str] = field(default_factory=list)
    remote_runs: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # module name per remote run when the command shows it (no pipelining), else None
    remote_modules: Dict[str, List[Optional[str]]] = field(default_factory=lambda: defaultdict(list))
    local_runs: int = 0
    results: Dict[str, int] = field(default_factory=lambda: defaultdict(int))


def parse(log: str, hosts: Set[str]) -> tuple:
    """Split the log into task blocks; return (blocks, recap)."""
    blocks: List[Block] = []
    recap: Dict[str, Dict[str, int]] = {}
    current: Optional[Block] = None
    for line in log.splitlines():
        if match := TASK_RE.match(line):
            current = Block(match.group("name"))
            blocks.append(current)
            continue
        if match := RECAP_RE.match(line):
            recap[match.group("host")] = {k: int(match.group(k)) for k in ("ok", "changed", "unreachable", "failed")}
            continue
        if current is None:
            continue
        if match := USING_RE.match(line):
            current.modules.append(match.group("path"))
        elif (match := EXEC_RE.match(line)) and re.search(r"\bpython3?\b", match.group("cmd")):
            if match.group("host") in hosts:
                current.remote_runs[match.group("host")] += 1
                named = ANSIBALLZ_RE.search(match.group("cmd"))
                current.remote_modules[match.group("host")].append(named.group("module") if named else None)
            else:
                current.local_runs += 1
        elif (match := RESULT_RE.match(line)) and match.group("host") in hosts:
            current.results[match.group("host")] += 1
    return blocks, recap


def certificate_counts(blocks: Sequence[Block]) -> tuple:
    """Per task and per host: remote certificate-module executions and certificates."""
    per_task = []
    per_host_runs: Dict[str, int] = defaultdict(int)
    per_host_certs: Dict[str, int] = defaultdict(int)
    for block in blocks:
        if not any(CERTIFICATE_MODULE.search(path) for path in block.modules):
            continue
        for host in sorted(set(block.remote_runs) | set(block.results)):
            # named runs count only when they are the certificate module; pipelined (unnamed) runs all count
            runs = sum(1 for module in block.remote_modules.get(host, []) if module in (None, "certificate"))
            certificates = block.results.get(host, 0)
            if runs == 0 and certificates == 0:
                continue
            per_task.append({"task": block.name, "host": host, "certificates": certificates, "remote_runs": runs})
            per_host_runs[host] += runs
            if runs:
                per_host_certs[host] = max(per_host_certs[host], certificates)
    return per_task, dict(per_host_runs), dict(per_host_certs)


def _chunks(text: str, size: int) -> List[str]:
    return [text[i : i + size] for i in range(0, len(text) - size + 1, size)]


def _load_key(pem: bytes, secrets: Sequence[str]) -> Any:
    """Load a PEM private key, unencrypted or encrypted with one of ``secrets``."""
    for password in (None, *(secret.encode("utf-8") for secret in secrets)):
        try:
            return serialization.load_pem_private_key(pem, password=password)
        except (TypeError, ValueError):
            continue
    raise ValueError("a private key that no given passphrase decrypts")


def key_forms(pem: bytes, secrets: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Every form in which bytes of this key could show up in a log (an encrypted key: decrypted too)."""
    text = pem.decode("ascii")
    body = [line for line in text.splitlines() if line and not line.startswith("-----") and ":" not in line]
    key = _load_key(pem, secrets)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # the same key as unencrypted PKCS#8 PEM (what a decrypting tool would print)
    plain_b64 = base64.b64encode(der).decode("ascii")
    body += [line for line in _chunks(plain_b64, 64) if line not in body]
    numbers: List[int] = []
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = [key.private_numbers().private_value]
    elif isinstance(key, rsa.RSAPrivateKey):
        private = key.private_numbers()
        numbers = [private.d, private.p, private.q]
    whole_b64 = base64.b64encode(pem).decode("ascii")
    return {
        "pem_body_line": [line for line in body if len(line) >= MIN_FRAGMENT],
        "base64_of_pem_file": _chunks(whole_b64, 32),
        "der_hex": _chunks(der.hex(), 48) + _chunks(der.hex().upper(), 48),
        "private_number_hex": [format(n, "x") for n in numbers] + [format(n, "X") for n in numbers],
        "private_number_decimal": [str(n) for n in numbers],
    }


def search_keys(log: str, key_files: Sequence[Path], secrets: Sequence[str] = ()) -> Dict[str, Dict[str, int]]:
    """Count, per key file and form, the fragments found in the log (never the fragments themselves).

    Each secret (a CA passphrase) is searched for as well, under the name ``secret-<n>``.
    """
    hits: Dict[str, Dict[str, int]] = {}
    for number, secret in enumerate(secrets, 1):
        hits[f"secret-{number}"] = {"verbatim": int(secret in log)}
    for path in key_files:
        pem = path.read_bytes()
        forms = key_forms(pem, secrets)
        # The search must find each form where it is: a log that printed the key, or slurped it.
        canary = pem.decode("ascii") + base64.b64encode(pem).decode("ascii")
        canary += json.dumps({"der": forms["der_hex"][0] if forms["der_hex"] else ""})
        canary += " ".join(forms["private_number_hex"] + forms["private_number_decimal"])
        for kind, fragments in forms.items():
            if not fragments or not any(fragment in canary for fragment in fragments):
                raise RuntimeError(f"{path.name}: the {kind} search finds nothing even in a text that holds the key")
        hits[path.name] = {kind: sum(fragment in log for fragment in fragments) for kind, fragments in forms.items()}
    return hits


def _certificate_lines(per_task: list, per_host_runs: dict, per_host_certs: dict, limits: tuple) -> tuple:
    max_per_task, max_per_run = limits
    lines, failures, per_run = [], [], {}
    for row in per_task:
        per_cert = row["remote_runs"] / max(row["certificates"], 1)
        lines.append(
            f"task {row['task']!r} on {row['host']}: {row['remote_runs']} remote execution(s) for"
            f" {row['certificates']} certificate(s)"
        )
        if per_cert > max_per_task:
            failures.append(f"{row['task']} ran the certificate module {per_cert:g} times per certificate")
    for host, runs in sorted(per_host_runs.items()):
        certificates = max(per_host_certs.get(host, 0), 1)
        per_run[host] = runs / certificates
        lines.append(f"run on {host}: {runs} certificate-module execution(s) for {certificates} certificate(s)")
        if max_per_run is not None and per_run[host] > max_per_run:
            failures.append(f"{host}: {per_run[host]:g} certificate-module executions per certificate in one run")
    if not per_task:
        failures.append("no certificate task found in the log: is it a -vvv log of a converge?")
    return lines, failures, per_run


def audit(
    log: str, hosts: Set[str], key_files: Sequence[Path], limits: tuple, *, keys_only: bool = False, secrets: tuple = ()
) -> tuple:
    """Run every check (only the key search with ``keys_only``); return (verdict lines, failures, report)."""
    blocks, recap = parse(log, hosts)
    per_task, per_host_runs, per_host_certs = certificate_counts(blocks)
    hits = search_keys(log, key_files, secrets)
    unchanged = bool(recap) and all(v["changed"] == 0 and v["failed"] == 0 for v in recap.values())
    lines = [f"recap: {json.dumps(recap, sort_keys=True)}"]
    failures = []
    if not keys_only and (not unchanged or not hosts <= set(recap)):
        failures.append("the audited run was not an unchanged, successful run on every host")
    cert_lines, cert_failures, per_run = _certificate_lines(per_task, per_host_runs, per_host_certs, limits)
    lines += cert_lines
    failures += [] if keys_only else cert_failures
    total_hits = sum(sum(kinds.values()) for kinds in hits.values())
    lines.append(
        f"private keys searched: {len(key_files)}, passphrases: {len(secrets)};"
        f" key fragments or passphrases found in the log: {total_hits}"
    )
    if not key_files:
        failures.append("no private key to search for")
    failures += [f"bytes of {name} appear in the log: {kinds}" for name, kinds in hits.items() if any(kinds.values())]
    remote_total: Dict[str, int] = defaultdict(int)
    for block in blocks:
        for host, runs in block.remote_runs.items():
            remote_total[host] += runs
    lines.append(f"all remote module executions in the run, per host: {dict(sorted(remote_total.items()))}")
    report = {
        "unchanged": unchanged,
        "recap": recap,
        "certificate_tasks": per_task,
        "certificate_runs_per_certificate": per_run,
        "remote_module_executions": dict(remote_total),
        "private_keys_searched": [p.name for p in key_files],
        "key_fragments_found": hits,
        "failures": failures,
    }
    return lines, failures, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the audit; print the verdict; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--keys", required=True, type=Path, help="directory of PEM private keys (*.pem) to search for")
    parser.add_argument("--secrets", type=Path, help="file of passphrases (one a line): searched for, and decrypt keys")
    parser.add_argument("--hosts", required=True, help="comma-separated fleet hosts (anything else is the controller)")
    parser.add_argument("--max-per-task", type=int, default=1)
    parser.add_argument("--max-per-run", type=int, help="enforce a limit per certificate and run (default: report)")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--keys-only", action="store_true", help="a changing run: only search it for key bytes")
    args = parser.parse_args(argv)
    log = args.log.read_text(encoding="utf-8", errors="replace")
    hosts = {h for h in args.hosts.split(",") if h}
    key_files = sorted(p for p in args.keys.iterdir() if p.is_file() and p.suffix == ".pem")
    secrets = tuple(line for line in args.secrets.read_text().splitlines() if line) if args.secrets else ()
    limits = (args.max_per_task, args.max_per_run)
    lines, failures, report = audit(log, hosts, key_files, limits, keys_only=args.keys_only, secrets=secrets)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print("\n".join(lines))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("audit: " + ("passed" if not failures else f"{len(failures)} failure(s)"))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
