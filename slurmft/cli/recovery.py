"""Recovery commands: ``reschedule`` (one job, now), ``watch`` (every job, in a loop) and
``epilog`` (Slurm's hook that starts a detached reschedule)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from slurmft.cli import adapters
from slurmft.cli.options import FiniteFloat, count, echo_json, get_config, job_id_type
from slurmft.core.errors import ExitCode, PolicyError, SlurmFTError, UsageError


def _echo_refusal(exc: PolicyError, job_id: int, as_json: bool) -> None:
    """What was done before a policy refusal (a hold, drained nodes) is part of the answer."""
    report = exc.report
    if as_json:
        doc = report.to_dict() if report else {"job_id": job_id}
        echo_json({**doc, "error": str(exc), "exit_code": int(exc.exit_code)})
    elif report is not None:
        click.echo(report.text())


@click.command("reschedule")
@click.argument("job_id")
@click.option("--dry-run", is_flag=True, help="Print the exact commands it would run; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-retry", type=count(0), default=None,
              help="Reschedules allowed per job, requeues and resubmissions together "
                   "(reschedule.max_retry, default 3; env MAX_RETRY too).")
@click.option("--min-nodes", type=count(1), default=None,
              help="Refuse to shrink the job below this many nodes (reschedule.min_nodes).")
@click.option("--no-drain", is_flag=True, default=False,
              help="Do not drain failed nodes. A running job's failed nodes are still set "
                   "DOWN (without it the job waits for SlurmdTimeout); a DOWN node returns "
                   "to service by itself when its slurmd registers again.")
@click.option("--settle", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Wait up to this many seconds for a COMPLETING job to settle (its failed "
                   "nodes are set DOWN first).")
@click.option("--nodes", "nodes_hint", default=None,
              help="Hostlist the job ran on, for a job Slurm already requeued (the epilog "
                   "passes SLURM_JOB_NODELIST).")
@click.option("--train-cmd", default=None,
              help="Training command for a restart job (reschedule.train_cmd).")
@click.option("--checkpoint-dir", default=None,
              help="Checkpoint directory a restart job resumes from (reschedule.checkpoint_dir).")
@click.option("--state-dir", default=None, help="Shared state directory (reschedule.state_dir).")
@click.option("--wait", type=FiniteFloat(min=0), default=60.0, show_default=True,
              help="After a requeue, wait up to this many seconds for the job to run again "
                   "(re-issuing StartTime=now if Slurm applied the requeue delay); 0: return "
                   "at once.")
@click.option("--restart-failed", is_flag=True,
              help="A requeueable job that ended FAILED on healthy nodes (a rank crashed) is "
                   "requeued in place, within the retry budget. The job wrapper passes it.")
@click.option("--in-place", is_flag=True,
              help="Called by the job's own wrapper (inside the running job) after its "
                   "launcher failed: take the failed nodes out of the allocation (DOWN, "
                   "DRAIN) and exit 0 so the wrapper relaunches on the nodes left, in the same "
                   "job; exit 5 if it needs a requeue instead (its batch host failed).")
@click.option("--restart-count", type=count(0), default=None,
              help="The caller's SLURM_RESTART_COUNT (the job's supervisor passes it, in "
                   "place or handing off). If Slurm requeued the job since, the caller is a "
                   "copy left behind: exit 6, change nothing.")
@click.option("--regain", "regain_nodes", type=count(1), default=None, metavar="N",
              help="Asked by the job's supervisor (slurmft run --total-steps) when a job "
                   "that shrank sees its nodes return and the rest of the run at full size "
                   "saves more than a requeue costs: probe the nodes it excluded, requeue it "
                   "at up to N nodes with the healthy ones back (the others stay excluded). "
                   "Spends no retry.")
@click.pass_context
def reschedule_cmd(ctx: click.Context, job_id: str, dry_run: bool, as_json: bool,
                   max_retry: int | None, min_nodes: int | None, no_drain: bool, settle: float,
                   nodes_hint: str | None, train_cmd: str | None, checkpoint_dir: str | None,
                   state_dir: str | None, wait: float, restart_failed: bool,
                   in_place: bool, restart_count: int | None,
                   regain_nodes: int | None) -> None:
    """Recover JOB_ID from failed nodes: probe, decide, act, report.

    \b
    RUNNING with failed nodes: (SIGKILL to the job's processes when a node is
      cut off: no save-on-signal can finish), requeuehold, set the nodes DOWN
      then DRAIN, ExcNodeList (merged) + NumNodes=k-k, release, StartTime=now.
      k counts the healthy nodes it holds, plus nodes it lost before that are
      idle and probe healthy again (up to its first size): a job that shrank
      for an earlier loss takes them back with this requeue.
    PENDING: update ExcNodeList/NumNodes, release, StartTime=now.
    Ended and not requeueable: submit a restart job that resumes from the checkpoint.
    FAILED on healthy nodes, with --restart-failed: requeue in place.
    RUNNING job of slurmft's wrapper (--comment slurmft:relaunch, --no-kill):
      unreachable nodes DOWN (Slurm drops them from the job) then DRAIN, and
      the batch script gets SIGUSR2: it relaunches the training on the nodes
      left, in the same allocation. Nodes only DEGRADED (slurmd dead, a check
      failing) still run their ranks: drained, the job left running.
    With --regain N (a RUNNING job that shrank): requeuehold, ExcNodeList
      without the excluded nodes that probe healthy again, NumNodes=n-n,
      release, StartTime=now.
    Nothing failed: change nothing (exit 0).

    \b
    Exit codes: 0 done or nothing to do; 1 Slurm failed; 2 usage; 3 policy refused
    (retry budget spent: job held; or too few nodes); 4 not your job; 5 (--in-place)
    not relaunched in place: the job needs a requeue; 6 (--restart-count) the
    caller is a copy of the job Slurm has requeued since: it must stop.
    """
    from slurmft.core import nodeset
    from slurmft.recovery.policy import Outcome
    from slurmft.slurm.commands import check_job_id

    jid = check_job_id(job_id)
    if regain_nodes and (in_place or restart_failed):
        raise UsageError("--regain asks for a running job's size back: it does not go with "
                         "--in-place or --restart-failed")
    cfg = get_config(ctx, reschedule={"max_retry": max_retry, "min_nodes": min_nodes,
                                      "drain": False if no_drain else None,
                                      "state_dir": state_dir})
    hint = nodeset.expand(nodes_hint) if nodes_hint else []
    resched = adapters.recovery(cfg, dry_run=dry_run, start_wait=wait).rescheduler
    try:
        report = resched.reschedule(jid, settle=settle, train_cmd=train_cmd,
                                    checkpoint_dir=checkpoint_dir, nodes_hint=hint,
                                    restart_failed=restart_failed, in_place=in_place,
                                    caller_restarts=restart_count,
                                    regain_nodes=regain_nodes)
    except PolicyError as exc:
        _echo_refusal(exc, jid, as_json)
        raise
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.text())
    if report.decision.outcome is Outcome.HAND_OFF:
        ctx.exit(ExitCode.NEEDS_REQUEUE)
    if report.decision.outcome is Outcome.STALE:
        ctx.exit(ExitCode.STALE_COPY)


@click.command("epilog")
@click.option("--settle", type=FiniteFloat(min=0), default=30.0, show_default=True,
              help="Passed to the detached reschedule.")
@click.pass_context
def epilog_cmd(ctx: click.Context, settle: float) -> None:
    """Slurm Epilog/EpilogSlurmctld hook: start a detached `slurmft reschedule` for
    SLURM_JOB_ID and return at once. Always exits 0, never prints a traceback."""
    from slurmft.recovery.epilog import run_epilog

    log_file = None
    try:
        cfg = get_config(ctx)
        log_file = f"{cfg.reschedule.state_dir}/epilog.log"
    except Exception:  # noqa: BLE001 - a failing epilog drains the node: never fail
        pass
    res = run_epilog(log_file=log_file, settle=settle)
    click.echo(f"slurmft epilog: {res.message}", err=True)
    ctx.exit(ExitCode.OK)


def _cycle_printer(as_json: bool, once: bool) -> Any:
    """The watcher's per-cycle callback: one JSON line, or each decision and error."""

    def report(res: Any) -> None:
        if as_json:
            click.echo(json.dumps(res.to_dict(), default=str))
        else:
            for r in res.reports:
                click.echo(r.decision.message)
            for jid, err in res.errors.items():
                click.echo(f"job {jid}: {err}", err=True)
            if res.list_error and not once:
                click.echo(f"cannot list jobs: {res.list_error}", err=True)
        sys.stdout.flush()

    return report


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (the watcher ends its loop cleanly, exit 0)."""
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    return stop


@click.command("watch")
@click.option("--job", "job_ids", multiple=True, type=job_id_type(),
              help="Watch this job (repeatable); default: all running jobs.")
@click.option("--interval", type=FiniteFloat(min=0.05), default=2.0, show_default=True,
              help="Seconds between probe cycles.")
@click.option("--ping-every", type=FiniteFloat(min=0), default=0.25, show_default=True,
              help="Between cycles, ping the nodes found healthy this often (ICMP only, at "
                   "most 2,000 echo requests a second): a node that misses its echo starts "
                   "the next cycle at once, and that miss counts as its first failed probe. "
                   "0: wait for the next cycle.")
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.option("--max-cycles", type=count(1), default=None,
              help="Stop after this many cycles.")
@click.option("--cooldown", type=FiniteFloat(min=0), default=30.0, show_default=True,
              help="Seconds to leave a job alone after a refused or failed reschedule.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per cycle on stdout.")
@click.option("--wait", type=FiniteFloat(min=0), default=3.0, show_default=True,
              help="Ignored (kept so existing command lines work): a cycle no longer waits for a "
                   "requeued job; the next cycles nudge it with StartTime=now until it runs.")
@click.option("--confirm", type=count(1, 1000), default=2, show_default=True,
              help="Consecutive failed probes before a node counts as failed; suspects are "
                   "re-probed at once, so this costs probe timeouts, not intervals.")
@click.option("--max-failed-fraction", type=FiniteFloat(min=0, min_open=True, max=1),
              default=0.5, show_default=True,
              help="Do nothing when more than this fraction of a job's nodes fail at once "
                   "(more likely the prober's network or load than the nodes).")
@click.option("--shard", default=None, metavar="I/N",
              help="Own only share I of N (I from 0) of the jobs, by a stable hash of each "
                   "job's original id (a restart job stays with its chain's watcher). Run one "
                   "watcher per share, all with the same state directory.")
@click.option("--partition", "partitions", multiple=True, metavar="NAME",
              help="Own only jobs running in this partition (repeatable). With --shard: the "
                   "jobs of these partitions in that share.")
@click.pass_context
def watch_cmd(ctx: click.Context, job_ids: tuple[int, ...], interval: float,
              ping_every: float, once: bool,
              max_cycles: int | None, cooldown: float, as_json: bool, wait: float,
              confirm: int, max_failed_fraction: float, shard: str | None,
              partitions: tuple[str, ...]) -> None:
    """Probe running jobs' nodes every interval and reschedule a job when one fails.

    A node must fail --confirm probes in a row before anything happens, and a cycle
    that sees most of a job's nodes fail at once does nothing (see
    --max-failed-fraction): a loaded prober must not drain healthy nodes.

    \b
    Jobs of slurmft's wrapper (--no-kill, --comment slurmft:relaunch) keep running:
    the failed node is set DOWN and drained and the batch script gets SIGUSR2 to
    relaunch the training on the nodes left. Other jobs, or a lost batch host:
    requeued without the node. Set SLURMFT_PROBE_CHECK_SLURMD=1 (probe.check_slurmd)
    to also catch a dead slurmd: its node is drained and, in a relaunchable job,
    left running its ranks.

    \b
    A site too large for one watcher runs several, each owning a share of the
    jobs (--shard 0/2, --shard 1/2) and/or partitions (--partition NAME), all
    with one shared reschedule.state_dir. Watchers that overlap never act twice
    on a job: each action runs under the job's lock there and starts from a
    fresh read of the job.

    Stops on SIGINT/SIGTERM (exit 0). With --once: exit 1 when the jobs could not
    be listed (squeue failed)."""
    from slurmft.recovery.shard import Ownership
    from slurmft.recovery.suspicion import ConfirmPolicy
    from slurmft.recovery.watcher import Watcher

    owner = Ownership.of(shard, partitions)
    parts = adapters.recovery(get_config(ctx), start_wait=wait)
    watcher = Watcher(parts.client, parts.prober, parts.rescheduler, job_ids=job_ids,
                      interval=interval, cooldown=cooldown, stop=_stop_on_signals(),
                      on_cycle=_cycle_printer(as_json, once),
                      confirm=ConfirmPolicy(confirm=confirm,
                                            max_failed_fraction=max_failed_fraction),
                      owner=owner, pinger=parts.prober.silent,
                      ping_every=ping_every)
    watcher.run(once=once, max_cycles=max_cycles)
    if once and watcher.last is not None and watcher.last.list_error:
        raise SlurmFTError(f"cannot list jobs: {watcher.last.list_error}")
