"""Built-in health checks run over SSH, and how their output is judged (pure).

Each check is a (name, remote shell command) pair plus a judge that turns the exit status and
output into ``None`` (fine) or a one-line problem. User values reach the remote shell quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

Judge = Callable[[int, str, str], "str | None"]


@dataclass(frozen=True)
class Check:
    name: str
    command: str
    judge: Judge


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def health_command(command: str) -> Check:
    def judge(status: int, out: str, err: str) -> str | None:
        if status == 0:
            return None
        detail = _first_line(err) or _first_line(out)
        return f"health command exited {status}" + (f": {detail}" if detail else "")
    return Check("command", command, judge)


def gpu_check(expected: int) -> Check:
    def judge(status: int, out: str, err: str) -> str | None:
        if status != 0:
            return f"nvidia-smi failed ({status})" + (f": {_first_line(err)}" if err else "")
        found = sum(1 for ln in out.splitlines() if ln.startswith("GPU "))
        return None if found == expected else f"{found} GPUs visible, expected {expected}"
    return Check("gpus", "nvidia-smi -L", judge)


def disk_check(path: str, min_free_gb: float) -> Check:
    def judge(status: int, out: str, err: str) -> str | None:
        if status != 0:
            return f"cannot stat {path}" + (f": {_first_line(err)}" if err else "")
        lines = [ln.split() for ln in out.splitlines() if ln.strip()]
        try:
            free_gb = int(lines[-1][3]) / 1024 ** 2
        except (IndexError, ValueError):
            return f"cannot read free space of {path}"
        if free_gb < min_free_gb:
            return f"{free_gb:.1f} GB free on {path}, need {min_free_gb:g} GB"
        return None
    return Check("disk", f"df -Pk -- {shlex.quote(path)}", judge)


def build_checks(command: str = "true", *, gpu_count: int = -1,
                 checkpoint_path: str = "", min_free_gb: float = 1.0) -> list[Check]:
    """The health command first, then the enabled built-in checks. (slurmd is checked from
    the prober's side, by connecting to its port: see ``FanoutProber``.)"""
    checks = [health_command(command)] if command else []
    if gpu_count >= 0:
        checks.append(gpu_check(gpu_count))
    if checkpoint_path:
        checks.append(disk_check(checkpoint_path, min_free_gb))
    return checks
