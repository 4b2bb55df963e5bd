"""Run the project's test stages and print what each counted.

Stages: ``lint`` (ruff, ansible-lint production profile); ``sanity`` (ansible-test sanity on a
copy of the collection under an ``ansible_collections/permguard/secure`` path); ``unit`` (pytest);
``build`` (the built tarball holds no test files; installed, its docs render); ``molecule`` (every
scenario, or one with ``--scenario``). ``all`` runs them in that order and ends with one
``N passed, N failed`` line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PG_CACHE", Path.home() / ".cache" / "permguard-secure"))
SCENARIOS = ROOT / "extensions" / "molecule"


@dataclass
class Stage:
    """Outcome of one stage: counts of passed and failed checks and the wall time."""

    name: str
    passed: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command, stream its output, and return (exit code, output)."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return proc.wait(), "".join(lines)


def stage_lint() -> Stage:
    """Ruff over all Python, then ansible-lint with the production profile."""
    stage = Stage("lint")
    for name, cmd in (
        ("ruff", ["ruff", "check", "."]),
        ("ruff-format", ["ruff", "format", "--check", "."]),
        ("ansible-lint", ["ansible-lint", "--profile", "production"]),
    ):
        code = run(cmd)[0]
        if code == 0:
            stage.passed += 1
        else:
            stage.failed += 1
            stage.notes.append(f"{name} failed")
    return stage


def tracked_files() -> list[str]:
    """Files git tracks plus untracked files it does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).exists()]


def sanity_tree() -> Path:
    """Copy the collection to a path ending in ansible_collections/permguard/secure."""
    dest = CACHE / "sanity" / "ansible_collections" / "permguard" / "secure"
    if dest.exists():
        shutil.rmtree(dest)
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # ansible-test reads git metadata to decide which files belong to the collection.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def stage_sanity() -> Stage:
    """ansible-test sanity (all tests, no ignore file) for the controller's Python."""
    stage = Stage("sanity")
    tree = sanity_tree()
    for ignore in (tree / "tests" / "sanity").glob("ignore-*.txt"):
        stage.failed += 1
        stage.notes.append(f"ignore file present: {ignore.name}")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    code, out = run(["ansible-test", "sanity", "--python", py, "--color", "no"], cwd=tree)
    ran = set(re.findall(r'^Running sanity test "([^"]+)"', out, re.M))
    failed = set(re.findall(r"^ERROR: Found \d+ ([\w-]+) issue", out, re.M))
    if m := re.search(r"^FATAL: The \d+ sanity test\(s\) listed below.*\n((?:\S+\n?)+)", out, re.M):
        failed |= set(m.group(1).split())
    stage.passed += len([t for t in ran if t not in failed])
    stage.failed += len(failed)
    if code != 0 and not failed:
        stage.failed += 1
        stage.notes.append(f"ansible-test exited {code}")
    stage.notes.extend(f"{t} failed" for t in sorted(failed))
    return stage


def stage_unit() -> Stage:
    """Pytest over tests/unit."""
    stage = Stage("unit")
    env = dict(os.environ, PYTHONPATH=os.environ["PG_COLLECTIONS"])
    code, out = run([sys.executable, "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider"], env=env)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    stage.passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    stage.failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", summary))
    if code != 0 and stage.failed == 0:
        stage.failed = 1
        stage.notes.append(f"pytest exited {code}")
    return stage


FORBIDDEN_IN_ARTIFACT = ("tests/", "extensions/molecule/", "bench/", ".ci/", "Makefile", "requirements-test.txt")
DOCUMENTED = (
    ["-t", "role", "permguard.secure.server"],
    ["-t", "role", "permguard.secure.pki"],
    ["-t", "role", "permguard.secure.cli"],
    ["permguard.secure.grpc_tls_probe"],
    ["permguard.secure.certificate"],
    ["permguard.secure.ca"],
)


def stage_build() -> Stage:
    """Build the collection tarball, check it holds no test files, install it, read its docs."""
    stage = Stage("build")
    out_dir = CACHE / "build"
    shutil.rmtree(out_dir, ignore_errors=True)
    code, out = run(["ansible-galaxy", "collection", "build", "--force", "--output-path", str(out_dir), "."])
    tarballs = sorted(out_dir.glob("permguard-secure-*.tar.gz"))
    if code != 0 or not tarballs:
        stage.failed += 1
        stage.notes.append("collection build failed")
        return stage
    with tarfile.open(tarballs[-1]) as tar:
        leaked = [n for n in tar.getnames() if n.startswith(FORBIDDEN_IN_ARTIFACT)]
    stage.passed += not leaked
    stage.failed += bool(leaked)
    if leaked:
        stage.notes.append(f"artifact holds test files: {', '.join(leaked[:5])}")
    install_to = out_dir / "installed"
    code = run(["ansible-galaxy", "collection", "install", "--force", "-p", str(install_to), str(tarballs[-1])])[0]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(install_to))
    for args in DOCUMENTED:
        code, out = run(["ansible-doc", *args], env=env)
        good = code == 0 and out.lstrip().startswith(("> ROLE", "> MODULE")) and len(out.splitlines()) > 10
        stage.passed += good
        stage.failed += not good
        if not good:
            stage.notes.append(f"ansible-doc {' '.join(args)} failed")
    stage.notes.append(f"{tarballs[-1].name}")
    return stage


def scenario_names() -> list[str]:
    """Every molecule scenario of the collection, sorted."""
    return sorted(p.parent.name for p in SCENARIOS.glob("*/molecule.yml"))


def stage_molecule(only: str | None) -> Stage:
    """`molecule test` for each scenario (or only the one named)."""
    stage = Stage("molecule")
    names = [only] if only else scenario_names()
    for name in names:
        if name not in scenario_names():
            stage.failed += 1
            stage.notes.append(f"no scenario {name!r}; have: {', '.join(scenario_names())}")
            continue
        start = time.monotonic()
        code = run(["molecule", "test", "-s", name], env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1"))[0]
        took = time.monotonic() - start
        if code == 0:
            stage.passed += 1
        else:
            stage.failed += 1
        stage.notes.append(f"{name}: {'passed' if code == 0 else 'FAILED'} in {took:.0f}s")
    return stage


def report(stages: list[Stage]) -> int:
    """Print a table of the stages and the closing count line; return the exit code."""
    print("\n" + "=" * 72)
    print(f"{'stage':<10} {'passed':>7} {'failed':>7} {'time':>8}  notes")
    for st in stages:
        print(f"{st.name:<10} {st.passed:>7} {st.failed:>7} {st.seconds:>7.0f}s  {'; '.join(st.notes)}")
    passed = sum(st.passed for st in stages)
    failed = sum(st.failed for st in stages)
    print("=" * 72)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    """Parse arguments and run the requested stages."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=["lint", "sanity", "unit", "build", "molecule", "all"])
    parser.add_argument("--scenario", help="run only this molecule scenario")
    args = parser.parse_args()
    plan = {
        "lint": [stage_lint],
        "sanity": [stage_sanity],
        "unit": [stage_unit],
        "build": [stage_build],
        "molecule": [lambda: stage_molecule(args.scenario)],
        "all": [stage_lint, stage_sanity, stage_unit, stage_build, lambda: stage_molecule(None)],
    }[args.stage]
    stages = []
    for func in plan:
        start = time.monotonic()
        stage = func()
        stage.seconds = time.monotonic() - start
        stages.append(stage)
    return report(stages)


if __name__ == "__main__":
    sys.exit(main())
