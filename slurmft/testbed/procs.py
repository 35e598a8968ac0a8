"""Processes and commands for the local cluster: argv lists only, pids checked by start time.

A recorded process is (pid, start time from /proc/PID/stat); a signal is sent only while both
still match, so a recycled pid never gets a signal meant for one of the cluster's daemons.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from slurmft.core.errors import ClusterError
from slurmft.core.log import get_logger

log = get_logger(__name__)

# Run in a fresh uts+mount namespace: set the host name, bind the cluster's hosts file over
# /etc/hosts, optionally give the node a private /tmp and /run, then exec the command.
# Constant text: every value arrives as a positional argument ($1 host, $2 hosts file, $3 mode).
# On nodes, root's ~/.bashrc is hidden (bind-mounted /dev/null, in the node's private mount
# namespace only): bash sources it for every non-interactive SSH command (mpirun's orted, the
# prober), and a host's interactive setup there (pyenv's rehash lock) stalled SSH for 60 s.
#
# A node's /tmp is private, but paths under the host's /tmp that jobs need (a checkout or venv
# that lives there, e.g. a CI clone) are bound back: the host /tmp is first bound to a
# directory outside /tmp ("hosttmp"), then each kept path from it onto the new /tmp.
# Arguments: HOSTNAME HOSTS_FILE ROLE HOSTTMP N KEEP_1..KEEP_N CMD...
NS_SETUP_SH = (
    'set -e; hostname "$1"; mount --bind "$2" /etc/hosts; role=$3; hosttmp=$4; n=$5; shift 5; '
    'if [ "$role" = node ]; then '
    'if [ "$n" -gt 0 ]; then mkdir -p "$hosttmp"; mount --bind /tmp "$hosttmp"; fi; '
    'mount -t tmpfs -o mode=1777 tmpfs /tmp; '
    'i=0; while [ "$i" -lt "$n" ]; do p=$1; shift; i=$((i + 1)); '
    'mkdir -p "$p"; mount --bind "$hosttmp${p#/tmp}" "$p"; done; '
    'mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/sshd; '
    'if [ -f /root/.bashrc ]; then mount --bind /dev/null /root/.bashrc; fi; '
    'else shift "$n"; fi; '
    'exec "$@"'
)


def ns_setup_argv(hostname: str, hosts_file: str, role: str, argv: Sequence[str],
                  hosttmp: str = "", keep: Sequence[str] = ()) -> list[str]:
    """``sh -c NS_SETUP_SH ...`` that prepares a namespace and then runs ``argv``."""
    keep = [str(p) for p in keep]
    for p in keep:
        if not p.startswith("/tmp/"):
            raise ValueError(f"only paths under /tmp can be kept visible, not {p!r}")
    return ["sh", "-c", NS_SETUP_SH, "sh", hostname, str(hosts_file), role, str(hosttmp),
            str(len(keep)), *keep, *argv]


def paths_under_tmp(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The outermost of ``paths`` that lie under /tmp (resolved), for ``ns_setup_argv``."""
    found = sorted({os.path.realpath(p) for p in paths
                    if os.path.realpath(p).startswith("/tmp/")})
    return [p for p in found if not any(p != q and p.startswith(q + "/") for q in found)]


@dataclass(frozen=True)
class Proc:
    """A process the cluster started."""

    pid: int
    start: int          # /proc/PID/stat start time (clock ticks since boot)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Proc:
        return cls(int(d["pid"]), int(d["start"]))


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Fields after "(comm)": state is [0], ppid [1], starttime [19].
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def record(pid: int) -> Proc:
    st = start_time(pid)
    if st is None:
        raise ClusterError(f"process {pid} exited right after it was started")
    return Proc(pid, st)


def alive(proc: Proc | None) -> bool:
    """True while ``proc`` runs (not a zombie, same start time)."""
    if proc is None:
        return False
    fields = _stat(proc.pid)
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == proc.start


def state(proc: Proc) -> str:
    """'running', 'stopped' (SIGSTOP), or 'dead'."""
    fields = _stat(proc.pid)
    if not fields or fields[0] == "Z" or int(fields[19]) != proc.start:
        return "dead"
    return "stopped" if fields[0] in ("T", "t") else "running"


