"""Fault injection for campaigns on real jobs (``slurmft inject``).

``Injector(...).inject(InjectRequest(...))`` breaks one node of a job in one chosen way and
records it (logger ``slurmft.testbed.inject`` and an ``event: inject`` line in the state dir's
audit.jsonl). Everything with a side effect comes in through the constructor: the Slurm client
(the job's nodes), a ``NodeRunner`` (run an argv on a node: over SSH at a real site, by
nsenter on the local cluster), the local cluster's ``fault(node, action)`` and the state store.

Remote commands are argv lists built by the pure ``*_argv`` functions below; the shell scripts
they carry are constants that take every value as a positional parameter, so no host name,
pattern or interface is ever pasted into shell text. Processes are looked up with
``pgrep --ns $$ --nslist net``: only those in the network namespace of the remote shell (the
node itself; on the local cluster all nodes share one PID namespace), never the lookup's own
shell. kill-rank never picks a process whose environment names another SLURM_JOB_ID.

Actions (``--cluster NAME``: the local cluster; otherwise a real site, over SSH):

- kill-rank: SIGKILL one random ``pgrep -f MATCH`` process of the job on the node.
- kill-slurmd: Cluster.fault; over SSH ``pkill -KILL -x slurmd`` in the node's netns.
- link-down: Cluster.fault (undo: link-up); over SSH it needs --iface and, detached with
  ``setsid -f``, brings the link up again after --duration seconds.
- link-up, stop-/start-/freeze-/thaw-sshd: Cluster.fault; refused over SSH (SSH could not
  undo them).
- limit-memory: move the node's matching processes into a new cgroup v2
  ``slurmft-inject-<job>-<n>`` with memory.max (memory they already use stays charged to
  their old cgroup: cgroup v2 does not move charges). Fails with the exact reason where
  cgroup v2, its memory controller or a writable parent is missing.
- mask-gpu: write CUDA_VISIBLE_DEVICES without --gpu to ``$CHECKPOINT_PATH/.slurmft-restart.env``;
  job.sh sources it at (re)start (the same mask on every node).
"""

from __future__ import annotations

import os
import random
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slurmft.core.errors import SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import validate_hostname
from slurmft.recovery.state import StateError, StateStore
from slurmft.slurm.records import SlurmClient

log = get_logger(__name__)

CLUSTER_ACTIONS = ("kill-slurmd", "link-down", "link-up", "stop-sshd", "start-sshd",
                   "freeze-sshd", "thaw-sshd")
ACTIONS = ("kill-rank", *CLUSTER_ACTIONS, "limit-memory", "mask-gpu")
#: Refused over SSH, and why (each would cut the only way to undo it).
SSH_REFUSED = {
    "link-up": "a node whose link is down cannot be reached over SSH; link-down --iface "
               "schedules its own link-up after --duration seconds",
    "stop-sshd": "restarting sshd needs SSH (or a site-specific service manager)",
    "start-sshd": "a stopped sshd cannot be reached over SSH",
    "freeze-sshd": "a frozen sshd could not be thawed over SSH",
    "thaw-sshd": "a frozen sshd cannot be reached over SSH",
}
RESTART_ENV = ".slurmft-restart.env"
IFACE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GPU_LIST_RE = re.compile(r"^[0-9]+(,[0-9]+)*$")

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
class Proc:
    pid: int
    job: str      # SLURM_JOB_ID from its environment, "-" if none or unreadable
    command: str


def parse_procs(text: str) -> list[Proc]:
    """``pid job command`` lines (LIST_SH) -> sorted by pid; other lines are ignored."""
    out = []
    for line in text.splitlines():
        words = line.strip().split(" ", 2)
        if len(words) >= 2 and words[0].isdigit():
            out.append(Proc(int(words[0]), words[1], words[2] if len(words) == 3 else ""))
    return sorted(out, key=lambda p: p.pid)


def job_candidates(procs: Sequence[Proc], job_id: int) -> list[Proc]:
    """The processes that may belong to the job: those whose environment names it, else
    those with no job id in their environment; never another job's processes."""
    mine = [p for p in procs if p.job == str(job_id)]
    return mine or [p for p in procs if p.job == "-"]


