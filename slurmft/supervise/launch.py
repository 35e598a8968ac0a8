"""What the in-job supervisor runs to start the training: pure builders, no processes.

``launch_argv`` is the launcher's command line for the nodes the job holds now (mpirun started
through Slurm's plm with ``--no-kill --overlap``, or ``srun --mpi=pmix``); ``slurm_env`` is
Slurm's view of that allocation for the launcher (after a relaunch: the nodes left);
``peer_script`` is the bash input that runs the launcher on a peer node over ssh, with this
environment and working directory; ``pick_peer`` chooses that peer.

Why a peer: were the launcher on the batch host and that host lost, the surviving nodes would
wait on messages to it (Slurm's MessageTimeout, several times over) before the job can be
requeued. On a peer, losing the batch host ends the launch at once.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import SlurmFTError
from slurmft.core.nodeset import expand, fold, is_valid_hostname, validate_hostname
from slurmft.core.selfcmd import python_target

LAUNCHERS = ("mpirun", "srun")
#: Files of slurmft's own in the checkpoint directory: they do not make a run "resumable".
OWN_FILES_PREFIX = ".slurmft-"
LAUNCH_FROM = ("peer", "batch")

#: Variables that describe the host or the login and must not be copied to the peer (the
#: peer's own shell sets them), and bash's read-only ones.
_HOST_VARS = frozenset({"SLURMD_NODENAME", "HOSTNAME", "HOME", "USER", "LOGNAME", "SHELL",
                        "SHLVL", "PWD", "OLDPWD", "_", "TERM", "DISPLAY", "MAIL", "SHELLOPTS",
                        "UID", "EUID", "PPID", "BASHOPTS", "BASHPID"})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LaunchSettings:
    """How the training is started; the same for every launch of one job."""

    train_cmd: tuple[str, ...]
    launcher: str = "mpirun"
    slots: int = 1
    mpirun_args: tuple[str, ...] = ()
    launch_from: str = "peer"
    ssh_cmd: tuple[str, ...] = ("ssh", "-o", "BatchMode=yes")
    warm: bool = False              # ranks start from the node's warm pool (supervise.warm)

    def __post_init__(self) -> None:
        if not self.train_cmd:
            raise ValueError("a training command is required")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}")
        if self.launch_from not in LAUNCH_FROM:
            raise ValueError(f"launch_from must be one of {', '.join(LAUNCH_FROM)}")
        if self.slots < 1:
            raise ValueError("slots must be >= 1")
        if self.warm and python_target(self.train_cmd) is None:
            raise ValueError("a warm start runs `python SCRIPT ...` or `python -m MODULE ...`: "
                             f"not {shlex.join(self.train_cmd[:2])} (drop --warm)")


def job_nodes(environ: Mapping[str, str]) -> list[str]:
    """The job's nodes, from ``SLURM_JOB_NODELIST`` (``slurmft run`` runs in a Slurm job)."""
    nodelist = environ.get("SLURM_JOB_NODELIST", "")
    nodes = [validate_hostname(n) for n in expand(nodelist)] if nodelist else []
    if not nodes:
        raise SlurmFTError("SLURM_JOB_NODELIST is not set: `slurmft run` runs inside a "
                           "Slurm job (the script sbatch runs)")
    return nodes


def slurm_env(nodes: Sequence[str], slots: int) -> dict[str, str]:
    """Slurm's variables for an allocation of ``nodes`` with ``slots`` tasks each (mpirun
    starts its daemons with srun on the nodes these name, so Slurm tracks every rank)."""
    nodelist, n = fold(nodes), len(nodes)
    return {"SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
            "SLURM_NNODES": str(n), "SLURM_JOB_NUM_NODES": str(n),
            "SLURM_TASKS_PER_NODE": f"{slots}(x{n})", "SLURM_NTASKS": str(n * slots),
            "SLURM_NPROCS": str(n * slots)}


def launch_argv(settings: LaunchSettings, nodes: Sequence[str],
                resume: Sequence[str] = ()) -> list[str]:
    """The launcher's argv for ``nodes``, with ``resume`` appended to the training command."""
    n, slots = len(nodes), settings.slots
    train = client_argv(settings.train_cmd) if settings.warm else list(settings.train_cmd)
    if settings.launcher == "mpirun":
        # --no-kill for its srun: a node whose slurmd dies keeps running its ranks (slurmft
        # drains it); --overlap: a new launch need not wait for a stopped one's steps to end.
        return ["mpirun", "-np", str(n * slots), "--mca", "plm_slurm_args", "--no-kill --overlap",
                *settings.mpirun_args, *train, *resume]
    # srun starts the ranks itself (PMIx); --kill-on-bad-exit: a rank that dies ends the step.
    return ["srun", "--mpi=pmix", "--no-kill", "--overlap", "--kill-on-bad-exit=1",
            f"--nodes={n}", f"--nodelist={fold(nodes)}", f"--ntasks-per-node={slots}",
            *train, *resume]


