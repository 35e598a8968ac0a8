"""Pure functions that build Slurm argv lists (one builder per command), validate what goes on
them, and tell reads from writes. No process is started here; what the commands print is read
by ``slurm.parse``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from slurmft.core.errors import UsageError
from slurmft.core.nodeset import NodeSet, validate_hostname

SLURM_COMMANDS = ("squeue", "sinfo", "scontrol", "sbatch", "scancel")
NODE_STATES = ("DRAIN", "DOWN", "RESUME", "UNDRAIN")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: A Slurm partition name as slurmft passes it on (letters, digits, ``._-``).
_PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ----------------------------------------------------------------------------- validation

#: Slurm job ids are 32-bit (0xfffffffe at most; array and het job ids are in the same range).
MAX_JOB_ID = 0xFFFFFFFE


def check_job_id(job_id: Any) -> int:
    """A positive integer job id, or UsageError."""
    if isinstance(job_id, bool):
        raise UsageError(f"invalid job id {job_id!r}: expected a positive integer")
    if isinstance(job_id, str) and job_id.strip().isascii() and job_id.strip().isdigit():
        job_id = int(job_id.strip())
    if not isinstance(job_id, int) or not 0 < job_id <= MAX_JOB_ID:
        raise UsageError(f"invalid job id {job_id!r}: expected a positive integer up to "
                         f"{MAX_JOB_ID}")
    return job_id


def check_reason(reason: str) -> str:
    """A non-empty one-line reason (Slurm requires one to drain or down a node)."""
    if not isinstance(reason, str) or not reason.strip():
        raise UsageError("a reason is required to drain or down a node")
    if _CTRL_RE.search(reason):
        raise UsageError(f"invalid reason {reason!r}: control characters are not allowed")
    return reason.strip()


def _hostlist(nodes: Sequence[str] | str) -> str:
    """Host names (a list, or a hostlist expression), validated and folded."""
    folded = str(NodeSet(nodes))
    if not folded:
        raise UsageError("no node names given")
    return folded


# ----------------------------------------------------------------------------- argv builders

def _bin(name: str, bin_dir: str = "") -> str:
    return f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name


def build_squeue_argv(bin_dir: str = "") -> list[str]:
    """``squeue --all --states=all --json``: every job slurmctld still knows, finished ones
    included, on every release. 22.05 ignores -j/-t/-n together with --json (we filter on our
    side) and lists finished jobs anyway; 24.11 and 26.05 honour the default state filter and
    leave COMPLETED/FAILED jobs out unless ``--states=all`` (checked on the real releases)."""
    return [_bin("squeue", bin_dir), "--all", "--states=all", "--json"]


def build_steps_argv(job_id: int, bin_dir: str = "") -> list[str]:
    """The job's steps, one id per line (22.05's ``squeue --steps --json`` lists jobs instead)."""
    return [_bin("squeue", bin_dir), "--steps", "--noheader", "--jobs", str(check_job_id(job_id)),
            "--format", "%i"]


def build_all_steps_argv(bin_dir: str = "") -> list[str]:
    """Every job's steps, one id per line: one request however many jobs need theirs (the
    watcher reads it at most once per cycle, see ``slurm.view``)."""
    return [_bin("squeue", bin_dir), "--all", "--steps", "--noheader", "--format", "%i"]


def build_allocation_argv(job_id: int, bin_dir: str = "") -> list[str]:
    """The job's nodes now, as one hostlist (``squeue --format %N``): cheaper than the JSON of
    every job, and what a job wrapper asks after each relaunch."""
    return [_bin("squeue", bin_dir), "--noheader", "--jobs", str(check_job_id(job_id)),
            "--format", "%N"]


def build_sinfo_argv(bin_dir: str = "") -> list[str]:
    """``sinfo --json --Node``: one record per node on every release. 22.05 lists node records
    whatever the options; 24.11 and 26.05 group nodes that share a state into one ``sinfo[]``
    entry carrying the reason of only one of them (two nodes drained for different reasons
    came back with one reason) unless ``--Node`` is given (checked on the real releases)."""
    return [_bin("sinfo", bin_dir), "--json", "--Node"]


def build_version_argv(bin_dir: str = "") -> list[str]:
    """``sinfo --version``: ``slurm 24.11.5`` (read by ``slurm.version.parse_version``)."""
    return [_bin("sinfo", bin_dir), "--version"]


def build_show_job_argv(job_id: int, bin_dir: str = "") -> list[str]:
    return [_bin("scontrol", bin_dir), "show", "job", "-o", str(check_job_id(job_id))]


def build_job_action_argv(action: str, job_id: int, bin_dir: str = "") -> list[str]:
    """``scontrol hold|release|requeue|requeuehold <id>``."""
    if action not in ("hold", "release", "requeue", "requeuehold"):
        raise ValueError(f"unknown job action {action!r}")
    return [_bin("scontrol", bin_dir), action, str(check_job_id(job_id))]


def build_cancel_argv(job_id: int, bin_dir: str = "") -> list[str]:
    return [_bin("scancel", bin_dir), str(check_job_id(job_id))]


def build_expand_alloc_argv(job_id: int, node: str, partition: str = "", wait: int = 3,
                            bin_dir: str = "") -> list[str]:
    """``salloc --no-shell --dependency=expand:JOB``: one node (``node``) allocated to be
    merged into the running job ``job_id`` (Slurm's job expansion; needs
    ``SchedulerParameters=permit_job_expansion``). ``--immediate``: given up after ``wait``
    seconds rather than left queued."""
    jid = check_job_id(job_id)
    argv = [_bin("salloc", bin_dir), "--no-shell", f"--immediate={int(wait)}", "--nodes=1",
            f"--nodelist={validate_hostname(node)}", f"--dependency=expand:{jid}",
            f"--job-name=slurmft-spare-{jid}"]
    if partition:
        if not _PARTITION_RE.match(partition):
            raise UsageError(f"invalid partition name {partition!r}")
        argv.append(f"--partition={partition}")
    return argv


def build_cancel_spare_helpers_argv(job_id: int, bin_dir: str = "") -> list[str]:
    """``scancel --name=slurmft-spare-JOB``: the expansion helpers of ``job_id`` by name
    (one whose id salloc did not print)."""
    return [_bin("scancel", bin_dir), f"--name=slurmft-spare-{check_job_id(job_id)}"]


def build_resize_argv(job_id: int, num_nodes: str, bin_dir: str = "") -> list[str]:
    """``scontrol update JobId=.. NumNodes=0|ALL``: the two halves of a job expansion (the
    helper gives its nodes up, the job takes all it was given)."""
    if num_nodes not in ("0", "ALL"):
        raise UsageError(f"invalid resize {num_nodes!r}: 0 or ALL")
    return [_bin("scontrol", bin_dir), "update", f"JobId={check_job_id(job_id)}",
            f"NumNodes={num_nodes}"]


#: Signals slurmft may send to a job's batch script (never one that kills it outright).
BATCH_SIGNALS = frozenset({"USR1", "USR2", "HUP", "CONT", "INT", "TERM"})


def build_kill_batch_argv(job_id: int, bin_dir: str = "") -> list[str]:
    """``scancel --batch --full --signal=KILL <id>``: SIGKILL, now, to the batch script's
    process group (the script, its srun, its mpirun) and to every step's processes on the
    batch host. A signal, not a cancel: ``--signal=KILL`` without ``--batch`` ends a running
    job the polite way (slurmd sends SIGTERM, SIGKILL only ``KillWait`` later), and
    ``--batch`` alone SIGKILLs the script's shell only (slurmstepd ``kill()``s its pid;
    ``--full`` makes it ``killpg()``)."""
    return [_bin("scancel", bin_dir), "--batch", "--full", "--signal=KILL",
            str(check_job_id(job_id))]


def build_signal_batch_argv(job_id: int, signal: str, bin_dir: str = "") -> list[str]:
    """``scancel --batch --signal=SIG <id>``: signal the batch script only, not its steps."""
    sig = signal.upper().removeprefix("SIG")
    if sig not in BATCH_SIGNALS:
        raise UsageError(f"signal {signal!r} is not one slurmft sends to a batch script "
                         f"(one of {', '.join(sorted(BATCH_SIGNALS))})")
    return [_bin("scancel", bin_dir), "--batch", f"--signal={sig}", str(check_job_id(job_id))]


#: Signals slurmft may send to a job's numbered steps (the training).
STEP_SIGNALS = frozenset({"KILL", "TERM", "USR1", "USR2", "CONT", "STOP", "URG"})


def build_signal_steps_argv(job_id: int, steps: Sequence[int], signal: str = "KILL",
                            bin_dir: str = "") -> list[str]:
    """``scancel --ctld --signal=SIG <id>.<step>...``: signal those steps only (never the
    batch step: the job's own script survives). KILL stops the training wherever its launcher
    ran; USR1 asks it to save (slurmft's checkpoint managers save on it); URG tells a replica
    group that a peer group was lost (``slurmft.checkpoint.peerloss``).

    ``--ctld``: slurmctld signals the steps' nodes and scancel returns at once. Without it,
    scancel (22.05, launch/slurm) sends a step's SIGKILL to each of its slurmds itself and
    waits: a step on a cut-off node held it 6 s (TCPTimeout=1, MessageTimeout=5 on the local
    cluster) before the rescheduler's next command."""
    jid = check_job_id(job_id)
    sig = signal.upper().removeprefix("SIG")
    if sig not in STEP_SIGNALS:
        raise UsageError(f"signal {signal!r} is not one slurmft sends to job steps "
                         f"(one of {', '.join(sorted(STEP_SIGNALS))})")
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise ValueError(f"step ids must be integers >= 0, got {list(steps)!r}")
    return [_bin("scancel", bin_dir), "--ctld", f"--signal={sig}",
            *(f"{jid}.{s}" for s in steps)]


def build_node_update_argv(nodes: Sequence[str] | str, state: str, reason: str | None = None,
                           bin_dir: str = "") -> list[str]:
    """``scontrol update NodeName=<hostlist> State=<state> [Reason=<reason>]``.

    ``reason=None`` omits the field (Slurm then rejects DRAIN/DOWN itself); the client always
    passes a checked reason for those.
    """
    state = state.upper()
    if state not in NODE_STATES:
        raise ValueError(f"unknown node state {state!r}")
    argv = [_bin("scontrol", bin_dir), "update", f"NodeName={_hostlist(nodes)}", f"State={state}"]
    if reason is not None:
        argv.append(f"Reason={check_reason(reason)}")
    return argv


def build_update_job_argv(job_id: int, *, exclude: Sequence[str] | None = None,
                          num_nodes: tuple[int, int] | None = None,
                          num_tasks: int | None = None, num_cpus: int | None = None,
                          start_now: bool = False, required: Sequence[str] | None = None,
                          comment: str | None = None, bin_dir: str = "") -> list[str]:
    """``scontrol update JobId=J [ExcNodeList=..] [ReqNodeList=..] [NumNodes=min-max]
    [NumTasks=n] [NumCPUs=c] [StartTime=now]``.

    Never ``MinNodes=``: Slurm 22.05 rejects it for jobs and drops the whole request.
    ``exclude=[]`` clears the exclusion list; ``None`` leaves it alone. A job submitted with
    ``--ntasks-per-node`` keeps its task and CPU counts when only NumNodes shrinks, and stays
    PENDING (BadConstraints): shrink NumTasks and NumCPUs in the same request (checked on
    22.05: NumNodes+NumTasks alone is not enough). ``required`` replaces the nodes the job
    must run on (``[]`` clears them): a job pinned with ``sbatch -w`` to a node now excluded
    could never start again.
    """
    argv = [_bin("scontrol", bin_dir), "update", f"JobId={check_job_id(job_id)}"]
    if exclude is not None:
        argv.append(f"ExcNodeList={NodeSet(exclude)}")
    if required is not None:
        argv.append(f"ReqNodeList={NodeSet(required)}")
    if num_nodes is not None:
        lo, hi = num_nodes
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 1 or hi < lo:
            raise UsageError(f"invalid node count {num_nodes!r}: need 1 <= min <= max")
        argv.append(f"NumNodes={lo}-{hi}")
    for field, value in (("NumTasks", num_tasks), ("NumCPUs", num_cpus)):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"invalid {field} {value!r}: need a whole number >= 1")
            argv.append(f"{field}={value}")
    if start_now:
        argv.append("StartTime=now")
    if comment is not None:
        if _CTRL_RE.search(comment):
            raise UsageError("a job comment may not contain control characters")
        argv.append(f"Comment={comment}")
    if len(argv) == 3:
        raise UsageError("nothing to update: give exclude, num_nodes, start_now or comment")
    return argv


def build_sbatch_argv(script: str, args: Sequence[str] = (), bin_dir: str = "") -> list[str]:
    """``sbatch --parsable [args...] script`` (args are sbatch options, one per element)."""
    if isinstance(args, str):
        raise TypeError("args must be a list of sbatch options, not a string")
    if not script or _CTRL_RE.search(script):
        raise UsageError(f"invalid batch script path {script!r}")
    return [_bin("sbatch", bin_dir), "--parsable", *[str(a) for a in args], script]


# ----------------------------------------------------------------------------- reads vs writes

#: ``scontrol`` subcommands that only read.
_SCONTROL_READS = frozenset({"show", "ping", "version"})


def is_write(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (built here) changes Slurm: everything but squeue, sinfo and
    ``scontrol show``. Unknown commands count as writes (a dry run must not run them)."""
    if not argv:
        return True
    name = str(argv[0]).rsplit("/", 1)[-1]
    if name in ("squeue", "sinfo"):
        return False
    if name == "scontrol" and len(argv) > 1 and argv[1] in _SCONTROL_READS:
        return False
    return True


def dry_run_reply(argv: Sequence[str]) -> str:
    """What a write that a dry run only records answers: job id 0 for ``sbatch --parsable``
    (no job was submitted), nothing for the others."""
    return "0\n" if argv and str(argv[0]).rsplit("/", 1)[-1] == "sbatch" else ""