# --- the restart env file (mask-gpu) ---------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a restart env file ({} if it does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SlurmFTError(f"cannot read {path}: {exc.strerror}") from None
    env = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and _ENV_KEY_RE.match(key):
            try:
                words = shlex.split(value)
            except ValueError:
                raise SlurmFTError(f"{path}: cannot parse the value of {key}") from None
            env[key] = words[0] if words else ""
    return env


def format_env_file(env: dict[str, str], comment: str = "") -> str:
    """A POSIX-sh file the job wrapper sources with ``set -a`` (values shell-quoted)."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def masked_gpus(current: Sequence[int], gpu: int) -> list[int]:
    if gpu not in current:
        raise UsageError(f"GPU {gpu} is not visible to the job (visible: "
                         f"{','.join(map(str, current)) or 'none'})")
    rest = [g for g in current if g != gpu]
    if not rest:
        raise UsageError(f"masking GPU {gpu} would leave the job no GPU")
    return rest


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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


# --- the injector ----------------------------------------------------------------------------

@dataclass
class InjectRequest:
    action: str
    job_id: int
    node: str = ""
    seed: int | None = None
    dry_run: bool = False
    match: str = "train.py"
    iface: str = ""
    duration: int = 60
    gpu: int | None = None
    gpus: int | None = None
    mb: int | None = None
    undo: bool = False
    checkpoint_dir: str = ""


@dataclass
class InjectResult:
    action: str
    job_id: int
    node: str
    detail: str
    dry_run: bool = False
    commands: list[list[str]] = field(default_factory=list)   # argv run (or planned)
    pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


class Injector:
    """Breaks one node of a job. ``fault`` is ``Cluster.fault`` on the local cluster (None at a
    real site: those actions go over SSH or are refused). ``store`` None: no audit file."""

    def __init__(self, *, slurm: SlurmClient | None, runner: NodeRunner | None,
                 fault: Callable[[str, str], str] | None = None,
                 store: StateStore | None = None, timeout: float = 10.0,
                 cluster_name: str = "") -> None:
        self.slurm = slurm
        self.runner = runner
        self.fault = fault
        self.store = store
        self.timeout = timeout
        self.cluster_name = cluster_name

    # public ---------------------------------------------------------------------------------
    def inject(self, req: InjectRequest) -> InjectResult:
        if req.action not in ACTIONS:
            raise UsageError(f"unknown action {req.action!r}: use one of {', '.join(ACTIONS)}")
        if req.node:
            validate_hostname(req.node)
        rng = random.Random(req.seed)
        if req.action == "mask-gpu":
            res = self._mask_gpu(req)
        else:
            self._check_possible(req)
            node = self._pick_node(req, rng)
            res = getattr(self, "_" + req.action.replace("-", "_"))(req, node, rng)
        if not res.dry_run:
            self._audit(res)
        return res

    # helpers --------------------------------------------------------------------------------
    def _check_possible(self, req: InjectRequest) -> None:
        """Refuse early (before asking Slurm) what cannot be done safely here."""
        a = req.action
        if a in CLUSTER_ACTIONS and self.fault is None:
            if a in SSH_REFUSED:
                raise UsageError(f"{a} is refused without --cluster: {SSH_REFUSED[a]}")
            if a == "link-down":
                if not req.iface:
                    raise UsageError("link-down without --cluster needs --iface IF (the node's "
                                     "interface; it comes back up by itself after --duration s)")
                link_down_argv(req.iface, req.duration)   # validates both
        if a in ("kill-rank", "limit-memory"):
            check_pattern(req.match)
        if a == "limit-memory" and not req.undo and (req.mb is None or req.mb < 1):
            raise UsageError("limit-memory needs --mb M (M >= 1), or --undo")

    def _pick_node(self, req: InjectRequest, rng: random.Random) -> str:
        if self.slurm is None:
            raise UsageError("no Slurm client to look up the job's nodes")
        job = self.slurm.job(req.job_id)
        nodes = sorted(job.nodes)
        if not nodes:
            raise UsageError(f"job {req.job_id} holds no nodes (state {job.state}): nothing "
                             "to inject into")
        if req.node:
            if req.node not in nodes:
                raise UsageError(f"{req.node} is not a node of job {req.job_id} "
                                 f"({','.join(nodes)})")
            return req.node
        return rng.choice(nodes)

    def _run(self, node: str, argv: list[str], what: str) -> ExecResult:
        if self.runner is None:
            raise UsageError(f"no way to run commands on {node}")
        res = self.runner.run(node, argv, self.timeout)
        if res.rc is None:
            raise SlurmFTError(f"{what} on {node} failed: {res.error}")
        return res

    def _audit(self, res: InjectResult) -> None:
        log.info("inject %s job=%s node=%s: %s", res.action, res.job_id, res.node or "-",
                    res.detail)
        if self.store is None:
            return
        try:
            self.store.audit({"event": "inject", "time": round(res.time, 3),
                              "job": res.job_id, "node": res.node, "action": res.action,
                              "detail": res.detail, "pid": res.pid,
                              "cluster": self.cluster_name or None})
        except (StateError, OSError) as exc:
            log.error("inject: audit record not written: %s", exc)

    # actions --------------------------------------------------------------------------------
    def _kill_rank(self, req: InjectRequest, node: str, rng: random.Random) -> InjectResult:
        listing = list_procs_argv(req.match)
        if req.dry_run:
            return InjectResult(req.action, req.job_id, node,
                                f"would list processes matching {req.match!r} on {node} and "
                                "SIGKILL one at random", True, [listing, kill_argv(0)[:-1]
                                                                 + ["<PID>"]])
        found = self._run(node, listing, "listing processes")
        everything = parse_procs(found.stdout)
        procs = job_candidates(everything, req.job_id)
        if not procs:
            others = sorted({p.job for p in everything})
            raise SlurmFTError(f"no process matching {req.match!r} on {node} (job "
                               f"{req.job_id})" + (f"; only of job(s) {','.join(others)}"
                                                   if others else "") + ": nothing killed")
        chosen = rng.choice(procs)
        pid, cmd = chosen.pid, chosen.command
        kill = kill_argv(pid)
        res = self._run(node, kill, "kill")
        if res.rc != 0:
            raise SlurmFTError(f"kill of pid {pid} on {node} failed: "
                               f"{(res.stderr or res.stdout or f'rc {res.rc}')[:200]}")
        return InjectResult(req.action, req.job_id, node,
                            f"killed pid {pid} on {node} (SIGKILL): {cmd[:120]}",
                            commands=[listing, kill], pid=pid,
                            extra={"candidates": [p.pid for p in procs], "command": cmd})

    def _cluster_or_ssh(self, req: InjectRequest, node: str, argv: list[str] | None,
                        done: str) -> InjectResult:
        if self.fault is not None:
            plan = ["slurmft", "cluster", "fault", node, req.action, "--name", self.cluster_name]
            if req.dry_run:
                return InjectResult(req.action, req.job_id, node,
                                    f"would run Cluster({self.cluster_name}).fault({node}, "
                                    f"{req.action})", True, [plan])
            return InjectResult(req.action, req.job_id, node, self.fault(node, req.action),
                                commands=[plan])
        assert argv is not None
        if req.dry_run:
            return InjectResult(req.action, req.job_id, node,
                                f"would run {req.action} on {node} over SSH", True, [argv])
        res = self._run(node, argv, req.action)
        if res.rc != 0:
            raise SlurmFTError(f"{req.action} on {node} failed (rc {res.rc}): "
                               f"{(res.stderr or res.stdout or 'nothing matched')[:200]}")
        return InjectResult(req.action, req.job_id, node, done, commands=[argv])

    def _kill_slurmd(self, req, node, rng) -> InjectResult:
        return self._cluster_or_ssh(req, node, kill_slurmd_argv(),
                                    f"killed slurmd on {node} (SIGKILL)")

    def _link_down(self, req, node, rng) -> InjectResult:
        argv = link_down_argv(req.iface, req.duration) if self.fault is None else None
        return self._cluster_or_ssh(req, node, argv,
                                    f"link {req.iface} of {node} down for {req.duration}s "
                                    "(comes back up by itself)")

    def _link_up(self, req, node, rng) -> InjectResult:
        return self._cluster_or_ssh(req, node, None, "")

    _stop_sshd = _start_sshd = _freeze_sshd = _thaw_sshd = _link_up

    def _limit_memory(self, req: InjectRequest, node: str, rng) -> InjectResult:
        argv = (undo_memory_argv(req.job_id) if req.undo
                else limit_memory_argv(req.job_id, req.mb or 0, req.match))
        what = "undo limit-memory" if req.undo else "limit-memory"
        if req.dry_run:
            return InjectResult(req.action, req.job_id, node,
                                f"would run {what} on {node}", True, [argv])
        res = self._run(node, argv, what)
        out = res.stdout.strip().splitlines()
        last = out[-1] if out else ""
        if res.rc != 0 or not last.startswith("OK"):
            reason = last[4:] if last.startswith("ERR ") else (res.stderr or last
                                                                or f"rc {res.rc}")
            raise SlurmFTError(f"{what} on {node} impossible: {reason[:300]}")
        words = last.split()[1:]
        if req.undo:
            detail = (f"removed {' '.join(words)} on {node}" if words
                      else f"no slurmft-inject-{req.job_id}-* cgroup on {node}")
            return InjectResult(req.action, req.job_id, node, detail, commands=[argv],
                                extra={"removed": words})
        cgdir, pids = words[0], [int(p) for p in words[1:]]
        return InjectResult(req.action, req.job_id, node,
                            f"memory.max={req.mb}MiB on {node}: pids {' '.join(map(str, pids))} "
                            f"in {cgdir}", commands=[argv],
                            extra={"cgroup": cgdir, "pids": pids, "mb": req.mb})

    def _mask_gpu(self, req: InjectRequest) -> InjectResult:
        if not req.checkpoint_dir:
            raise UsageError("mask-gpu needs the job's checkpoint directory: --checkpoint-dir "
                             "(or reschedule.checkpoint_dir)")
        path = Path(req.checkpoint_dir) / RESTART_ENV
        env = read_env_file(path)
        if req.undo:
            if req.dry_run:
                return InjectResult(req.action, req.job_id, "", f"would remove {path}", True)
            path.unlink(missing_ok=True)
            return InjectResult(req.action, req.job_id, "", f"removed {path}",
                                extra={"env_file": str(path)})
        if req.gpu is None or req.gpu < 0:
            raise UsageError("mask-gpu needs --gpu I (the GPU index to hide)")
        if req.gpus is not None:
            if req.gpus < 1:
                raise UsageError(f"--gpus must be at least 1, not {req.gpus}")
            current = list(range(req.gpus))
        elif _GPU_LIST_RE.match(env.get("CUDA_VISIBLE_DEVICES", "")):
            current = [int(g) for g in env["CUDA_VISIBLE_DEVICES"].split(",")]
        else:
            raise UsageError(f"give --gpus N: {path} holds no CUDA_VISIBLE_DEVICES list to "
                             "start from")
        rest = masked_gpus(current, req.gpu)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, rest))
        # Open MPI's mpirun does not pass its environment to ranks it starts on other nodes;
        # this is the environment-variable form of `mpirun -x CUDA_VISIBLE_DEVICES`.
        forwarded = [v for v in env.get("OMPI_MCA_mca_base_env_list", "").split(";") if v]
        if "CUDA_VISIBLE_DEVICES" not in forwarded:
            forwarded.append("CUDA_VISIBLE_DEVICES")
        env["OMPI_MCA_mca_base_env_list"] = ";".join(forwarded)
        text = format_env_file(env, f"written by slurmft inject mask-gpu (job {req.job_id}, "
                                    f"GPU {req.gpu} masked); sourced by job.sh at (re)start")
        detail = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} in {path}"
        if req.dry_run:
            return InjectResult(req.action, req.job_id, "", "would write " + detail, True,
                                extra={"env_file": str(path), "content": text})
        if not path.parent.is_dir():
            raise UsageError(f"checkpoint directory {path.parent} does not exist")
        try:
            _write_atomic(path, text)
        except OSError as exc:
            raise SlurmFTError(f"cannot write {path}: {exc.strerror}") from None
        return InjectResult(req.action, req.job_id, "", "wrote " + detail,
                            extra={"env_file": str(path), "visible": rest, "masked": req.gpu})


__all__ = ["ACTIONS", "CLUSTER_ACTIONS", "ExecNodeRunner", "ExecResult", "InjectRequest",
           "InjectResult", "Injector", "NodeRunner", "SshNodeRunner"]