def pool_argv(interpreter: str, nodes: Sequence[str], preload: Sequence[str]) -> list[str]:
    """One pool server per node of ``nodes``: a job step of its own that outlives launches
    (--overlap: it holds no resources the training needs; --no-kill: a lost node leaves the
    servers elsewhere running)."""
    return ["srun", "--overlap", "--no-kill", "--kill-on-bad-exit=0", "--job-name=slurmft-warm",
            f"--nodes={len(nodes)}", f"--nodelist={fold(nodes)}", "--ntasks-per-node=1",
            interpreter, "-m", "slurmft.supervise.warm", "serve",
            "--preload", ",".join(preload)]


def alive_argv(interpreter: str, nodes: Sequence[str]) -> list[str]:
    """One short step that asks each of ``nodes`` whether its pool server answers (each task
    prints ``NODE up`` or ``NODE down``)."""
    return ["srun", "--overlap", "--kill-on-bad-exit=0", "--job-name=slurmft-warm-alive",
            f"--nodes={len(nodes)}", f"--nodelist={fold(nodes)}", "--ntasks-per-node=1",
            interpreter, "-m", "slurmft.supervise.warm", "alive"]


def client_argv(train_cmd: Sequence[str]) -> list[str]:
    """The training command started through this node's pool (same interpreter)."""
    return [train_cmd[0], "-m", "slurmft.supervise.warm", "run", "--", *train_cmd]


def on_peer_argv(settings: LaunchSettings, job_id: int, peer: str, nodes: Sequence[str],
                 argv: Sequence[str]) -> list[str]:
    """What the peer runs: srun itself, or mpirun in a job step of its own on the peer (so
    Slurm stops it with the job), with the allocation's variables set for it."""
    if settings.launcher == "srun":
        return list(argv)
    env = [f"{k}={v}" for k, v in slurm_env(nodes, settings.slots).items()]
    return ["srun", f"--jobid={int(job_id)}", "--overlap", "--no-kill", "--nodes=1",
            "--ntasks=1", f"--nodelist={peer}", "env", *env, *argv]


