"""Tests of the Permguard CLI double (tests/doubles/permguard_cli_double.py) against the server double.

The CLI double runs as a subprocess (``DOUBLE_PYTHON``, like the server double) with ``HOME`` pointing at a
throw-away directory, so each test owns its ``~/.permguard/config.toml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import pytest

from .conftest import DOUBLE, DOUBLE_PYTHON, Pki, Runner, clean_env, free_ports
from .test_permguard_double import load_module, port_args, three_ports

CLI = DOUBLE.parent / "permguard_cli_double.py"
BUILD_RELEASE = DOUBLE.parent / "build_release.py"
TIMEOUT = 40
TRANSPORT_OK = "FetchZones answered UNIMPLEMENTED"
CANONICAL_DEFAULTS = (
    "authstar-max-object-size = 5242880\n"
    "notp-max-packet-size = 16777216\n"
    "pap-endpoint = 'grpc://localhost:9092'\n"
    "pdp-endpoint = 'grpc://localhost:9094'\n"
    "workspace-init-language = 'cedar'\n"
    "zap-endpoint = 'grpc://localhost:9091'\n"
)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def cli(home: Path, args: Sequence[str], env: Optional[Dict[str, str]] = None) -> Run:
    proc = subprocess.run(
        [DOUBLE_PYTHON, str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=clean_env({"HOME": str(home), **(env or {})}),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def write_config(home: Path, values: Dict[str, Any]) -> Path:
    """Write config.toml in the canonical form the CLI keeps (sorted, literal strings)."""
    path = home / ".permguard" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, value in sorted({**load_module(CLI, "cli_double_for_config").CONFIG_DEFAULTS, **values}.items()):
        rendered = ("true" if value else "false") if isinstance(value, bool) else value
        rendered = f"'{value}'" if isinstance(value, str) else rendered
        lines.append(f"{key} = {rendered}\n")
    path.write_text("".join(lines))
    path.chmod(0o600)
    return path


def mtls_config(pki: Pki, port: int, host: str = "localhost", **extra: Any) -> Dict[str, Any]:
    return {
        "zap-endpoint": f"grpcs://{host}:{port}",
        "tls-ca-file": str(pki.ca.cert),
        "tls-cert-file": str(pki.client.cert),
        "tls-key-file": str(pki.client.key),
        **extra,
    }


@pytest.fixture(scope="module")
def cli_module() -> Any:
    return load_module(CLI, "permguard_cli_double_under_test")


@pytest.fixture(scope="module")
def mtls_server(module_runner: Runner, pki: Pki) -> Dict[str, int]:
    ports = three_ports()
    args = [
        f"--server-appdata={module_runner.appdata('cli-mtls')}",
        "--server-tls-mode=mtls",
        f"--server-tls-cert-file={pki.server.cert}",
        f"--server-tls-key-file={pki.server.key}",
        f"--server-tls-ca-file={pki.ca.cert}",
        *port_args(ports),
    ]
    process = module_runner.start(args)
    process.wait_ready(list(ports.values()))
    yield ports
    assert process.stop() == 0


@pytest.fixture(scope="module")
def plain_server(module_runner: Runner) -> Dict[str, int]:
    ports = three_ports()
    process = module_runner.start([f"--server-appdata={module_runner.appdata('cli-none')}", *port_args(ports)])
    process.wait_ready(list(ports.values()))
    yield ports
    assert process.stop() == 0


# --------------------------------------------------------------------------- config.toml


def test_config_is_created_seeded_and_canonical(tmp_path: Path) -> None:
    run = cli(tmp_path, ["version"])
    assert (run.code, run.stdout) == (0, "none\n")
    path = tmp_path / ".permguard" / "config.toml"
    assert path.read_text() == CANONICAL_DEFAULTS
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_config_is_rewritten_in_place_sorted_and_without_comments(tmp_path: Path) -> None:
    path = tmp_path / ".permguard" / "config.toml"
    path.parent.mkdir()
    path.write_text('# managed by hand\nZAP-Endpoint = "grpcs://pg:9091"\ntls-skip-verify = false\nname = "it\'s"\n')
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert cli(tmp_path, ["version"]).code == 0
    text = path.read_text()
    assert "#" not in text
    assert "zap-endpoint = 'grpcs://pg:9091'\n" in text
    assert "tls-skip-verify = false\n" in text
    assert 'name = "it\'s"\n' in text, "a string holding ' becomes a basic string"
    keys = [line.split(" = ")[0] for line in text.splitlines()]
    assert keys == sorted(keys)
    assert (path.stat().st_ino, stat.S_IMODE(path.stat().st_mode)) == (inode, 0o600)


def test_a_canonical_config_is_a_fixed_point(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, {**mtls_config(pki, 9091), "tls-skip-verify": False})
    before = path.read_bytes()
    assert cli(tmp_path, ["version"]).code == 0
    assert path.read_bytes() == before, "the role writes this form; the CLI must not change it"


def test_a_config_that_does_not_parse_exits_1_silently(tmp_path: Path) -> None:
    path = tmp_path / ".permguard" / "config.toml"
    path.parent.mkdir()
    path.write_text("zap-endpoint = \n")
    assert cli(tmp_path, ["version"]) == Run(1, "", "")


def test_render_config_matches_go_toml(cli_module: Any) -> None:
    rendered = cli_module.render_config({"b": 1, "a": "x", "t": {"k": True}, "q": "line\nbreak"})
    assert rendered == "a = 'x'\nb = 1\nq = \"line\\nbreak\"\n\n[t]\nk = true\n"


# --------------------------------------------------------------------------- command line


def test_unknown_flag_and_command_and_help(tmp_path: Path) -> None:
    assert cli(tmp_path, ["zones", "list", "--xyz"]) == Run(1, "", "unknown flag: --xyz\n")
    assert cli(tmp_path, ["zone"]) == Run(1, "", 'unknown command "zone" for "permguard"\n')
    shown = cli(tmp_path, ["zones", "--help"])
    assert shown.code == 0 and "list" in shown.stdout
    assert cli(tmp_path, ["-o", "yaml", "version"]) == Run(1, "cli: yaml is an invalid output\n", "")
    assert cli(tmp_path, ["version", "-o", "json"]).stdout == '{"version":"none"}\n'


# --------------------------------------------------------------------------- transport: success


def test_mtls_from_config_succeeds_and_names_the_certificate(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"]))
    run = cli(tmp_path, ["zones", "list"])
    assert run.code == 0, run.text
    assert run.stdout == ""
    assert TRANSPORT_OK in run.stderr
    serial = format(pki.server.certificate.serial_number, "X")
    assert f"serial {serial} issued by Double Test CA" in run.stderr
    json_run = cli(tmp_path, ["zones", "list", "-o", "json"])
    assert (json_run.code, json_run.stdout) == (0, '{"zones":[]}\n')


def test_ip_endpoint_verified_against_ip_sans(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"], host="127.0.0.1"))
    assert cli(tmp_path, ["zones", "list"]).code == 0


def test_flags_and_environment_beat_the_config(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"], **{"tls-ca-file": str(pki.other_ca.cert)}))
    assert "unknown authority" in cli(tmp_path, ["zones", "list"]).stdout
    assert cli(tmp_path, ["zones", "list", f"--tls-ca-file={pki.ca.cert}"]).code == 0
    assert cli(tmp_path, ["zones", "list"], {"PERMGUARD_TLS_CA_FILE": str(pki.ca.cert)}).code == 0
    assert cli(tmp_path, ["zones", "list"], {"PERMGUARD_TLS_CA_FILE": ""}).code == 1, "empty env counts as unset"
    (other,) = free_ports(1)
    moved = cli(
        tmp_path,
        ["zones", "list", "--tls-ca-file", str(pki.ca.cert)],
        {"PERMGUARD_ZAP_ENDPOINT": f"grpcs://localhost:{other}"},
    )
    assert "connection refused" in moved.stdout


def test_skip_verify_accepts_an_unknown_server_ca(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"], **{"tls-ca-file": str(pki.other_ca.cert)}))
    assert cli(tmp_path, ["zones", "list", "--tls-skip-verify"]).code == 0


def test_plaintext_endpoint_on_a_plaintext_server(tmp_path: Path, plain_server) -> None:
    write_config(tmp_path, {"zap-endpoint": f"grpc://localhost:{plain_server['zap']}"})
    run = cli(tmp_path, ["zones", "list"])
    assert run.code == 0, run.text
    assert "(plaintext)" in run.stderr


# --------------------------------------------------------------------------- transport: failures


def expect_failure(run: Run, *parts: str) -> None:
    assert run.code == 1, run.text
    assert run.stdout.startswith("error: failed to list zones\n  - "), run.text
    for part in parts:
        assert part in run.stdout, run.stdout


def test_no_client_certificate(tmp_path: Path, pki: Pki, mtls_server) -> None:
    config = mtls_config(pki, mtls_server["zap"])
    del config["tls-cert-file"], config["tls-key-file"]
    write_config(tmp_path, config)
    expect_failure(
        cli(tmp_path, ["zones", "list"]),
        'connection error: desc = "error reading server preface: remote error: tls: certificate required"',
        "(hint: the server may require TLS",
    )


def test_client_certificate_from_another_ca(tmp_path: Path, pki: Pki, mtls_server) -> None:
    config = mtls_config(pki, mtls_server["zap"])
    config.update({"tls-cert-file": str(pki.other_client.cert), "tls-key-file": str(pki.other_client.key)})
    write_config(tmp_path, config)
    expect_failure(cli(tmp_path, ["zones", "list"]), "remote error: tls: unknown certificate authority")


def test_server_from_an_unknown_ca(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"], **{"tls-ca-file": str(pki.other_ca.cert)}))
    expect_failure(
        cli(tmp_path, ["zones", "list"]),
        'connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: '
        'x509: certificate signed by unknown authority" (hint: use --tls-skip-verify',
    )


def test_host_name_not_in_the_certificate(tmp_path: Path, pki: Pki, mtls_server) -> None:
    write_config(tmp_path, mtls_config(pki, mtls_server["zap"], host="127.0.0.2"))
    expect_failure(cli(tmp_path, ["zones", "list"]), "x509: certificate is valid for 127.0.0.1, not 127.0.0.2")


def test_go_host_name_rules(cli_module: Any) -> None:
    peer = {"subjectAltName": (("DNS", "*.example.org"), ("DNS", "pg1"), ("IP Address", "10.0.0.1"))}
    assert cli_module.verify_hostname(peer, "a.example.org") is None
    assert cli_module.verify_hostname(peer, "PG1") is None
    assert cli_module.verify_hostname(peer, "10.0.0.1") is None
    assert cli_module.verify_hostname(peer, "a.b.example.org") == (
        "x509: certificate is valid for *.example.org, pg1, not a.b.example.org"
    )
    assert cli_module.verify_hostname(peer, "10.0.0.2") == "x509: certificate is valid for 10.0.0.1, not 10.0.0.2"
    svid = {"subjectAltName": (("URI", "spiffe://example.org/pg"),)}
    assert cli_module.verify_hostname(svid, "pg1") == (
        "x509: certificate is not valid for any names, but wanted to match pg1"
    )
    assert cli_module.verify_hostname(svid, "10.0.0.1") == (
        "x509: cannot validate certificate for 10.0.0.1 because it doesn't contain any IP SANs"
    )


def test_plaintext_client_against_tls_and_tls_client_against_plaintext(
    tmp_path: Path, pki: Pki, mtls_server, plain_server
) -> None:
    write_config(tmp_path, {"zap-endpoint": f"grpc://localhost:{mtls_server['zap']}"})
    expect_failure(
        cli(tmp_path, ["zones", "list"]), "error reading server preface", "(hint: the server may require TLS"
    )
    write_config(
        tmp_path, {"zap-endpoint": f"grpcs://localhost:{plain_server['zap']}", "tls-ca-file": str(pki.ca.cert)}
    )
    expect_failure(
        cli(tmp_path, ["zones", "list"]),
        "tls: first record does not look like a TLS handshake",
        "(hint: the server does not appear to have TLS enabled",
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tls-with-grpc", "  - cli: TLS flags (--tls-*) require the grpcs:// scheme\n"),
        ("cert-without-key", "  - tls: both cert-file and key-file must be provided together for mTLS\n"),
        ("ca-missing", "  - tls: failed to read CA file {missing}: open {missing}: no such file or directory\n"),
        ("ca-not-pem", "  - tls: failed to parse CA certificates from {notpem}\n"),
        ("key-mismatch", "  - tls: failed to load client certificate: tls: private key does not match public key\n"),
        ("bad-scheme", '  - client: endpoint scheme must be grpc:// or grpcs://, got "https://pg:9091"'),
        ("spiffe-no-socket", "  - tls: spiffe-enabled requires spiffe-socket-path\n"),
        ("spiffe-with-grpc", "  - cli: TLS flags (--tls-*) require the grpcs:// scheme\n"),
        ("spiffe-uri-env", "unix://unix:///run/spire/agent.sock"),
        ("spiffe-bare", "not implemented by this double yet (unix:///run/spire/agent.sock)"),
        ("page", "  - cli: --page must be a positive integer\n"),
    ],
)
def test_configuration_errors_before_connecting(case: str, expected: str, tmp_path: Path, pki: Pki) -> None:
    (port,) = free_ports(1)  # nothing listens: these must fail before any connection
    missing, notpem = tmp_path / "missing.pem", tmp_path / "notpem.pem"
    notpem.write_text("not a certificate\n")
    grpcs = {"zap-endpoint": f"grpcs://localhost:{port}"}
    grpc = {"zap-endpoint": f"grpc://localhost:{port}"}
    cases = {
        "tls-with-grpc": ({**grpc, "tls-ca-file": str(pki.ca.cert)}, [], {}),
        "cert-without-key": ({**grpcs, "tls-cert-file": str(pki.client.cert)}, [], {}),
        "ca-missing": ({**grpcs, "tls-ca-file": str(missing)}, [], {}),
        "ca-not-pem": ({**grpcs, "tls-ca-file": str(notpem)}, [], {}),
        "key-mismatch": (mtls_config(pki, port, **{"tls-key-file": str(pki.other_client.key)}), [], {}),
        "bad-scheme": ({"zap-endpoint": "https://pg:9091"}, [], {}),
        "spiffe-no-socket": (grpcs, ["--spiffe-enabled"], {}),
        "spiffe-with-grpc": (grpc, ["--spiffe-enabled", "--spiffe-endpoint=/run/spire/agent.sock"], {}),
        "spiffe-uri-env": (grpcs, ["--spiffe-enabled"], {"SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/agent.sock"}),
        "spiffe-bare": ({**grpcs, "spiffe-enabled": True, "spiffe-endpoint": "/run/spire/agent.sock"}, [], {}),
        "page": (grpc, ["--page=0"], {}),
    }
    config, args, env = cases[case]
    write_config(tmp_path, config)
    run = cli(tmp_path, ["zones", "list", *args], env)
    expect_failure(run, expected.format(missing=missing, notpem=notpem))


def test_connection_refused_and_json_errors(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    write_config(tmp_path, {"zap-endpoint": f"grpc://127.0.0.1:{port}"})
    expect_failure(
        cli(tmp_path, ["zones", "list"]),
        f'connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:{port}: connect: '
        'connection refused"',
    )
    run = cli(tmp_path, ["zones", "list", "--output=json"])
    assert run.code == 1
    payload = json.loads(run.stdout)
    assert payload["error"] == "cli: failed to list zones"
    assert payload["causes"][0].startswith("connection error: desc = ")


def test_zone_request_and_response_encoding(cli_module: Any) -> None:
    assert cli_module.zone_fetch_request(1, 1000, 0) == b"\x08\x01\x10\xe8\x07"
    assert cli_module.zone_fetch_request(1, 1, 300) == b"\x08\x01\x10\x01\x18\xac\x02"
    # ZoneID 7, CreatedAt (skipped), Name "z"
    assert cli_module.decode_zone(b"\x08\x07\x12\x02\x08\x01\x22\x01z") == (7, "z")


# --------------------------------------------------------------------------- release


def test_release_carries_the_cli(tmp_path: Path) -> None:
    builder = load_module(BUILD_RELEASE, "permguard_build_release_cli_under_test")
    assert builder.main(["--out", str(tmp_path / "one"), "--version", "v0.0.52"]) == 0
    assert builder.main(["--out", str(tmp_path / "two")]) == 0
    first, second = tmp_path / "one" / "v0.0.52", tmp_path / "two" / "v0.0.52"
    sums = dict(reversed(line.split("  ")) for line in (first / "checksums.txt").read_text().splitlines())
    assert len(sums) == 8
    for arch in ("x86_64", "arm64"):
        asset = f"permguard_cli_Linux_{arch}.tar.gz"
        data = (first / asset).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sums[asset]
        assert data == (second / asset).read_bytes(), f"{asset} is not reproducible"
        with tarfile.open(first / asset, "r:gz") as archive:
            assert archive.getnames() == ["permguard", "LICENSE", "README.md"]
            member = archive.getmember("permguard")
            assert member.mode == 0o755 and (member.uid, member.gid) == (0, 0)
            payload = archive.extractfile(member).read()
        assert payload.startswith(b"#!/usr/bin/python3\n")
        assert b'__version__ = "0.0.52"' in payload
    # The packaged CLI runs as the real binary's name and reports the release version.
    unpacked = tmp_path / "bin"
    unpacked.mkdir()
    with tarfile.open(first / "permguard_cli_Linux_x86_64.tar.gz", "r:gz") as archive:
        (unpacked / "permguard").write_bytes(archive.extractfile("permguard").read())
    home = tmp_path / "home"
    home.mkdir()
    version = subprocess.run(
        [DOUBLE_PYTHON, str(unpacked / "permguard"), "version"],
        capture_output=True,
        text=True,
        env=clean_env({"HOME": str(home)}),
        timeout=TIMEOUT,
        check=False,
    )
    assert (version.returncode, version.stdout) == (0, "0.0.52\n")
    assert os.path.exists(home / ".permguard" / "config.toml")
