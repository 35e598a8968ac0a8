"""Fault injection for campaigns on real jobs (``slurmft inject``).

``Injector(...).inject(InjectRequest(...))`` breaks one node of a job in one chosen way and
records it (logger ``slurmft.testbed.inject`` and an ``event: inject`` line in the state dir's
audit.jsonl). Everything with a side effect comes in through the constructor: the Slurm client
(the job's nodes), a ``NodeRunner`` (run an argv on a node: over SSH at a real site, by
nsenter on the local cluster), the local cluster's ``fault(node, action)`` and the state store.

Remote commands (argv builders, shell constants, node runners) live in ``testbed/remote.py``.
kill-rank never picks a process whose environment names another SLURM_JOB_ID.

Actions (``--cluster NAME``: the local cluster; otherwise a real site, over SSH):

- kill-rank: SIGKILL one random ``pgrep -f MATCH`` process of the job on the node.
- hang: SIGSTOP one random training rank among them (never a launcher or wrapper such as
  mpirun, srun, orted, ``slurmft run``, sh): it neither exits nor makes progress, its peers
  block in their next collective. ``--undo``: SIGCONT to the matching processes of the job on
  ``--node``, or on every node of the job.
- kill-slurmd: Cluster.fault; over SSH ``pkill -KILL -x slurmd`` in the node's netns.
- link-down: Cluster.fault (undo: link-up); over SSH it needs --iface and, detached with
  ``setsid -f``, brings the link up again after --duration seconds.
- link-up, stop-/start-/freeze-/thaw-sshd: Cluster.fault; refused over SSH (SSH could not
  undo them).
- limit-memory: move the node's matching processes into a new cgroup v2
  ``slurmft-inject-<job>-<n>`` with memory.max (memory they already use stays charged to
  their old cgroup: cgroup v2 does not move charges). Fails with the exact reason where
  cgroup v2, its memory controller or a writable parent is missing.
- slow, unslow: Cluster.fault (a SIGSTOP/SIGCONT duty cycle on one training rank of the
  node: about half speed; unslow ends it); refused over SSH for now.
- mask-gpu: write CUDA_VISIBLE_DEVICES without --gpu to ``$CHECKPOINT_PATH/.slurmft-restart.env``;
  job.sh sources it at (re)start (the same mask on every node).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slurmft.core.atomic import atomic_write
from slurmft.core.envfile import RESTART_ENV, format_env_file, read_env_file
from slurmft.core.errors import SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import validate_hostname
from slurmft.observe.events import Injected
from slurmft.recovery.state import StateError, StateStore
from slurmft.slurm.records import SlurmClient
from slurmft.testbed.backend import Fault
from slurmft.testbed.remote import (
    ExecNodeRunner, ExecResult, NodeRunner, RemoteProcess, SshNodeRunner, check_pattern,
    job_candidates, kill_argv, kill_slurmd_argv, limit_memory_argv, link_down_argv,
    list_procs_argv, parse_procs, undo_memory_argv,
)

log = get_logger(__name__)

#: The local cluster's faults that inject can ask for (Cluster.fault; some also over SSH).
CLUSTER_ACTIONS = tuple(f.value for f in (
    Fault.KILL_SLURMD, Fault.LINK_DOWN, Fault.LINK_UP, Fault.STOP_SSHD, Fault.START_SSHD,
    Fault.FREEZE_SSHD, Fault.THAW_SSHD, Fault.SLOW, Fault.UNSLOW))
ACTIONS = ("kill-rank", "hang", *CLUSTER_ACTIONS, "limit-memory", "mask-gpu")
#: Refused over SSH, and why (each would cut the only way to undo it).
SSH_REFUSED = {
    "link-up": "a node whose link is down cannot be reached over SSH; link-down --iface "
               "schedules its own link-up after --duration seconds",
    "stop-sshd": "restarting sshd needs SSH (or a site-specific service manager)",
    "start-sshd": "a stopped sshd cannot be reached over SSH",
    "freeze-sshd": "a frozen sshd could not be thawed over SSH",
    "thaw-sshd": "a frozen sshd cannot be reached over SSH",
    "slow": "the duty-cycle helper runs on the local cluster only (for now)",
    "unslow": "the duty-cycle helper runs on the local cluster only (for now)",
}
_GPU_LIST_RE = re.compile(r"^[0-9]+(,[0-9]+)*$")
#: Commands a --match pattern finds besides the ranks (the launcher's command line holds the
#: training command too): hang never stops these. Checked on the first three words' basenames
#: (``python .venv/bin/slurmft run``, ``python -m slurmft``).
LAUNCHERS = frozenset({"mpirun", "mpiexec", "orterun", "prterun", "orted", "prted", "srun",
                       "sbatch", "salloc", "slurmft", "ssh", "sh", "bash", "dash", "env",
                       "timeout", "setsid", "nohup", "stdbuf", "time", "xargs"})


def rank_candidates(procs: Sequence[RemoteProcess]) -> list[RemoteProcess]:
    """The processes that look like training ranks, not a launcher or wrapper of them."""
    out = []
    for p in procs:
        names = [w.rsplit("/", 1)[-1] for w in p.command.split()[:3]]
        if names and not any(n in LAUNCHERS for n in names):
            out.append(p)
    return out


# --- mask-gpu ---------------------------------------------------------------------------------

def masked_gpus(current: Sequence[int], gpu: int) -> list[int]:
    if gpu not in current:
        raise UsageError(f"GPU {gpu} is not visible to the job (visible: "
                         f"{','.join(map(str, current)) or 'none'})")
    rest = [g for g in current if g != gpu]
    if not rest:
        raise UsageError(f"masking GPU {gpu} would leave the job no GPU")
    return rest


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
        elif req.action == "hang" and req.undo:
            self._check_possible(req)
            res = self._unhang(req)
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
        if a in ("kill-rank", "hang", "limit-memory"):
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
            self.store.audit(Injected(time=round(res.time, 3), job=res.job_id, node=res.node,
                                      action=res.action, detail=res.detail, pid=res.pid,
                                      cluster=self.cluster_name or None))
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

    def _hang(self, req: InjectRequest, node: str, rng: random.Random) -> InjectResult:
        listing = list_procs_argv(req.match)
        stop = kill_argv(0, "STOP")[:-1] + ["<PID>"]
        if req.dry_run:
            return InjectResult(req.action, req.job_id, node,
                                f"would list processes matching {req.match!r} on {node} and "
                                "SIGSTOP one training rank at random", True, [listing, stop])
        found = self._run(node, listing, "listing processes")
        procs = job_candidates(parse_procs(found.stdout), req.job_id)
        ranks = rank_candidates(procs)
        if not ranks:
            seen = "; ".join(p.command[:60] for p in procs[:3])
            raise SlurmFTError(f"no training rank matching {req.match!r} on {node} (job "
                               f"{req.job_id})" + (f", only launchers: {seen}" if seen else "")
                               + ": nothing stopped")
        chosen = rng.choice(ranks)
        argv = kill_argv(chosen.pid, "STOP")
        res = self._run(node, argv, "kill -s STOP")
        if res.rc != 0:
            raise SlurmFTError(f"SIGSTOP of pid {chosen.pid} on {node} failed: "
                               f"{(res.stderr or res.stdout or f'rc {res.rc}')[:200]}")
        return InjectResult(req.action, req.job_id, node,
                            f"stopped pid {chosen.pid} on {node} (SIGSTOP; undo: inject hang "
                            f"--undo): {chosen.command[:120]}",
                            commands=[listing, argv], pid=chosen.pid,
                            extra={"candidates": [p.pid for p in ranks],
                                   "command": chosen.command})

    def _unhang(self, req: InjectRequest) -> InjectResult:
        """SIGCONT to the job's matching processes on --node, or on every node of the job
        (running ones ignore it)."""
        if req.node:
            self._pick_node(req, random.Random())           # a node of the job
            nodes = [req.node]
        else:
            if self.slurm is None:
                raise UsageError("no Slurm client to look up the job's nodes")
            nodes = sorted(self.slurm.job(req.job_id).nodes)
        listing = list_procs_argv(req.match)
        if req.dry_run:
            return InjectResult(req.action, req.job_id, ",".join(nodes),
                                f"would send SIGCONT to the processes matching {req.match!r} "
                                f"on {', '.join(nodes) or 'no node'}", True,
                                [listing, ["kill", "-s", "CONT", "--", "<PID>..."]])
        commands: list[list[str]] = []
        continued: dict[str, list[int]] = {}
        for node in nodes:
            found = self._run(node, listing, "listing processes")
            commands.append(listing)
            pids = [p.pid for p in job_candidates(parse_procs(found.stdout), req.job_id)]
            if not pids:
                continue
            argv = ["kill", "-s", "CONT", "--", *map(str, pids)]
            commands.append(argv)
            res = self._run(node, argv, "kill -s CONT")
            if res.rc != 0:
                raise SlurmFTError(f"SIGCONT on {node} failed: "
                                   f"{(res.stderr or res.stdout or f'rc {res.rc}')[:200]}")
            continued[node] = pids
        detail = ("; ".join(f"SIGCONT to pid {' '.join(map(str, p))} on {n}"
                            for n, p in continued.items())
                  or f"no process matching {req.match!r} of job {req.job_id} on "
                     f"{', '.join(nodes) or 'any node'}: nothing to continue")
        return InjectResult(req.action, req.job_id, ",".join(continued or nodes), detail,
                            commands=commands, extra={"continued": continued, "undo": True})

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

    _stop_sshd = _start_sshd = _freeze_sshd = _thaw_sshd = _slow = _unslow = _link_up

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
            atomic_write(path, text, mode=0o644)
        except OSError as exc:
            raise SlurmFTError(f"cannot write {path}: {exc.strerror}") from None
        return InjectResult(req.action, req.job_id, "", "wrote " + detail,
                            extra={"env_file": str(path), "visible": rest, "masked": req.gpu})


__all__ = ["ACTIONS", "CLUSTER_ACTIONS", "LAUNCHERS", "rank_candidates", "ExecNodeRunner", "ExecResult", "InjectRequest",
           "InjectResult", "Injector", "NodeRunner", "RemoteProcess", "SshNodeRunner",
           "job_candidates", "kill_argv", "kill_slurmd_argv", "limit_memory_argv",
           "link_down_argv", "list_procs_argv", "parse_procs", "undo_memory_argv"]