def peer_script(env: Mapping[str, str], cwd: str, argv: Sequence[str],
                note: str = "") -> str:
    """Bash input for ``ssh PEER bash -s``: export this environment (values quoted, so they
    reach the ranks intact), cd to ``cwd`` (shared storage), run ``note`` (a line that
    leaves the pid somewhere: ``supervise.strays``), exec ``argv``."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()
             if _NAME_RE.match(k) and k not in _HOST_VARS and not k.startswith(("SSH_", "BASH"))]
    lines.append(f"cd {shlex.quote(cwd)} || exit 1")
    if note:
        lines.append(note)
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


def pick_peer(nodes: Sequence[str], here: str) -> str | None:
    """The first node of the allocation that is not this host (and is a valid host name)."""
    for name in nodes:
        if name != here and is_valid_hostname(name):
            return name
    return None


def choose_nodes(allocation: Sequence[str], active: Sequence[str],
                 want: int | None, avoid: Sequence[str] = ()) -> list[str]:
    """The nodes to train on: all of ``allocation`` when ``want`` is None; else ``want`` of
    them, keeping the nodes that trained before (``active``) and filling up with spares in
    allocation order. Fewer than ``want`` when the spares are used up (the run shrinks).
    A node of ``avoid`` (its warm pool server is gone: a rank there would start cold) is
    swapped for a spare not in ``avoid`` when there is one, and trains only when none is."""
    if want is None:
        return list(allocation)
    kept = [n for n in allocation if n in set(active) and n not in set(avoid)]
    spares = sorted((n for n in allocation if n not in set(kept)), key=lambda n: n in avoid)
    return sorted(kept + spares[:max(0, want - len(kept))], key=list(allocation).index)


def rank_node(rank: int, nodes: Sequence[str], slots: int) -> str:
    """A guess at the node a rank runs on (each node's slots filled in allocation order), for
    when its heartbeat names no host; mpirun on a peer may put its own node first, so the
    heartbeat's host is preferred. '?' when the rank is out of range."""
    i = rank // max(1, slots)
    return nodes[i] if 0 <= i < len(nodes) else "?"


#: What a torchft replica-group process reads (the contract with the training script).
ENV_LIGHTHOUSE = "TORCHFT_LIGHTHOUSE"
ENV_REPLICA_ID = "REPLICA_GROUP_ID"
ENV_NUM_REPLICAS = "NUM_REPLICA_GROUPS"
_LIGHTHOUSE_URL = re.compile(r"^http://(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]*):(?P<port>\d{1,5})/?$")


def lighthouse_command(cmd: Sequence[str], port: int, min_replicas: int,
                       join_timeout_ms: int = 1000, quorum_tick_ms: int = 100,
                       heartbeat_timeout_ms: int = 2000) -> list[str]:
    """torchft's lighthouse, listening on every address of its host."""
    return [*cmd, "--min_replicas", str(int(min_replicas)), "--bind", f"0.0.0.0:{int(port)}",
            "--join_timeout_ms", str(int(join_timeout_ms)),
            "--quorum_tick_ms", str(int(quorum_tick_ms)),
            "--heartbeat_timeout_ms", str(int(heartbeat_timeout_ms))]


def torchft_env(lighthouse: str, replica: int, replicas: int, nodes: Sequence[str],
                store_port: int) -> dict[str, str]:
    """The variables of one torchft replica group on ``nodes``: the lighthouse's URL, its
    replica id, the number of groups, and its own store (its first node, ``store_port``)."""
    return {ENV_LIGHTHOUSE: lighthouse, ENV_REPLICA_ID: str(int(replica)),
            ENV_NUM_REPLICAS: str(int(replicas)), "MASTER_ADDR": nodes[0],
            "MASTER_PORT": str(int(store_port))}


def check_lighthouse_url(url: str) -> str:
    """``http://HOST:PORT`` with a valid host name or IPv4 address and a TCP port, else
    ValueError saying what to give."""
    m = _LIGHTHOUSE_URL.match(url.strip())
    if not m or not is_valid_hostname(m["host"]) or not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{url!r} is not a lighthouse address: give http://HOST:PORT, e.g. "
                         "http://login1:29510 (where `slurmft lighthouse` runs)")
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class GroupJob:
    """This job is replica group ``group_id`` of ``replicas`` (``slurmft run --group-id``):
    per-step mode with one Slurm job per group, and torchft's lighthouse
    outside every group (``slurmft lighthouse`` on a login or service node). A group that
    loses a node is requeued by slurmft like any job, without that node; the other groups
    train on. The group's store port is ``store_port + group_id``, so that two groups that
    share a node never collide."""

    group_id: int
    replicas: int
    lighthouse: str
    store_port: int = 29600

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if not 0 <= self.group_id < self.replicas:
            raise ValueError(f"group id {self.group_id} is not one of the {self.replicas} "
                             f"groups (0-{self.replicas - 1})")
        if not (1024 <= self.store_port and self.store_port + self.replicas - 1 <= 65535):
            raise ValueError(f"store ports {self.store_port}-"
                             f"{self.store_port + self.replicas - 1} are not in 1024-65535")
        check_lighthouse_url(self.lighthouse)

    def env(self, nodes: Sequence[str]) -> dict[str, str]:
        """The group's torchft variables for a launch on ``nodes``."""
        return torchft_env(self.lighthouse, self.group_id, self.replicas, nodes,
                           self.store_port + self.group_id)


def initial_resume(mode: str, ckpt: Path) -> list[str]:
    """``--resume DIR`` for the first launch: always, never, or (auto) when the directory
    holds anything but slurmft's own files (a requeued or restarted run)."""
    if mode == "always" or (mode == "auto" and _has_checkpoints(ckpt)):
        return ["--resume", str(ckpt)]
    return []


def exit_code(rc: int | None) -> int | None:
    """A child's exit code as a shell reports it: killed by signal N -> 128 + N."""
    return 128 - rc if rc is not None and rc < 0 else rc


def _has_checkpoints(directory: Path) -> bool:
    """Anything in the directory but slurmft's own files (a requeued or restarted run)."""
    try:
        return any(not n.startswith(OWN_FILES_PREFIX) for n in os.listdir(directory))
    except OSError:
        return False
