"""``slurmft run -- CMD...``: the in-job supervisor the rendered job script execs."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import socket
from pathlib import Path
from typing import Any

import click

from slurmft.cli import adapters
from slurmft.cli.options import FiniteFloat, count, echo_json, get_config
from slurmft.core.errors import UsageError
from slurmft.core.log import get_logger
from slurmft.core.selfcmd import slurmft_argv

log = get_logger("slurmft.supervise")

#: Where the ranks' heartbeats go, inside the checkpoint directory (shared by every node).
HEARTBEAT_DIR = ".slurmft-heartbeat"


class HangTimeout(click.ParamType):
    """``auto`` (from the observed step time), ``off``, or seconds > 0."""

    name = "auto|off|SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or value in ("auto", "off"):
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not auto, off or a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0 or seconds > 7 * 86400:
            self.fail(f"{value!r} must be auto, off or seconds in (0, 604800]", param, ctx)
        return seconds


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("train_cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--checkpoint-dir", default=None, envvar="CHECKPOINT_PATH",
              help="Checkpoint directory the training resumes from (default: $CHECKPOINT_PATH). "
                   "After a relaunch the training gets `--resume DIR`.")
@click.option("--resume", "resume_mode", type=click.Choice(["auto", "always", "never"]),
              default="auto", show_default=True,
              help="Pass --resume DIR to the first launch: auto when the directory holds "
                   "anything (a requeued run), always (a restart job), never.")
@click.option("--launcher", type=click.Choice(["mpirun", "srun"]), default=None,
              help="mpirun (through Slurm's plm) or srun --mpi=pmix (reschedule.launcher).")
@click.option("--slots", type=count(1, 4096), default=None,
              help="Ranks per node (reschedule.slots).")
@click.option("--mpirun-args", default=None,
              help="Extra mpirun options, shell words (reschedule.mpirun_args).")
@click.option("--launch-from", type=click.Choice(["peer", "batch"]), default=None,
              help="Run the launcher on a peer node over ssh (losing the batch host then ends "
                   "the launch at once) or on the batch host (reschedule.launch_from).")
@click.option("--ssh-args", default=None,
              help="Extra ssh options for reaching the peer, shell words (reschedule.ssh_args).")
@click.option("--spares", type=count(0, 4096), default=0, show_default=True,
              help="Keep this many nodes of the allocation idle: the training runs on the "
                   "others, and a lost node is replaced by a spare (the world size stays the "
                   "same) until the spares are used up; then the run shrinks. The watcher probes "
                   "spares too, and a failed spare is drained, never used.")
@click.option("--refill-spares/--no-refill-spares", default=True, show_default=True,
              help="With --spares: once a spare is used, take an idle node into the running "
                   "job as a new spare (Slurm's job expansion: the site's slurm.conf needs "
                   "SchedulerParameters=permit_job_expansion; without it the run goes on, one "
                   "WARNING). Looks every 10 s while a spare is missing; the training is not "
                   "touched, unless it runs shrunk (a loss found no spare): then it relaunches "
                   "on full size at the first checkpoint 10 s after the node came in.")
@click.option("--train-nodes", type=count(1, 100000), default=None,
              help="With spares: train on this many nodes of the allocation, the rest are "
                   "spares (default: all nodes minus --spares). It holds across a requeue: a "
                   "job requeued with one node less trains on all it got.")
@click.option("--hang-timeout", type=HangTimeout(), default="auto", show_default=True,
              help="A rank that makes no progress this long is hung: its stacks are logged "
                   "and the training relaunched from the latest verified checkpoint. auto: "
                   "--hang-factor x the median step time, at least --hang-floor; off: no "
                   "hang detection. Ranks report progress through CheckpointManager.")
@click.option("--hang-factor", type=FiniteFloat(min=1), default=10.0, show_default=True,
              help="With --hang-timeout auto: this many median step times.")
@click.option("--hang-floor", type=FiniteFloat(min=1), default=60.0, show_default=True,
              help="With --hang-timeout auto: never less than this many seconds (a checkpoint "
                   "save or an evaluation must fit in it).")
@click.option("--straggler-factor", type=FiniteFloat(min=1, min_open=True), default=1.5,
              show_default=True,
              help="A rank whose own busy time per step (its heartbeat: compute from the end "
                   "of one collective to the next) stays this many times the median of its "
                   "peers' for --straggler-steps steps is a straggler.")
@click.option("--straggler-steps", type=count(1, 1_000_000), default=20, show_default=True,
              help="Consecutive steps a rank must stay that slow to be named a straggler.")
@click.option("--straggler-action", type=click.Choice(["report", "swap", "off"]),
              default="report", show_default=True,
              help="report: an ERROR line naming its node and rank, a `straggler` event; "
                   "swap: also relaunch with a spare (--spares) in its node's place, the node "
                   "left idle for the rest of the job (a watcher or operator drains it); off. "
                   "Needs heartbeats (not with --hang-timeout off).")
@click.option("--total-steps", type=count(1, 10**12), default=None,
              help="The training's total steps. Lets a job that shrank (a node lost, no spare "
                   "left) ask for full size back: when enough healthy idle nodes return and "
                   "the steps left x (step time now - step time at full size) exceed the "
                   "restart cost, it is requeued at full size at its next checkpoint "
                   "(`slurmft reschedule --regain`), the arithmetic logged. Needs heartbeats.")
@click.option("--regain", "regain_mode", type=click.Choice(["auto", "off"]), default="auto",
              show_default=True,
              help="auto: regain full size as --total-steps describes; off: never.")
@click.option("--requeue-cost", type=FiniteFloat(min=0), default=None, metavar="SECONDS",
              help="What a requeue adds to the measured relaunch time, in the regain "
                   "arithmetic (default 15).")
@click.option("--replicas", type=count(0, 4096), default=0, show_default=True,
              help="Per-step mode with torchft (pip install 'slurmft[torchft]'): start "
                   "torchft's lighthouse on the batch host and the training as this many "
                   "replica groups, each a job step on its own nodes (TORCHFT_LIGHTHOUSE, "
                   "REPLICA_GROUP_ID, NUM_REPLICA_GROUPS, MASTER_ADDR/PORT set). A group that "
                   "fails is relaunched alone (on a spare if its node was lost) and rejoins "
                   "from a peer; the others train on. 0: restart mode.")
@click.option("--min-replicas", type=count(1, 4096), default=1, show_default=True,
              help="With --replicas: the lighthouse's quorum needs this many groups.")
@click.option("--lighthouse-port", type=count(1024, 65535), default=29510, show_default=True,
              help="With --replicas: the lighthouse's port on the batch host; group i's "
                   "store listens on --store-port + i on its first node.")
@click.option("--store-port", type=count(1024, 65535), default=29600, show_default=True,
              help="With --replicas: the first group's store port.")
@click.option("--group-id", type=count(0, 4095), default=None, metavar="I",
              help="Per-step mode with one job per replica group (`render job --group-jobs` "
                   "writes it, the group id the script's argument): this job is "
                   "group I of --replicas and trains alone, the lighthouse runs elsewhere "
                   "(--lighthouse). A group whose node is lost is requeued without it while "
                   "the others train on. Launches with srun.")
@click.option("--lighthouse", default=None, metavar="URL",
              help="With --group-id: http://HOST:PORT of torchft's lighthouse "
                   "(`slurmft lighthouse` on a login or service node).")
@click.option("--warm", is_flag=True,
              help="Keep one Python per node that has imported --warm-preload, and fork each "
                   "rank from it: a relaunch skips the interpreter and import start-up "
                   "(CMD must be `python SCRIPT ...` or `python -m MODULE ...`).")
@click.option("--warm-preload", default="torch,torch._dynamo,mpi4py", show_default=True,
              metavar="MODULES",
              help="With --warm: modules the pool imports once, comma-separated (mpi4py "
                   "without MPI_Init: each rank initialises its own; torch._dynamo, which "
                   "torch imports at the first optimizer, costs each rank a second or more).")
@click.option("--slurmft-cmd", default=None,
              help="How to run slurmft for the in-place reschedule, shell words "
                   "(default: this Python, -m slurmft).")
@click.option("--reschedule-log", default=None,
              help="Output of the reschedules this job asks for (default: "
                   "<reschedule.state_dir>/reschedule.log).")
@click.option("--dry-run", is_flag=True,
              help="Print what the first launch would run (argv, nodes, resume) and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print it as JSON.")
@click.pass_context
def run_cmd(ctx: click.Context, train_cmd: tuple[str, ...], checkpoint_dir: str | None,
            resume_mode: str, launcher: str | None, slots: int | None,
            mpirun_args: str | None, launch_from: str | None, ssh_args: str | None,
            spares: int, refill_spares: bool, train_nodes: int | None, hang_timeout: Any,
            hang_factor: float, hang_floor: float,
            straggler_factor: float, straggler_steps: int, straggler_action: str,
            total_steps: int | None, regain_mode: str, requeue_cost: float | None,
            replicas: int, min_replicas: int, lighthouse_port: int, store_port: int,
            group_id: int | None, lighthouse: str | None, warm: bool, warm_preload: str,
            slurmft_cmd: str | None, reschedule_log: str | None, dry_run: bool,
            as_json: bool) -> None:
    """Supervise the training CMD inside a Slurm job (the rendered job script runs
    `exec slurmft run ... -- CMD`).

    \b
    It launches CMD on the job's nodes (mpirun or srun), then:
      exit 0             done (exit 0)
      SIGUSR2            slurmft took a failed node out of the job: relaunch
                         on the nodes left, from the latest checkpoint
      launcher failed    ask `slurmft reschedule JOB --in-place` (probe, take
      or a rank hung     failed nodes out) and relaunch, or hand the job to a
                         requeue when its batch host failed or the retry
                         budget is spent
      SIGTERM/SIGINT     Slurm ends the job: no relaunch; exit 128+signal
    Each relaunch kills the last launch's job steps first. Each state change is
    logged and written to <state_dir>/audit.jsonl (event "run"). With --warm, a
    pool step keeps one pre-imported Python per node for the whole job and each
    rank is forked from it (a relaunch then starts in a fraction of a second).

    \b
    Example (what `slurmft render job` writes):
      #SBATCH --nodes=4 --requeue --no-kill --comment=slurmft:relaunch
      exec slurmft run --checkpoint-dir "$CHECKPOINT_PATH" -- python train.py
    """
    cfg = get_config(ctx).reschedule
    if not checkpoint_dir:
        raise UsageError("a checkpoint directory is required: --checkpoint-dir or "
                         "CHECKPOINT_PATH")
    from slurmft.cli.lighthouse import group_job

    group = group_job(replicas, group_id, lighthouse, store_port)
    if group is not None:
        if launcher == "mpirun":
            raise UsageError("--group-id launches with srun (each rank takes its rank in the "
                             "group from srun): drop --launcher mpirun")
        launcher = "srun"
    settings = _settings(cfg, train_cmd, launcher, slots, mpirun_args, launch_from, ssh_args)
    if warm:
        if replicas or group is not None:
            raise UsageError("--warm is for restart mode: per-step mode (--replicas, "
                             "--group-id) keeps the survivors' processes through a loss")
        try:
            settings = dataclasses.replace(settings, warm=True)
        except ValueError as exc:
            raise UsageError(f"--warm: {exc}") from None
    job_id = _job_id()
    ckpt = Path(checkpoint_dir)
    options = _options(cfg, job_id, ckpt, resume_mode, train_cmd, slurmft_cmd, reschedule_log)
    options.warm_preload = tuple(m.strip() for m in warm_preload.split(",") if m.strip())
    options.spares, options.train_nodes = spares, train_nodes
    options.straggler_action = straggler_action
    options.group = group
    replica = (None if group is not None
               else _replica_settings(replicas, min_replicas, lighthouse_port, store_port))
    if replica is not None or group is not None:
        # per rank heartbeats are numbered by rank, and every group has a rank 0
        hang_timeout, straggler_action = "off", "off"
    if hang_timeout != "off":
        options.heartbeat_env = {
            "SLURMFT_HEARTBEAT_DIR": str(ckpt / HEARTBEAT_DIR / str(job_id)),
            # a rank writes its own stacks before the supervisor calls it hung
            "SLURMFT_HANG_DUMP_AFTER": f"{0.8 * (hang_floor if hang_timeout == 'auto' else hang_timeout):g}",
        }
    if dry_run:
        _print_plan(settings, options, as_json, replica)
        return
    from slurmft.supervise.processes import SubprocessProcesses
    from slurmft.supervise.supervisor import Supervisor

    monitor = None
    if hang_timeout != "off":
        from slurmft.supervise.hang import HangDetector

        monitor = HangDetector(options.heartbeat_env["SLURMFT_HEARTBEAT_DIR"], 0,
                               timeout=None if hang_timeout == "auto" else hang_timeout,
                               factor=hang_factor, floor=hang_floor)
    stragglers = None
    if monitor is not None and straggler_action != "off":
        from slurmft.supervise.straggler import StragglerDetector

        stragglers = StragglerDetector(straggler_factor, straggler_steps)
        if straggler_action == "swap" and not spares:
            log.warning("--straggler-action swap without --spares: stragglers are reported "
                        "only (no spare to swap them for)")
    elif straggler_action != "off":
        log.warning("--hang-timeout off: no heartbeats, so no straggler detection")
    slurm, sink = adapters.slurm_client(get_config(ctx)), adapters.run_event_sink(get_config(ctx))
    if ((replica is not None or group is not None) and total_steps is not None
            and regain_mode != "off"):
        log.warning("--total-steps: per-step mode (--replicas) does not regain full size yet; "
                    "a lost group is replaced by a spare or the run goes on with one less")
        total_steps = None
    regainer = _regainer(slurm, ckpt, total_steps, regain_mode, requeue_cost, train_nodes,
                         spares, monitor is not None)
    refill = (_refill(slurm, job_id, spares, train_nodes, options.restart_count)
              if refill_spares else None)
    if replica is not None:
        from slurmft.supervise.replicas import ReplicaSupervisor

        sup: Supervisor = ReplicaSupervisor(settings, options, slurm, SubprocessProcesses(),
                                            emit=sink, replica=replica, refill=refill)
    else:
        sup = Supervisor(settings, options, slurm, SubprocessProcesses(), monitor=monitor,
                         stragglers=stragglers, regainer=regainer, refill=refill,
                         grow=_grow(ckpt) if refill is not None else None, emit=sink)
    if refill is not None:
        refill.avoid = lambda: sup.benched      # stragglers' nodes are not taken back
    sup.install_signal_handlers()
    ctx.exit(sup.run())


def _refill(slurm: Any, job_id: int, spares: int, train_nodes: int | None,
            restart_count: int = 0) -> Any:
    """The spare refill (None: no spares, or a Slurm client that cannot grow a job): the
    job is kept at its training nodes + ``spares``."""
    if not spares or not hasattr(slurm, "expand"):
        return None
    from slurmft.core.nodeset import expand
    from slurmft.supervise.refill import SpareRefill

    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    held = len(expand(nodelist)) if nodelist else 0
    target = (train_nodes or held - spares) + spares
    return SpareRefill(job_id, target, slurm, restart_count=restart_count,
                       partition=os.environ.get("SLURM_JOB_PARTITION", ""))


def _grow(ckpt: Path) -> Any:
    """Back to full size in place once a refill brought a node (``supervise.grow``)."""
    from slurmft.checkpoint.store import Store
    from slurmft.supervise.grow import GrowInPlace

    return GrowInPlace(Store(ckpt).latest_name)


def _regainer(slurm: Any, ckpt: Path, total_steps: int | None, mode: str,
              requeue_cost: float | None, train_nodes: int | None, spares: int,
              heartbeats: bool) -> Any:
    """The regain watch (None: off, or nothing to decide it with)."""
    if mode == "off" or total_steps is None:
        return None
    if not heartbeats:
        log.warning("--total-steps without heartbeats (--hang-timeout off): the step and "
                    "step time are unknown, so the job never regains full size")
        return None
    from slurmft.checkpoint.store import Store
    from slurmft.core.nodeset import expand
    from slurmft.supervise.regain import REQUEUE_COST_S, Regainer

    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    full = train_nodes or len(expand(nodelist) if nodelist else []) - spares
    store = Store(ckpt)
    return Regainer(total_steps=total_steps, nodes_full=max(1, full), list_nodes=slurm.nodes,
                    latest_checkpoint=store.latest_name,
                    requeue_cost_s=REQUEUE_COST_S if requeue_cost is None else requeue_cost)


def _replica_settings(replicas: int, min_replicas: int, lighthouse_port: int,
                      store_port: int) -> Any:
    """Per-step mode's settings (None: restart mode); torchft's lighthouse must be installed
    (next to this Python, as pip puts it, or on PATH)."""
    if not replicas:
        return None
    from slurmft.cli.lighthouse import lighthouse_binary
    from slurmft.supervise.replicas import ReplicaSettings

    found = lighthouse_binary()
    try:
        return ReplicaSettings(replicas=replicas, min_replicas=min_replicas,
                               lighthouse_port=lighthouse_port, store_port=store_port,
                               lighthouse_cmd=(found,))
    except ValueError as exc:
        raise UsageError(f"--replicas: {exc}") from None


def _settings(cfg: Any, train_cmd: tuple[str, ...], launcher: str | None, slots: int | None,
              mpirun_args: str | None, launch_from: str | None, ssh_args: str | None) -> Any:
    from slurmft.supervise.launch import LaunchSettings

    try:
        extra_mpirun = shlex.split(cfg.mpirun_args if mpirun_args is None else mpirun_args)
        extra_ssh = shlex.split(cfg.ssh_args if ssh_args is None else ssh_args)
    except ValueError as exc:
        raise UsageError(f"cannot split --mpirun-args/--ssh-args into words: {exc}") from None
    # ServerAlive: a peer that dies ends the launch within 15 s, watcher or not
    ssh_cmd = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o",
               "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", *extra_ssh)
    return LaunchSettings(train_cmd=tuple(train_cmd), launcher=launcher or cfg.launcher,
                          slots=slots or cfg.slots, mpirun_args=tuple(extra_mpirun),
                          launch_from=launch_from or cfg.launch_from, ssh_cmd=ssh_cmd)


def _job_id() -> int:
    from slurmft.slurm.commands import check_job_id

    raw = os.environ.get("SLURM_JOB_ID", "")
    if not raw:
        raise UsageError("SLURM_JOB_ID is not set: `slurmft run` runs inside a Slurm job "
                         "(the script sbatch runs); see `slurmft render job`")
    return check_job_id(raw)


def _options(cfg: Any, job_id: int, ckpt: Path, resume_mode: str, train_cmd: tuple[str, ...],
             slurmft_cmd: str | None, reschedule_log: str | None) -> Any:
    from slurmft.supervise.supervisor import RunOptions

    try:
        cmd = tuple(shlex.split(slurmft_cmd)) if slurmft_cmd else tuple(slurmft_argv())
    except ValueError as exc:
        raise UsageError(f"cannot split --slurmft-cmd into words: {exc}") from None
    if not cmd:
        raise UsageError("--slurmft-cmd is empty")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
    return RunOptions(
        job_id=job_id, checkpoint_dir=ckpt,
        here=os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0],
        cwd=os.getcwd(), slurmft_cmd=cmd,
        reschedule_log=Path(reschedule_log or Path(cfg.state_dir) / "reschedule.log"),
        resume=resume_mode, restart_count=int(restarts) if restarts.isdigit() else 0,
        train_cmd_line=shlex.join(train_cmd))


def _print_plan(settings: Any, options: Any, as_json: bool, replica: Any = None) -> None:
    from slurmft.core.nodeset import expand
    from slurmft.supervise.launch import choose_nodes, launch_argv, pick_peer, pool_argv
    from slurmft.supervise.supervisor import resume_args

    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    allocation = expand(nodelist) if nodelist else []
    want = (min(options.train_nodes, len(allocation)) if options.train_nodes
            else max(1, len(allocation) - options.spares) if options.spares else None)
    nodes = choose_nodes(allocation, [], want)
    resume = resume_args(options, first=True)
    peer = pick_peer(nodes, options.here) if settings.launch_from == "peer" else None
    doc = {"job_id": options.job_id, "nodes": nodes,
           "spares": [n for n in allocation if n not in nodes], "launcher": settings.launcher,
           "launch_host": peer or options.here, "argv": launch_argv(settings, nodes, resume),
           "resume": bool(resume), "heartbeat": options.heartbeat_env,
           "reschedule_log": str(options.reschedule_log)}
    if settings.warm:                # the pool step, on every node of the allocation
        doc["warm_pool"] = pool_argv(settings.train_cmd[0], allocation, options.warm_preload)
        doc["warm_pool_host"] = ((pick_peer(allocation, options.here)
                                  if settings.launch_from == "peer" else None) or options.here)
    if options.group is not None and nodes:
        doc.update(group=options.group.group_id, replicas=options.group.replicas,
                   lighthouse=options.group.lighthouse, torchft_env=options.group.env(nodes))
    if replica is not None:
        from slurmft.supervise.replicas import group_argv, lighthouse_argv, split_groups

        groups = split_groups(nodes, replica.replicas)
        doc.update(launcher="srun (replica groups)", launch_host=options.here,
                   argv=lighthouse_argv(replica),
                   replica_groups=[{"replica": i, "nodes": g,
                                    "argv": group_argv(settings, i, g)}
                                   for i, g in enumerate(groups)])
    if as_json:
        echo_json(doc)
        return
    spare = f", {len(doc['spares'])} spare(s)" if doc["spares"] else ""
    click.echo(f"job {doc['job_id']}: {doc['launcher']} on {len(nodes)} node(s) "
               f"({','.join(nodes) or 'none'}){spare}, launched from {doc['launch_host']}"
               f"{', resuming' if resume else ''}")
    click.echo(f"  {shlex.join(doc['argv'])}")
    if "warm_pool" in doc:
        click.echo(f"  warm pool, started from {doc['warm_pool_host']}: "
                   f"{shlex.join(doc['warm_pool'])}")
    if "group" in doc:
        click.echo(f"  replica group {doc['group']} of {doc['replicas']}, lighthouse "
                   f"{doc['lighthouse']}")
    for g in doc.get("replica_groups", []):
        click.echo(f"  replica group {g['replica']} on {','.join(g['nodes'])}: "
                   f"{shlex.join(g['argv'])}")
