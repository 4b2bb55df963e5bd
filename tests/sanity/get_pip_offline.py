"""Offline stand-in for the ``get-pip.py`` bootstrap script that ``ansible-test`` downloads.

ansible-test creates one virtual environment per sanity test and bootstraps pip in it by running a
``get-pip-<version>.py`` fetched from a host this machine cannot reach. It looks for a cached copy
first, so ``make sanity`` places this script there. It installs the pip bundled with the running
Python (``ensurepip``) and then asks that pip for the packages ansible-test requested, through the
package index configured for this machine.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

# get-pip.py options that plain ``pip install`` does not understand.
_GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main(argv: list[str]) -> int:
    """Bootstrap pip, then install the requested packages; return the exit code."""
    ensurepip.bootstrap(upgrade=True)
    # ensurepip hides the machine's pip configuration (index, certificates) from child processes.
    os.environ.pop("PIP_CONFIG_FILE", None)
    args = [arg for arg in argv if arg not in _GET_PIP_ONLY]
    if not any(not arg.startswith("-") for arg in args):
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