def signal_proc(proc: Proc, sig: int) -> bool:
    """Send ``sig`` if ``proc`` is still the process we started; True if sent."""
    if not alive(proc):
        return False
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def reap(pids: Iterable[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def wait_gone(procs: Sequence[Proc], timeout: float) -> list[Proc]:
    """Wait until none of ``procs`` runs; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = list(procs)
    while True:
        reap(p.pid for p in left)
        left = [p for p in left if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parents() -> dict[int, int]:
    """{pid: ppid} for every process."""
    out = {}
    for pid in all_pids():
        fields = _stat(pid)
        if fields:
            out[pid] = int(fields[1])
    return out


def descendants(roots: Iterable[int], ppid_of: Mapping[int, int] | None = None) -> set[int]:
    """All descendants of ``roots`` (not the roots themselves)."""
    ppid_of = parents() if ppid_of is None else ppid_of
    children: dict[int, list[int]] = {}
    for pid, ppid in ppid_of.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def ancestors(pid: int, ppid_of: Mapping[int, int]) -> set[int]:
    out = set()
    while pid in ppid_of and pid not in out and pid > 1:
        out.add(pid)
        pid = ppid_of[pid]
    return out


def ns_inode(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of ``inodes``."""
    out = []
    for pid in all_pids():
        if ns_inode(f"/proc/{pid}/ns/net") in inodes:
            out.append(pid)
    return out


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30.0, env: Mapping[str, str] | None = None,
        what: str = "") -> subprocess.CompletedProcess:
    """Run ``argv`` (a list, never a shell line); ClusterError naming the command on failure."""
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, env=None if env is None else dict(env))
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} not found: run `make install`") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what or argv[0]} timed out after {timeout:g}s") from None
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise ClusterError(f"{what or ' '.join(argv[:4])} failed (rc={cp.returncode}): "
                           f"{msg[-1] if msg else 'no output'}")
    return cp


def spawn(argv: Sequence[str], log_file: Path, *, env: Mapping[str, str] | None = None) -> Proc:
    """Start a daemon in its own session, output appended to ``log_file``; return its record.

    The argv chain (nsenter, unshare, sh) execs in place, so the pid is the daemon's pid.
    """
    with open(log_file, "ab") as out:
        try:
            p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True,
                                 env=None if env is None else dict(env))
        except FileNotFoundError:
            raise ClusterError(f"{argv[0]} not found: run `make install`") from None
    # Keep no Popen object: the daemon outlives this call; reap() collects it if we kill it.
    p.returncode = 0  # tell subprocess not to track it as an active child
    st = start_time(p.pid)
    if st is None:
        reap([p.pid])
        raise ClusterError(f"{argv[0]} exited at once: see {log_file}")
    return Proc(p.pid, st)


def exited_rc(proc: Proc) -> int | None:
    """Reap ``proc`` if it is our exited child; its exit status, or None if unknown/running."""
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])



