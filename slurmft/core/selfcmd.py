"""How slurmft runs itself in another process (a job script, a detached reschedule), and
which training commands it can start from a warm Python (``python_target``).

``python -P -m slurmft``: ``-P`` (Python 3.11+) keeps the working directory off ``sys.path``.
Without it, a job whose working directory holds a folder named ``slurmft`` (e.g. the shared
state directory ``<shared>/slurmft``) imports that folder as the package and fails with
"cannot import name '__version__' from 'slurmft' (unknown location)".
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_PYTHON = re.compile(r"^python[0-9.]*$")


def slurmft_argv() -> list[str]:
    """argv that runs this slurmft with this Python, whatever the working directory."""
    return [sys.executable, "-P", "-m", "slurmft"]


@dataclass(frozen=True)
class Target:
    """What a rank runs: a script path or a module, its arguments, and the interpreter."""

    interpreter: str
    kind: str           # "path" | "module"
    name: str
    args: tuple[str, ...]


def python_target(cmd: Sequence[str]) -> Target | None:
    """``python SCRIPT ARGS`` or ``python -m MODULE ARGS`` (a warm start can run those);
    None for anything else (interpreter options, another program)."""
    if len(cmd) < 2 or not _PYTHON.match(os.path.basename(cmd[0])):
        return None
    if cmd[1] == "-m":
        return Target(cmd[0], "module", cmd[2], tuple(cmd[3:])) if len(cmd) > 2 else None
    if cmd[1].startswith("-"):
        return None
    return Target(cmd[0], "path", cmd[1], tuple(cmd[2:]))
