"""Commands that fault injection runs on a node, and the ways to run them there.

The argv lists are built by pure ``*_argv`` functions; the shell scripts they carry are
constants that take every value as a positional parameter, so no host name, pattern or
interface is ever pasted into shell text. Processes are looked up with
``pgrep --ns $$ --nslist net``: only those in the network namespace of the remote shell (the
node itself; on the local cluster all nodes share one PID namespace), never the lookup's own
shell. ``NodeRunner``: over SSH at a real site (``SshNodeRunner``), by nsenter on the local
cluster (``ExecNodeRunner``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slurmft.core.errors import UsageError

IFACE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

#: List "pid job command" of the processes matching in the node's netns, where job is the
#: SLURM_JOB_ID in the process's environment ("-": none or unreadable, e.g. ranks that mpirun
#: started over ssh). Leaves out this shell and its parent (their command lines hold the
#: pattern too); subshells alive during the scan have exited by the time the list is filtered,
#: so only live processes are kept. Args: pgrep's options and pattern.
LIST_SH = ('out=$(pgrep --ns $$ --nslist net -a "$@") || exit 1; '
           'printf "%s\\n" "$out" | while read -r p rest; do '
           'if [ "$p" = $$ ] || [ "$p" = $PPID ] || [ ! -d "/proc/$p" ]; then continue; fi; '
           'j=$(tr "\\0" "\\n" < "/proc/$p/environ" 2>/dev/null | sed -n "s/^SLURM_JOB_ID=//p"); '
           'echo "$p ${j:--} $rest"; done')
#: pkill restricted to the node's netns (exec: the shell becomes pkill, which never matches
#: itself). Args: pkill's options and pattern.
PKILL_SH = 'exec pkill --ns $$ --nslist net "$@"'
#: Takes the link down and, detached from the SSH session, up again. Args: IFACE SECONDS.
LINK_SH = ('exec </dev/null >/dev/null 2>&1; ip link set dev "$1" down; sleep "$2"; '
           'ip link set dev "$1" up')
#: Put the node's matching processes into a new cgroup v2 with memory.max. Args: JOB BYTES
#: CGROUP2_ROOT(empty: from /proc/self/mountinfo) then pgrep's options and pattern.
#: Prints "OK <cgroup dir> <pid>..." or "ERR <reason>" (exit 3).
LIMIT_MEMORY_SH = r'''
job=$1; bytes=$2; cg=$3; shift 3
fail() { echo "ERR $*"; exit 3; }
[ -n "$cg" ] || cg=$(sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - cgroup2 .*/\1/p' /proc/self/mountinfo | head -n 1)
[ -n "$cg" ] || fail "cgroup v2 is not mounted on this node (no cgroup2 in /proc/self/mountinfo)"
[ -f "$cg/cgroup.controllers" ] || fail "$cg/cgroup.controllers is missing: $cg is not a cgroup v2 mount"
grep -qw memory "$cg/cgroup.controllers" || fail "the memory controller is not available in cgroup v2: $cg/cgroup.controllers lists '$(cat "$cg/cgroup.controllers")' (memory is bound to cgroup v1 or disabled)"
found=$(pgrep --ns $$ --nslist net "$@")
pids=$(for p in $found; do [ "$p" = $$ ] || [ "$p" = $PPID ] || [ ! -d "/proc/$p" ] || echo "$p"; done)
[ -n "$pids" ] || { echo "ERR no matching process on this node"; exit 4; }
first=$(echo "$pids" | head -n 1)
rel=$(sed -n 's/^0:://p' "/proc/$first/cgroup" 2>/dev/null)
parent=""; why=""
for d in "$cg${rel%/}" "$cg"; do
  if ! grep -qw memory "$d/cgroup.subtree_control" 2>/dev/null; then
    why="$why${why:+; }memory is not enabled in $d/cgroup.subtree_control"; continue
  fi
  if [ ! -w "$d" ]; then why="$why${why:+; }$d is not writable"; continue; fi
  parent=$d; break
done
[ -n "$parent" ] || fail "$why"
n=1; while [ -e "$parent/slurmft-inject-$job-$n" ]; do n=$((n + 1)); done
dir="$parent/slurmft-inject-$job-$n"
mkdir "$dir" || fail "cannot create $dir"
echo "$bytes" > "$dir/memory.max" || { rmdir "$dir"; fail "cannot write $dir/memory.max"; }
moved=""
for p in $pids; do echo "$p" > "$dir/cgroup.procs" 2>/dev/null && moved="$moved $p"; done
[ -n "$moved" ] || { rmdir "$dir"; fail "could not move any process into $dir"; }
echo "OK $dir$moved"
'''
#: Undo limit-memory: move processes back to the parent cgroup, remove the cgroups.
#: Args: JOB CGROUP2_ROOT(empty: detect). Prints "OK <dir>..." or "ERR <reason>".
UNDO_MEMORY_SH = r'''
job=$1; cg=$2
[ -n "$cg" ] || cg=$(sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - cgroup2 .*/\1/p' /proc/self/mountinfo | head -n 1)
[ -n "$cg" ] || { echo "ERR cgroup v2 is not mounted on this node"; exit 3; }
done_=""
for dir in $(find "$cg" -maxdepth 12 -type d -name "slurmft-inject-$job-*" 2>/dev/null); do
  for p in $(cat "$dir/cgroup.procs" 2>/dev/null); do
    echo "$p" > "${dir%/*}/cgroup.procs" 2>/dev/null || echo "$p" > "$cg/cgroup.procs" 2>/dev/null
  done
  rmdir "$dir" 2>/dev/null || rm -rf "$dir" 2>/dev/null
  [ -e "$dir" ] && { echo "ERR cannot remove $dir"; exit 3; }
  done_="$done_ $dir"
done
echo "OK$done_"
'''


# --- argv builders (pure) -------------------------------------------------------------------

def check_pattern(pattern: str) -> str:
    """A pgrep pattern for --match: non-empty, one line (it travels as one quoted word)."""
    if not pattern or "\n" in pattern or "\0" in pattern or len(pattern) > 200:
        raise UsageError(f"--match must be one non-empty line of at most 200 characters, "
                         f"not {pattern!r}")
    return pattern


def check_iface(iface: str) -> str:
    if not IFACE_RE.match(iface or "") or len(iface) > 15:
        raise UsageError(f"--iface must be an interface name ([A-Za-z0-9_.-], at most 15 "
                         f"characters), not {iface!r}")
    return iface


def list_procs_argv(pattern: str) -> list[str]:
    """List "pid command" of the processes matching ``pattern`` (pgrep -f) in the node."""
    return ["sh", "-c", LIST_SH, "sh", "-f", "--", check_pattern(pattern)]


def kill_argv(pid: int, signal: str = "KILL") -> list[str]:
    return ["kill", "-s", signal, "--", str(int(pid))]


def kill_slurmd_argv() -> list[str]:
    return ["sh", "-c", PKILL_SH, "sh", "-KILL", "-x", "slurmd"]


def link_down_argv(iface: str, duration: int) -> list[str]:
    """Detached (setsid -f): link down now, up again after ``duration`` s, even if the SSH
    session that started it dies with the link."""
    if int(duration) < 1:
        raise UsageError(f"--duration must be at least 1 second, not {duration}")
    return ["setsid", "-f", "sh", "-c", LINK_SH, "sh", check_iface(iface), str(int(duration))]


def limit_memory_argv(job_id: int, mb: int, pattern: str, cgroup_root: str = "") -> list[str]:
    if int(mb) < 1:
        raise UsageError(f"--mb must be at least 1, not {mb}")
    return ["sh", "-c", LIMIT_MEMORY_SH, "sh", str(int(job_id)), str(int(mb) * 1024 * 1024),
            cgroup_root, "-f", "--", check_pattern(pattern)]


def undo_memory_argv(job_id: int, cgroup_root: str = "") -> list[str]:
    return ["sh", "-c", UNDO_MEMORY_SH, "sh", str(int(job_id)), cgroup_root]


@dataclass(frozen=True)
class RemoteProcess:
    """One process that LIST_SH found on a node."""


    pid: int
    job: str      # SLURM_JOB_ID from its environment, "-" if none or unreadable
    command: str


def parse_procs(text: str) -> list[RemoteProcess]:
    """``pid job command`` lines (LIST_SH) -> sorted by pid; other lines are ignored."""
    out = []
    for line in text.splitlines():
        words = line.strip().split(" ", 2)
        if len(words) >= 2 and words[0].isdigit():
            out.append(RemoteProcess(int(words[0]), words[1], words[2] if len(words) == 3 else ""))
    return sorted(out, key=lambda p: p.pid)


def job_candidates(procs: Sequence[RemoteProcess], job_id: int) -> list[RemoteProcess]:
    """The processes that may belong to the job: those whose environment names it, else
    those with no job id in their environment; never another job's processes."""
    mine = [p for p in procs if p.job == str(job_id)]
    return mine or [p for p in procs if p.job == "-"]