def wait_for_state(proc: Proc, want: str, timeout: float) -> bool:
    """Wait until ``state(proc) == want``; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while state(proc) != want:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def kill_job_procs(node: str, pids: list[int]) -> str:
    """SIGKILL ``pids`` (a node's job processes, found by the backend); say what was done."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not pids:
        return f"no job processes on {node}"
    return f"killed {len(pids)} job process(es) on {node}: {' '.join(map(str, pids))}"


def _is_python(pid: int) -> bool:
    return comm(pid).startswith("python")


def _pool_role(pid: int, ppid_of: Mapping[int, int]) -> str:
    """A warm pool's process (``slurmft run --warm``): "server", "client" (a rank's stand-in
    the launcher started), "rank" (forked by the server: it shows the server's command
    line), or "" for anything else."""
    line = cmdline(pid)
    if "slurmft.supervise.warm run" in line:
        return "client"
    if "slurmft.supervise.warm serve" in line:
        return "rank" if _is_python(ppid_of.get(pid, 0)) else "server"
    return ""


def training_ranks(pids: Iterable[int], ppid_of: Mapping[int, int] | None = None) -> list[int]:
    """Of a node's job processes, the training ranks: Python processes whose parent is not
    Python (a DataLoader worker is not a rank) and with no descendant that is not Python (a
    Python launcher such as ``slurmft run`` has mpirun or srun below it), and the ranks a
    warm pool forked (not the pool's server or its clients). Sorted."""
    ppid_of = parents() if ppid_of is None else ppid_of
    out = []
    for pid in pids:
        role = _pool_role(pid, ppid_of)
        if role == "rank":                  # forked by a warm pool server (slurmft run --warm)
            out.append(pid)
            continue
        if role or not _is_python(pid) or _is_python(ppid_of.get(pid, 0)):
            continue
        if all(_is_python(d) for d in descendants([pid], ppid_of)):
            out.append(pid)
    return sorted(out)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
    except OSError:
        return ""


def stop_rank(node: str, pids: list[int]) -> str:
    """SIGSTOP one training rank of ``pids`` (a node's job processes, found by the backend;
    the lowest pid of ``training_ranks``): it hangs without exiting, its peers block in their
    next collective. ClusterError when the node runs no rank."""
    ranks = training_ranks(pids)
    if not ranks:
        raise ClusterError(f"no training rank (a Python process) among the job processes on "
                           f"{node}: nothing to hang")
    pid = ranks[0]
    proc = Proc(pid, start_time(pid) or 0)
    if not signal_proc(proc, signal.SIGSTOP):
        raise ClusterError(f"rank pid {pid} on {node} exited before it could be stopped")
    wait_for_state(proc, "stopped", 5)
    return f"stopped rank pid {pid} on {node} (SIGSTOP): {cmdline(pid)[:120]}"


def continue_procs(node: str, pids: list[int]) -> str:
    """SIGCONT every stopped process of ``pids`` (undo of ``stop_rank``)."""
    stopped = [p for p in pids if (f := _stat(p)) and f[0] in ("T", "t")]
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    if not stopped:
        return f"no stopped job process on {node}"
    return f"continued {len(stopped)} job process(es) on {node} (SIGCONT): {' '.join(map(str, stopped))}"


# --- slow: a SIGSTOP/SIGCONT duty cycle on one training rank ---------------------------------

#: The argv marker of a duty-cycle helper (its target pid follows it).
SLOW_MARKER = "slurmft-slow-duty"
#: Period (s) and stopped share of a slow rank's duty cycle. A period twice a step's compute
#: slows even a rank whose compute is a sleep (its timer runs on while it is stopped) to
#: half speed: stopped 60 % of the period, a step that starts anywhere in the running 40 %
#: ends in the stopped part, so every step takes one period (50 % stopped left it to chance
#: whether a step ended just before the stop: 1.5-2x, and the straggler's streak broke).
SLOW_PERIOD = 0.1
SLOW_SHARE = 0.6
# The helper: SIGSTOP the target for share x period, SIGCONT it for the rest, while the target
# is the same process (pid + start time); on SIGTERM (unslow) or when the target is gone it
# leaves the target running and exits. Constant text: the values come as arguments.
SLOW_PY = r"""
import os, signal, sys, time
pid, start, period, share = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def same():
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read()
        f = f[f.rindex(")") + 2:].split()
        return f[0] != "Z" and int(f[19]) == start
    except (OSError, ValueError, IndexError):
        return False
def leave(*_):
    if same():
        os.kill(pid, signal.SIGCONT)
    sys.exit(0)
signal.signal(signal.SIGTERM, leave)
signal.signal(signal.SIGINT, leave)
while same():
    os.kill(pid, signal.SIGSTOP)
    time.sleep(period * share)
    if not same():
        break
    os.kill(pid, signal.SIGCONT)
    time.sleep(period * (1 - share))
leave()
"""


def slow_argv(pid: int, start: int, period: float = SLOW_PERIOD,
              share: float = SLOW_SHARE) -> list[str]:
    """The duty-cycle helper's argv (``python -c SLOW_PY MARKER PID START PERIOD SHARE``)."""
    if not (0 < share < 1) or not (0.002 <= period <= 60):
        raise ClusterError(f"a duty cycle needs 0 < share < 1 and a period in [0.002, 60] s, "
                           f"not share {share}, period {period}")
    return [sys.executable, "-c", SLOW_PY, SLOW_MARKER, str(int(pid)), str(int(start)),
            f"{period:g}", f"{share:g}"]


def slow_helpers() -> dict[int, int]:
    """{helper pid: target pid} of the duty-cycle helpers running on this machine."""
    out = {}
    for pid in all_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 4 and argv[3] == SLOW_MARKER.encode() and argv[4].isdigit():
            out[pid] = int(argv[4])
    return out


def slow_rank(node: str, pids: list[int], period: float = SLOW_PERIOD,
              share: float = SLOW_SHARE) -> str:
    """Slow one training rank of ``pids`` (a node's job processes; the lowest pid of
    ``training_ranks``) with a SIGSTOP/SIGCONT duty cycle: a helper process (its own
    session, on this machine) stops it ``share`` of every ``period`` seconds until
    ``unslow_ranks`` or until the rank exits. ClusterError when the node runs no rank or
    one is slowed already."""
    ranks = training_ranks(pids)
    if not ranks:
        raise ClusterError(f"no training rank (a Python process) among the job processes on "
                           f"{node}: nothing to slow")
    busy = sorted(set(slow_helpers().values()) & set(pids))
    if busy:
        raise ClusterError(f"rank pid {busy[0]} on {node} is slowed already (unslow first)")
    pid = ranks[0]
    start = start_time(pid)
    if start is None:
        raise ClusterError(f"rank pid {pid} on {node} exited before it could be slowed")
    try:
        helper = subprocess.Popen(slow_argv(pid, start, period, share), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, close_fds=True)
    except OSError as exc:
        raise ClusterError(f"cannot start the duty-cycle helper: {exc.strerror}") from None
    helper.returncode = 0          # not tracked: it outlives this call (unslow ends it)
    return (f"slowed rank pid {pid} on {node}: stopped {share:.0%} of every {period:g} s by "
            f"helper pid {helper.pid} (undo: unslow): {cmdline(pid)[:120]}")


def unslow_ranks(node: str, pids: list[int], timeout: float = 5.0) -> str:
    """End the duty-cycle helpers of ``pids`` (SIGTERM: each leaves its rank running), then
    SIGCONT any of ``pids`` still stopped."""
    helpers = {h: t for h, t in slow_helpers().items() if t in set(pids)}
    recs = [Proc(h, st) for h in helpers if (st := start_time(h)) is not None]
    for rec in recs:
        signal_proc(rec, signal.SIGTERM)
    for rec in wait_gone(recs, timeout):
        signal_proc(rec, signal.SIGKILL)
    rest = continue_procs(node, pids)
    if not helpers:
        return f"no slowed rank on {node}; {rest}"
    return (f"unslowed rank pid {' '.join(str(t) for t in sorted(set(helpers.values())))} on "
            f"{node} (helper {' '.join(map(str, sorted(helpers)))} ended); {rest}")
