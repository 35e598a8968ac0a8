"""How slurmft runs itself in another process (a job script, a detached reschedule).

``python -P -m slurmft``: ``-P`` (Python 3.11+) keeps the working directory off ``sys.path``.
Without it, a job whose working directory holds a folder named ``slurmft`` (e.g. the shared
state directory ``<shared>/slurmft``) imports that folder as the package and fails with
"cannot import name '__version__' from 'slurmft' (unknown location)".
"""

from __future__ import annotations

import sys


def slurmft_argv() -> list[str]:
    """argv that runs this slurmft with this Python, whatever the working directory."""
    return [sys.executable, "-P", "-m", "slurmft"]