# --- running things on nodes ---------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    """``rc`` None: timed out or could not connect (``error`` says why)."""

    rc: int | None
    stdout: str = ""
    stderr: str = ""
    error: str = ""


class NodeRunner(Protocol):
    def run(self, node: str, argv: Sequence[str], timeout: float) -> ExecResult: ...


class SshNodeRunner:
    """Runs argv on a node over SSH (slurmft.probe.ssh: known_hosts policy, timeouts).

    ``target_for(node)`` returns an ``SshTarget``; the argv is sent as one shell-quoted line.
    """

    def __init__(self, target_for: Callable[[str], Any]) -> None:
        self._target_for = target_for

    def run(self, node: str, argv: Sequence[str], timeout: float) -> ExecResult:
        from slurmft.probe.ssh import run_commands

        out = run_commands(self._target_for(node), [("inject", shlex.join(argv))], timeout)
        if out.error:
            return ExecResult(None, error=out.error)
        if not out.results or out.results[0].exit_status is None:
            return ExecResult(None, error=f"no answer within {timeout:g}s")
        r = out.results[0]
        return ExecResult(r.exit_status, r.stdout, r.stderr)


class ExecNodeRunner:
    """Runs argv on a node of the local cluster: ``wrap(node, argv)`` gives the full argv
    (``Cluster.node_exec_argv``: nsenter into the node's namespaces, no SSH)."""

    def __init__(self, wrap: Callable[[str, Sequence[str]], list[str]]) -> None:
        self._wrap = wrap

    def run(self, node: str, argv: Sequence[str], timeout: float) -> ExecResult:
        try:
            cp = subprocess.run(self._wrap(node, argv), capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return ExecResult(None, error=f"no answer within {timeout:g}s")
        except OSError as exc:
            return ExecResult(None, error=str(exc))
        return ExecResult(cp.returncode, cp.stdout.strip(), cp.stderr.strip())
