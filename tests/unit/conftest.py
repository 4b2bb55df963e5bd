"""Make ``ansible_collections.permguard.secure`` resolve to this checkout, for tests and their subprocesses.

``make`` points ``PG_COLLECTIONS`` at a directory holding ``ansible_collections/permguard/secure``
linked to the checkout; a bare ``pytest`` run gets a temporary one. Either way it goes first on
``sys.path`` and into ``PYTHONPATH`` (modules run as subprocesses import from it too), and
``PG_TEST_COLLECTIONS`` names it for fixtures.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collections_root() -> str:
    given = os.environ.get("PG_COLLECTIONS")
    if given and (Path(given) / "ansible_collections" / "permguard" / "secure").resolve() == ROOT:
        return given
    tmp = Path(tempfile.mkdtemp(prefix="permguard-collections-"))
    atexit.register(shutil.rmtree, tmp, True)
    namespace = tmp / "ansible_collections" / "permguard"
    namespace.mkdir(parents=True)
    (namespace / "secure").symlink_to(ROOT)
    return str(tmp)


COLLECTIONS_ROOT = _collections_root()
os.environ["PG_TEST_COLLECTIONS"] = COLLECTIONS_ROOT
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (COLLECTIONS_ROOT, os.environ.get("PYTHONPATH")) if p)
if COLLECTIONS_ROOT not in sys.path:
    sys.path.insert(0, COLLECTIONS_ROOT)
