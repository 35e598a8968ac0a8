"""The ``slurmft`` command: parse, build config, call the library, print. Nothing else.

This is the ONLY module that imports click. ``error_exit`` is the one place that maps an
exception to ``slurmft: <message>`` (one line on stderr) and an exit code; no traceback
reaches the user. With ``--json`` the JSON document (if any) goes to stdout and errors stay
on stderr, for every command.

Exit codes (slurmft.core.errors.ExitCode): 0 ok; 1 operation failed (Slurm, a file that cannot be
read or written, a corrupt checkpoint); 2 usage or config error; 3 policy refused (retry
budget); 4 not your job; 5/6 reschedule --in-place: needs a requeue / stale copy; 10 probe
found unhealthy hosts; 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from typing import Any

import click

from slurmft import __version__
from slurmft.core.config import Config, load_config
from slurmft.core.errors import ExitCode, SlurmFTError
from slurmft.core.log import get_logger, setup_logging

EXIT_UNHEALTHY = ExitCode.UNHEALTHY
JSON_ERRORS_NOTE = "Errors stay on stderr as one 'slurmft:' line."

log = get_logger(__name__)


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def get_config(ctx: click.Context, **overrides: dict) -> Config:
    """The layered config for this invocation (CLI flags passed as ``overrides``)."""
    obj = ctx.find_root().obj or {}
    return load_config(obj.get("config_path"), overrides=overrides or None)


# --------------------------------------------------------------------------- errors -> exit


def error_exit(exc: BaseException) -> tuple[str | None, ExitCode]:
    """The one line to print (None: nothing) and the exit code for ``exc``."""
    import yaml

    if isinstance(exc, click.exceptions.Exit):
        return None, ExitCode(exc.exit_code) if exc.exit_code in ExitCode._value2member_map_ \
            else ExitCode.FAILED
    if isinstance(exc, SlurmFTError):
        return str(exc), ExitCode(exc.exit_code)
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return exc.format_message() + hint, ExitCode.USAGE
    if isinstance(exc, click.ClickException):
        return exc.format_message(), ExitCode.FAILED
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return "interrupted", ExitCode.INTERRUPTED
    if isinstance(exc, UnicodeDecodeError):
        return (f"cannot read input as UTF-8 text (byte {exc.start}): {exc.reason}",
                ExitCode.USAGE)
    if isinstance(exc, yaml.YAMLError):
        return f"invalid YAML: {str(exc).splitlines()[0]}", ExitCode.USAGE
    if isinstance(exc, OutputClosedError):
        return "output closed early (broken pipe)", ExitCode.FAILED
    if isinstance(exc, OSError):
        if exc.errno == errno.EPIPE:
            return "output closed early (broken pipe)", ExitCode.FAILED
        where = exc.filename if exc.filename is not None else "output"
        what = exc.strerror or str(exc)
        return f"cannot use {where}: {what}", ExitCode.FAILED
    if isinstance(exc, (OverflowError, ValueError)):
        return f"invalid value: {exc}", ExitCode.USAGE
    if isinstance(exc, RecursionError):
        return "input nested too deeply", ExitCode.USAGE
    return (f"internal error ({type(exc).__name__}: {exc}); please report it with the output "
            "of the same command run with -vv", ExitCode.FAILED)


def _finish(code: int) -> None:
    """Flush stdout (a full disk or closed pipe shows here) and exit with ``code``."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        message, code = error_exit(exc)
        _say(message)
        _silence_stdout()
    sys.exit(int(code))


def _say(message: str | None) -> None:
    if message:
        line = " ".join(str(message).split("\n")).strip()
        try:
            click.echo(f"slurmft: {line}", err=True)
        except OSError:
            pass


def _silence_stdout() -> None:
    """After EPIPE/ENOSPC on stdout, let the interpreter's final flush find nothing to write."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


class OutputClosedError(Exception):
    """stdout's reader went away (EPIPE); raised instead of the OSError so that click does
    not end the process silently itself."""


class SlurmFTGroup(click.Group):
    """Runs the command with click's own error printing off and maps every exception
    through ``error_exit``: one ``slurmft:`` line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise OutputClosedError() from exc
            raise

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
            message, code = error_exit(exc)
            if code is ExitCode.FAILED and message and message.startswith("internal error"):
                log.debug("internal error", exc_info=exc)
            if isinstance(exc, OutputClosedError) or (
                    isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ENOSPC)):
                _silence_stdout()
            _say(message)
            _finish(code)
        _finish(rv if isinstance(rv, int) and not isinstance(rv, bool) else ExitCode.OK)


class FiniteFloat(click.ParamType):
    """A finite number within [min, max] (no inf, nan or 1e400), e.g. seconds."""

    name = "float"

    def __init__(self, min: float | None = None, max: float = 1e9,  # noqa: A002
                 min_open: bool = False) -> None:
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = (self.min is None or (number > self.min if self.min_open
                                       else number >= self.min))
        if not low_ok or number > self.max:
            low = "any" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            self.fail(f"{value!r} is out of range ({low}, <= {self.max:g})", param, ctx)
        return number


def count(min: int = 0, max: int = 2**31 - 1) -> click.IntRange:  # noqa: A002
    """An integer option with a lower bound and an upper one that fits every C int."""
    return click.IntRange(min, max)


@click.group(cls=SlurmFTGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slurmft")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="SLURMFT_CONFIG", help="YAML config file (sections: slurm, probe, "
              "reschedule, log). Env: SLURMFT_CONFIG.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log line format on stderr (default: SLURMFT_LOG_FORMAT or text).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, log_format: str | None) -> None:
    """slurmft keeps long distributed training jobs alive on Slurm/MPI clusters.

    \b
    It detects failed nodes (ping + SSH + a health command), excludes and drains
    them, and restarts the job from its latest verified checkpoint.

    \b
    Quick start:
      slurmft cluster up --nodes 4        # a real local Slurm cluster (root)
      slurmft probe 'node[1-4]'           # who is healthy?
      slurmft reschedule 42 --dry-run     # what would recovery do?
      slurmft demo                        # the end-to-end recovery demo
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    try:
        log_cfg = load_config(config_path).log
    except SlurmFTError:
        if ctx.invoked_subcommand != "epilog":   # the epilog never fails: Slurm would drain
            raise
        from slurmft.core.config import LogConfig

        log_cfg = LogConfig()
    # -v / -vv win over the configured level (log.level, default WARNING).
    level = {0: log_cfg.level, 1: "INFO"}.get(verbose, "DEBUG")
    setup_logging(level=level, fmt=log_format or log_cfg.format, logfile=log_cfg.file or None)


def main() -> None:
    cli(prog_name="slurmft")


# ---------------------------------------------------------------------------------------------
# Each area registers its commands below, in its own section.
# ---------------------------------------------------------------------------------------------

# === cluster (issue 2) ===
_CLUSTER_NAME_OPT = click.option("--name", default="sft", envvar="SLURMFT_CLUSTER_NAME",
                                 show_default=True, help="Cluster name (env SLURMFT_CLUSTER_NAME).")
# --backend (issue 8): netns (default) or docker; stored in ctx.meta, read by _cluster().
_CLUSTER_BACKEND = click.option(
    "--backend", type=click.Choice(["netns", "docker"]), default="netns", show_default=True,
    envvar="SLURMFT_CLUSTER_BACKEND", expose_value=False, is_eager=True,
    callback=lambda ctx, _p, v: ctx.meta.__setitem__("slurmft.testbed.backend", v),
    help="netns: network namespaces; docker: containers (docker/; env SLURMFT_CLUSTER_BACKEND).")


def _CLUSTER_NAME(f: Any) -> Any:  # noqa: N802 - used as a decorator like the options
    return _CLUSTER_BACKEND(_CLUSTER_NAME_OPT(f))


def _cluster(name: str) -> Any:
    """The cluster object of the chosen --backend."""
    if click.get_current_context().meta.get("slurmft.testbed.backend") == "docker":
        from slurmft.testbed.docker import DockerCluster
        return DockerCluster(name)
    from slurmft.testbed import Cluster
    return Cluster(name)


@cli.group("cluster")
def cluster_group() -> None:
    """A real local Slurm/SSH/MPI cluster in network namespaces (root)."""


@cluster_group.command("up")
@click.option("--nodes", "-n", type=int, default=4, show_default=True)
@_CLUSTER_NAME
@click.option("--no-slurm", is_flag=True, help="Probe-only hosts: sshd per node, no Slurm.")
@click.option("--epilog", default="", help="Absolute path for EpilogSlurmctld= in slurm.conf.")
@click.option("--subnet", default=None, help="IPv4 /24 (default: a free one in 10.99.0.0/16).")
@click.option("--json", "as_json", is_flag=True)
def cluster_up(nodes: int, name: str, no_slurm: bool, epilog: str, subnet: str | None,
               as_json: bool) -> None:
    """Build the cluster (idempotent: says so if it is already up)."""
    c = _cluster(name)
    res = c.up(nodes, slurm=not no_slurm, epilog=epilog, subnet=subnet)
    if as_json:
        echo_json(res.to_dict())
        return
    if res.already_up:
        click.echo(f"cluster {name} already up: {len(res.nodes)} nodes on {res.subnet}")
        return
    daemons: dict[str, list[str]] = {}
    for key, pid in res.started.items():
        host, daemon = key.split(":")
        daemons.setdefault(daemon, []).append(f"{host}={pid}")
    click.echo(f"cluster {name} up in {res.seconds:.2f}s: {len(res.nodes)} nodes on {res.subnet}")
    for daemon, items in daemons.items():
        click.echo(f"  {daemon}: {' '.join(items)}")
    click.echo(f"  ssh config: {c.ssh_config_path}\n  shared dir: {c.shared_dir}")
    click.echo(f"  try: slurmft cluster exec --name {name} -- sinfo")


@cluster_group.command("down")
@_CLUSTER_NAME
def cluster_down(name: str) -> None:
    """Stop what the cluster started; remove its namespaces, route and state."""
    done = _cluster(name).down()
    click.echo(f"cluster {name} down: removed {', '.join(done)}" if done
               else f"cluster {name} is not up: nothing to do")


@cluster_group.command("status")
@_CLUSTER_NAME
@click.option("--json", "as_json", is_flag=True)
def cluster_status(name: str, as_json: bool) -> None:
    """Nodes, addresses, daemon pids (alive or not) and Slurm's view of each node."""
    st = _cluster(name).status()
    if as_json:
        echo_json(st)
        return
    if "subnet" not in st:
        click.echo(f"cluster {name} is not up")
        return
    click.echo(f"cluster {name}: {'up' if st['up'] else 'BROKEN (run down)'} on {st['subnet']}, "
               f"state {st['state_dir']}")
    ctl = st["controller"]
    fmt = lambda ds: " ".join(f"{d}={v['pid']}({v['state']})" for d, v in ds.items())  # noqa: E731
    click.echo(f"  {ctl['name']:<8} {ctl['address']:<15} {fmt(ctl['daemons'])}")
    for n in st["nodes"]:
        click.echo(f"  {n['name']:<8} {n['address']:<15} link={n['link'] or '?'} "
                   f"slurm={n['slurm_state'] or '-'} {fmt(n['daemons'])}")


@cluster_group.command("exec", context_settings={"ignore_unknown_options": True,
                                                 "allow_interspersed_args": False})
@_CLUSTER_NAME
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def cluster_exec(name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the controller namespace (node names resolve; SLURM_CONF set)."""
    _cluster(name).execvpe(list(command))


@cluster_group.command("fault")
@click.argument("node")
@click.argument("action")
@_CLUSTER_NAME
def cluster_fault(node: str, action: str, name: str) -> None:
    """Break NODE: kill-slurmd restart-slurmd link-down link-up stop-sshd start-sshd
    freeze-sshd thaw-sshd kill-job-procs."""
    click.echo(_cluster(name).fault(node, action))


# === slurm + probe (issue 3) ===


@cli.command("probe")
@click.argument("hostlist", required=False)
@click.option("--job", "job_id", type=count(1, 2**32 - 2), default=None,
              help="Probe the nodes of this Slurm job (asks squeue/scontrol).")
@click.option("--timeout", type=FiniteFloat(), default=None,
              help="Per-host deadline in seconds for ping + SSH + command (probe.timeout).")
@click.option("--command", "command", default=None,
              help="Health command run over SSH (probe.command, default: true).")
@click.option("--ssh-config", default=None, type=click.Path(dir_okay=False),
              help="OpenSSH client config for HostName/Port/User/IdentityFile/"
                   "UserKnownHostsFile (probe.ssh_config).")
@click.option("--accept-unknown-hosts", is_flag=True, default=None,
              help="Trust host keys missing from known_hosts (default: reject them).")
@click.option("--check-slurmd/--no-check-slurmd", default=None,
              help="Also connect to each node's slurmd port; DEGRADED if it does not answer "
                   "(probe.check_slurmd).")
@click.option("--slurmd-port", type=count(1, 65535), default=None,
              help="slurmd's port, SlurmdPort in slurm.conf (probe.slurmd_port, default 6818).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def probe_cmd(ctx: click.Context, hostlist: str | None, job_id: int | None,
              timeout: float | None, command: str | None, ssh_config: str | None,
              accept_unknown_hosts: bool | None, check_slurmd: bool | None,
              slurmd_port: int | None, as_json: bool) -> None:
    """Check node health: ping, then SSH and a health command, all hosts in parallel.

    \b
    HOSTLIST is a Slurm hostlist such as 'node[1-4],gpu07'.
    States: HEALTHY; UNREACHABLE (no ping reply); UNRESPONSIVE (ping answers
    but SSH refuses, times out or the command hangs); DEGRADED (the command
    or a built-in check reported a problem).

    \b
    Exit codes: 0 all hosts healthy; 10 at least one host is not healthy;
    1 Slurm or probe setup failed; 2 usage error (bad host name, no hosts).
    """
    from slurmft.core import nodeset as _hosts
    from slurmft.probe.fanout import FanoutProber

    if not hostlist and job_id is None:
        raise click.UsageError("give a HOSTLIST or --job JOBID")
    cfg = get_config(ctx, probe={"timeout": timeout, "command": command,
                                 "ssh_config": ssh_config,
                                 "accept_unknown_hosts": accept_unknown_hosts,
                                 "check_slurmd": check_slurmd, "slurmd_port": slurmd_port})
    names = _hosts.expand(hostlist) if hostlist else []
    if job_id is not None:
        from slurmft.slurm.client import CommandSlurmClient

        client = CommandSlurmClient(timeout=cfg.slurm.timeout, bin_dir=cfg.slurm.bin_dir)
        job = client.job(job_id)
        if not job.nodes:
            raise SlurmFTError(
                f"job {job_id} holds no nodes (state {job.state}): nothing to probe; "
                "probe a pending job once it runs, or name the hosts")
        names = list(dict.fromkeys([*names, *job.nodes]))
    if not names:
        raise click.UsageError("the hostlist is empty")
    results = FanoutProber(cfg.probe).probe(names)
    if as_json:
        echo_json({"hosts": [r.to_dict() for r in results.values()],
                   "healthy": all(not r.health.is_failed for r in results.values())})
    else:
        from rich.console import Console
        from rich.table import Table

        colors = {"HEALTHY": "green", "UNREACHABLE": "red", "UNRESPONSIVE": "red",
                  "DEGRADED": "yellow"}
        table = Table("host", "state", "reason", "latency", box=None, header_style="bold")
        for r in results.values():
            st = r.health.value
            table.add_row(r.host, f"[{colors[st]}]{st}[/]", r.reason, f"{r.latency_s:.3f}s")
        Console(highlight=False).print(table)
    if any(r.health.is_failed for r in results.values()):
        ctx.exit(EXIT_UNHEALTHY)


# === reschedule / render / epilog / watch (issue 4) ===


def _reschedule_parts(cfg: Config, *, dry_run: bool = False,
                      start_wait: float = 0.0) -> tuple[Any, Any, Any]:
    """Build the concrete client, prober and rescheduler (only the CLI builds adapters)."""
    from slurmft.probe.fanout import FanoutProber
    from slurmft.recovery.rescheduler import Rescheduler
    from slurmft.recovery.state import StateStore
    from slurmft.slurm.client import CommandSlurmClient

    client = CommandSlurmClient(timeout=cfg.slurm.timeout, bin_dir=cfg.slurm.bin_dir)
    prober = FanoutProber(cfg.probe)
    store = StateStore(cfg.reschedule.state_dir, cfg.reschedule.lock_timeout)
    return client, prober, Rescheduler(client, prober, store, cfg.reschedule, dry_run=dry_run,
                                       start_wait=start_wait)


@cli.command("reschedule")
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
              help="With --in-place: the caller's SLURM_RESTART_COUNT. If Slurm requeued the "
                   "job since, the caller is a copy left behind: exit 6, change nothing.")
@click.pass_context
def reschedule_cmd(ctx: click.Context, job_id: str, dry_run: bool, as_json: bool,
                   max_retry: int | None, min_nodes: int | None, no_drain: bool, settle: float,
                   nodes_hint: str | None, train_cmd: str | None, checkpoint_dir: str | None,
                   state_dir: str | None, wait: float, restart_failed: bool,
                   in_place: bool, restart_count: int | None) -> None:
    """Recover JOB_ID from failed nodes: probe, decide, act, report.

    \b
    RUNNING with failed nodes: (SIGKILL to the job's processes when a node is
      cut off: no save-on-signal can finish), requeuehold, set the nodes DOWN
      then DRAIN, ExcNodeList (merged) + NumNodes=k-k, release, StartTime=now.
    PENDING: update ExcNodeList/NumNodes, release, StartTime=now.
    Ended and not requeueable: submit a restart job that resumes from the checkpoint.
    FAILED on healthy nodes, with --restart-failed: requeue in place.
    RUNNING job of slurmft's wrapper (--comment slurmft:relaunch, --no-kill):
      unreachable nodes DOWN (Slurm drops them from the job) then DRAIN, and
      the batch script gets SIGUSR2: it relaunches the training on the nodes
      left, in the same allocation. Nodes only DEGRADED (slurmd dead, a check
      failing) still run their ranks: drained, the job left running.
    Nothing failed: change nothing (exit 0).

    \b
    Exit codes: 0 done or nothing to do; 1 Slurm failed; 2 usage; 3 policy refused
    (retry budget spent: job held; or too few nodes); 4 not your job; 5 (--in-place)
    not relaunched in place: the job needs a requeue; 6 (--in-place) the caller
    is a copy of the job Slurm has requeued since: it must stop.
    """
    from slurmft.core import nodeset as _hosts
    from slurmft.core.errors import PolicyError
    from slurmft.slurm.commands import check_job_id

    jid = check_job_id(job_id)
    cfg = get_config(ctx, reschedule={"max_retry": max_retry, "min_nodes": min_nodes,
                                      "drain": False if no_drain else None,
                                      "state_dir": state_dir})
    hint = _hosts.expand(nodes_hint) if nodes_hint else []
    _, _, resched = _reschedule_parts(cfg, dry_run=dry_run, start_wait=wait)
    try:
        report = resched.reschedule(jid, settle=settle, train_cmd=train_cmd,
                                    checkpoint_dir=checkpoint_dir, nodes_hint=hint,
                                    restart_failed=restart_failed, in_place=in_place,
                                    caller_restarts=restart_count)
    except PolicyError as exc:
        # What was done before the refusal (a hold, drained nodes) is part of the answer.
        report = getattr(exc, "report", None)
        if as_json:
            doc = report.to_dict() if report else {"job_id": jid}
            echo_json({**doc, "error": str(exc), "exit_code": int(exc.exit_code)})
        elif report is not None:
            click.echo(report.text())
        raise
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.text())
    from slurmft.recovery.policy import Outcome

    if report.decision.outcome is Outcome.HAND_OFF:
        ctx.exit(ExitCode.NEEDS_REQUEUE)
    if report.decision.outcome is Outcome.STALE:
        ctx.exit(ExitCode.STALE_COPY)


def _render_options(f: Any) -> Any:
    opts = [
        click.option("--job", "job_id", default=None, help="Take nodes, name, partition and "
                     "work dir from this Slurm job."),
        click.option("--nodes", "nodelist", default=None,
                     help="Hostlist, e.g. 'node[1-3]' (render job: a node count works too)."),
        click.option("--exclude", default=None, help="Hostlist to exclude (restart)."),
        click.option("--slots", type=count(1), default=None,
                     help="MPI ranks per node (reschedule.slots)."),
        click.option("--train-cmd", default=None, help="Training command (shell words)."),
        click.option("--checkpoint-dir", default=None, help="Checkpoint directory."),
        click.option("--job-name", default=None, help="Job name (job/restart)."),
        click.option("--launcher", type=click.Choice(["mpirun", "srun"]), default=None,
                     help="Launcher (reschedule.launcher)."),
        click.option("--launch-from", type=click.Choice(["peer", "batch"]), default=None,
                     help="Where the job wrapper runs its launcher (reschedule.launch_from; "
                          "default peer): on another node of the job over ssh, so losing the "
                          "batch host costs seconds less, or on the batch host itself."),
        click.option("--output", "-o", "out", type=click.Path(dir_okay=False), default=None,
                     help="Write to this file instead of stdout."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _check_train_cmd(which: str, train: str) -> None:
    import shlex

    from slurmft.core.errors import UsageError

    try:
        words = shlex.split(train)
    except ValueError as exc:
        raise UsageError(f"render {which}: --train-cmd is not valid shell words ({exc}): "
                         f"{train!r}") from None
    if not words:
        raise UsageError(f"render {which}: give --train-cmd (or set reschedule.train_cmd)")


def _render_cmd(ctx: click.Context, which: str, job_id: str | None, nodelist: str | None,
                exclude: str | None, slots: int | None, train_cmd: str | None,
                checkpoint_dir: str | None, job_name: str | None, launcher: str | None,
                launch_from: str | None, out: str | None) -> None:
    from slurmft.core import nodeset as _hosts
    from slurmft.core.errors import UsageError
    from slurmft.recovery.rescheduler import job_context, restart_context
    from slurmft.render import render
    from slurmft.slurm.records import JobInfo

    cfg = get_config(ctx, reschedule={"slots": slots, "launcher": launcher,
                                      "launch_from": launch_from})
    rcfg = cfg.reschedule
    train = train_cmd or rcfg.train_cmd
    ckpt = checkpoint_dir or rcfg.checkpoint_dir
    if which in ("job", "restart"):       # usage errors first, before Slurm is asked
        _check_train_cmd(which, train)
        if not ckpt:
            raise UsageError(f"render {which}: give --checkpoint-dir "
                             "(or set reschedule.checkpoint_dir)")
    job = None
    if job_id is not None:
        from slurmft.slurm.client import CommandSlurmClient
        from slurmft.slurm.commands import check_job_id

        job = CommandSlurmClient(timeout=cfg.slurm.timeout,
                                 bin_dir=cfg.slurm.bin_dir).job(check_job_id(job_id))
    node_count = None
    if which == "job" and nodelist and nodelist.isdigit():   # the wrapper needs a count only
        node_count, nodelist = int(nodelist), None
        if node_count < 1:
            raise UsageError("render job: --nodes must be at least 1")
    names = _hosts.expand(nodelist) if nodelist else list(job.nodes if job else [])
    excluded = _hosts.expand(exclude) if exclude else list(job.excluded_nodes if job else [])
    names = [n for n in names if n not in excluded]
    if which in ("hostfile", "restart") and not names:
        raise UsageError(f"render {which}: give --nodes HOSTLIST or --job JOBID with nodes")
    if which == "hostfile":
        text = render("hostfile.j2", {"nodes": names, "slots": rcfg.slots})
    elif which == "restart":
        base = job or JobInfo(job_id=1, name=job_name or "train", state="FAILED")
        if job_name:
            from dataclasses import replace

            base = replace(base, name=job_name)
        text = render("restart.sh.j2", restart_context(
            base, names, excluded, train, ckpt, rcfg,
            reschedule_log=f"{rcfg.state_dir}/reschedule.log"))
    else:
        n_nodes = node_count or len(names) or (job.node_count if job else 1)
        text = render("job.sh.j2", job_context(
            rcfg, train_cmd=train, checkpoint_dir=ckpt,
            job_name=job_name or (job.name if job else "train"), nodes=n_nodes,
            partition=job.partition if job else ""))
    if out:
        from slurmft.core.atomic import atomic_write

        atomic_write(out, text, mode=None if which == "hostfile" else 0o755)
        click.echo(out)
    else:
        click.echo(text, nl=False)


@cli.group("render")
def render_group() -> None:
    """Print slurmft's rendered files: hostfile, restart script, job wrapper."""


@render_group.command("hostfile")
@_render_options
@click.pass_context
def render_hostfile(ctx: click.Context, **kw: Any) -> None:
    """mpirun hostfile: one 'host slots=N' line per node (--exclude removed)."""
    _render_cmd(ctx, "hostfile", **kw)


@render_group.command("restart")
@_render_options
@click.pass_context
def render_restart(ctx: click.Context, **kw: Any) -> None:
    """Batch script that restarts a job on the given nodes and resumes from its checkpoint."""
    _render_cmd(ctx, "restart", **kw)


@render_group.command("job")
@_render_options
@click.pass_context
def render_job(ctx: click.Context, **kw: Any) -> None:
    """The job wrapper to submit training with: requeueable, resumes, calls reschedule on failure."""
    _render_cmd(ctx, "job", **kw)


@cli.command("epilog")
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


@cli.command("watch")
@click.option("--job", "job_ids", multiple=True, type=count(1, 2**32 - 2),
              help="Watch this job (repeatable); default: all running jobs.")
@click.option("--interval", type=FiniteFloat(min=0.05), default=2.0, show_default=True,
              help="Seconds between probe cycles.")
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.option("--max-cycles", type=count(1), default=None,
              help="Stop after this many cycles.")
@click.option("--cooldown", type=FiniteFloat(min=0), default=30.0, show_default=True,
              help="Seconds to leave a job alone after a refused or failed reschedule.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per cycle on stdout.")
@click.option("--wait", type=FiniteFloat(min=0), default=3.0, show_default=True,
              help="After a requeue, wait up to this many seconds for the job to run again "
                   "(later cycles keep nudging it with StartTime=now if Slurm delays it).")
@click.option("--confirm", type=count(1, 1000), default=2, show_default=True,
              help="Consecutive failed probes before a node counts as failed; suspects are "
                   "re-probed at once, so this costs probe timeouts, not intervals.")
@click.option("--max-failed-fraction", type=FiniteFloat(min=0, min_open=True, max=1),
              default=0.5, show_default=True,
              help="Do nothing when more than this fraction of a job's nodes fail at once "
                   "(more likely the prober's network or load than the nodes).")
@click.pass_context
def watch_cmd(ctx: click.Context, job_ids: tuple[int, ...], interval: float, once: bool,
              max_cycles: int | None, cooldown: float, as_json: bool, wait: float,
              confirm: int, max_failed_fraction: float) -> None:
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

    Stops on SIGINT/SIGTERM (exit 0). With --once: exit 1 when the jobs could not
    be listed (squeue failed)."""
    from slurmft.recovery.suspicion import ConfirmPolicy
    import signal
    import threading

    from slurmft.recovery.watcher import Watcher

    cfg = get_config(ctx)
    client, prober, resched = _reschedule_parts(cfg, start_wait=wait)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)

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

    watcher = Watcher(client, prober, resched, job_ids=job_ids, interval=interval,
                      cooldown=cooldown, stop=stop, on_cycle=report,
                      confirm=ConfirmPolicy(confirm=confirm,
                                            max_failed_fraction=max_failed_fraction))
    watcher.run(once=once, max_cycles=max_cycles)
    if once and watcher.last is not None and watcher.last.list_error:
        raise SlurmFTError(f"cannot list jobs: {watcher.last.list_error}")


# === checkpoint (issue 5) ===


def _ckpt_store(path: str):
    from pathlib import Path

    from slurmft.checkpoint.store import Store
    from slurmft.core.errors import UsageError

    if not Path(path).is_dir():
        raise UsageError(f"{path} is not a checkpoint directory")
    return Store(path)


def _ckpt_table(rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for c in columns:
        table.add_column(c, no_wrap=c != "status")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in columns])
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


def _ckpt_row(info: Any, latest: str | None, status: str) -> dict:
    import datetime as _dt

    when = (_dt.datetime.fromtimestamp(info.time, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if info.time else "-")
    return {"name": info.name + (" *" if info.name == latest else ""), "step": info.step,
            "kind": info.kind if info.time else "?", "base": info.base or "-",
            "MB": f"{sum(f.size for f in info.files) / 1e6:.1f}", "time (UTC)": when,
            "world": info.world_size, "status": status}


@cli.group("checkpoint")
def checkpoint_grp() -> None:
    """Inspect, verify and prune a checkpoint directory (* marks latest)."""


@checkpoint_grp.command("list")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def checkpoint_list(path: str, as_json: bool) -> None:
    """List checkpoints in PATH, newest first, from their manifests (fast; see verify)."""
    store = _ckpt_store(path)
    infos, latest = store.list(), store.latest_name()
    if as_json:
        echo_json({"latest": latest, "checkpoints": [i.summary() for i in infos]})
        return
    _ckpt_table([_ckpt_row(i, latest, "manifest ok" if not i.error else i.error) for i in infos],
                ["name", "step", "kind", "base", "MB", "time (UTC)", "world", "status"])


@checkpoint_grp.command("verify")
@click.argument("path", type=click.Path())
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def checkpoint_verify(path: str, name: str | None, as_json: bool) -> None:
    """Read back every file of every checkpoint (or NAME) and check sizes and checksums.

    Exit 0 if all are valid; 1 naming the first corrupt file and why.
    """
    from slurmft.checkpoint.store import CheckpointInfo, parse_name
    from slurmft.core.errors import CorruptCheckpointError, UsageError

    from slurmft.core.errors import CheckpointError

    store = _ckpt_store(path)
    if name and parse_name(name) is None:
        raise UsageError(f"{name!r} is not a checkpoint name (step_<12 digits>)")
    known = store.names()
    if name and name not in known:
        raise CheckpointError(f"no such checkpoint {name} in {path}"
                              + (f"; it has {', '.join(known[-3:])}" if known else ""))
    names = [name] if name else known
    if not names:
        raise CheckpointError(f"no checkpoints in {path}: nothing verified (is it the "
                              "job's checkpoint directory, not its parent?)")
    latest = store.latest_name()
    rows, docs, errors = [], [], []
    for n in names:
        try:
            info = store.verify(n)
            status = "ok"
        except CorruptCheckpointError as exc:
            info = CheckpointInfo(name=n, path=str(store.root / n), step=parse_name(n) or 0,
                                  error=str(exc))
            try:
                meta = store.read_manifest(n)
                meta.error = str(exc)
                info = meta
            except CorruptCheckpointError:
                pass
            status = "CORRUPT"
            errors.append(str(exc))
        rows.append(_ckpt_row(info, latest, status))
        docs.append(info.summary())
    if as_json:
        echo_json({"latest": latest, "checkpoints": docs, "valid": not errors})
    else:
        _ckpt_table(rows, ["name", "step", "kind", "base", "MB", "time (UTC)", "world", "status"])
    if errors:
        raise CorruptCheckpointError(
            f"{len(errors)} of {len(names)} checkpoint(s) corrupt: {errors[0]}")


@checkpoint_grp.command("prune")
@click.argument("path", type=click.Path())
@click.option("--keep-last", type=count(1), required=True,
              help="Keep this many newest checkpoints (plus latest and any base a kept diff needs).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def checkpoint_prune(path: str, keep_last: int, as_json: bool) -> None:
    """Delete old checkpoints and leftovers of interrupted saves (run it while no job writes)."""
    from slurmft.core.errors import UsageError

    if keep_last < 1:
        raise UsageError(f"--keep-last must be >= 1, not {keep_last}")
    from slurmft.core.errors import CheckpointError, PruneError

    store = _ckpt_store(path)
    if not store.names():
        raise CheckpointError(f"no checkpoints in {path}: nothing pruned (is it the job's "
                              "checkpoint directory, not its parent?)")
    leftovers = store.cleanup()
    failed: dict[str, str] = {}
    try:
        deleted = store.prune(keep_last)
    except PruneError as exc:
        deleted, failed = list(exc.deleted), dict(exc.failed)
        error: PruneError | None = exc
    else:
        error = None
    if as_json:
        echo_json({"deleted": deleted, "failed": failed, "leftovers_removed": leftovers,
                   "kept": store.names()})
    else:
        click.echo(f"deleted {len(deleted)} checkpoint(s){': ' + ', '.join(deleted) if deleted else ''}; "
                   f"removed {len(leftovers)} leftover(s); kept {len(store.names())}")
        for name, why in failed.items():
            click.echo(f"not deleted: {name}: {why}")
    if error is not None:
        raise error


# === demo / inject (issue 6) ===


@cli.command("demo")
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(2, 16),
              help="Nodes in the local cluster and the training job.")
@click.option("--steps", default=300, show_default=True, type=count(20),
              help="Training steps.")
@click.option("--step-time", default=0.1, show_default=True, type=FiniteFloat(min=0, max=60),
              help="Simulated compute per step on all --nodes ranks, seconds; on k ranks a "
                   "step takes nodes/k as long (same global batch).")
@click.option("--step-interval", default=20, show_default=True, type=count(1),
              help="Checkpoint every N steps.")
@click.option("--fault-after-step", default=100, show_default=True, type=count(0),
              help="Inject the fault once a verified checkpoint at or after this step exists.")
@click.option("--fault", default="link-down", show_default=True,
              type=click.Choice(["link-down", "kill-slurmd", "kill-job-procs"]),
              help="What happens to the node.")
@click.option("--fault-node", default="", help="Node to break (default: the job's last node).")
@click.option("--name", default="sft-demo", show_default=True, help="Name of the demo cluster.")
@click.option("--out", "out_dir", default="slurmft-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the report, plot and logs go.")
@click.option("--timeout", default=600.0, show_default=True, type=FiniteFloat(min=0, min_open=True),
              help="Give up after this many seconds.")
@click.option("--keep-cluster", is_flag=True, help="Leave the cluster up afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo_cmd(nodes, steps, step_time, step_interval, fault_after_step, fault, fault_node, name,
             out_dir, timeout, keep_cluster, as_json):
    """End-to-end recovery demo on a local cluster (root).

    \b
    Builds a real Slurm cluster in network namespaces, trains slurmft/examples/train.py on
    all nodes with checkpoints, breaks one node, and shows slurmft detect it,
    exclude and drain it, and the job resume on the healthy nodes from the latest
    verified checkpoint and finish. Writes a timeline, summary, loss table and
    loss plot (PNG) to --out. Cleans up after itself, also on Ctrl-C.
    """
    from slurmft.observe.report import read_progress
    from slurmft.testbed.demo import Demo, DemoOptions, format_timeline, loss_table

    if fault_after_step >= steps - step_interval:
        raise click.BadParameter("must leave room for a checkpoint and a resume before --steps",
                                 param_hint="--fault-after-step")
    opts = DemoOptions(name=name, nodes=nodes, steps=steps, step_time=step_time,
                       step_interval=step_interval, fault_after_step=fault_after_step,
                       fault=fault, fault_node=fault_node, out_dir=out_dir, timeout=timeout,
                       keep_cluster=keep_cluster)
    t0 = time.monotonic()
    say = (lambda m: click.echo(f"[{time.monotonic() - t0:6.1f}s] {m}", err=True))
    result = Demo(opts, progress=say).run()
    if as_json:
        echo_json(result.to_dict())
        return
    s = result.summary
    records = read_progress(result.files["progress.jsonl"])
    click.echo("\nTimeline (seconds from the fault):")
    click.echo(format_timeline(records, result.events))
    click.echo(f"Failed node:        {result.fault_node} -> {result.fault_node_state} "
               f"({result.fault_node_reason})")
    click.echo(f"Nodes:              {','.join(result.initial_nodes)} -> {','.join(result.final_nodes)}")
    click.echo(f"Detection time:     {s.detection_s} s")
    if "excluded" in result.events:     # relaunched in its own allocation: never stopped
        click.echo(f"Node taken out:     {s.running_again_s} s after the fault (the job kept "
                   "running; the training relaunched on the nodes left)")
    else:
        click.echo(f"Running again:      {s.running_again_s} s after the fault")
    click.echo(f"First step resumed: {s.first_step_after_resume_s} s after the fault")
    click.echo(f"Steps lost:         {s.steps_lost} (resumed from step {s.resumed_from})")
    click.echo(f"Final step:         {s.final_step} of {s.planned_steps - 1}, job {result.final_state}")
    if s.goodput is not None:
        click.echo(f"Goodput:            {s.goodput:.1%} ({s.useful_steps} steps x "
                   f"{s.fault_free_step_s:.3f} s fault-free on {s.world_sizes[-1]} ranks = "
                   f"{s.useful_s:.1f} s useful of {s.wall_s:.1f} s)")
    click.echo("\nLoss (every 10th step; full table in loss.txt):")
    click.echo(loss_table(records, every=max(10, s.planned_steps // 20)))
    click.echo(f"Plot: {result.files['loss.png']}   All outputs: {result.out_dir}/")
    if not s.completed:
        raise SlurmFTError(f"the training did not complete (final step {s.final_step})")


@cli.command("inject")
@click.argument("action", type=click.Choice(
    ["kill-rank", "kill-slurmd", "link-down", "link-up", "stop-sshd", "start-sshd",
     "freeze-sshd", "thaw-sshd", "limit-memory", "mask-gpu"]))
@click.option("--job", "job_id", type=count(1, 2**32 - 2), required=True, help="Slurm job id.")
@click.option("--node", default="", help="Node to break (default: a random node of the job).")
@click.option("--seed", type=count(0), default=None, help="Seed for the random choices.")
@click.option("--dry-run", is_flag=True, help="Print what it would do (argv); do nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--cluster", "cluster_name", default="",
              help="The local namespace cluster NAME (faults by Cluster.fault, commands by "
                   "nsenter); without it: a real site, over SSH (probe.* settings).")
@click.option("--match", default="train.py", show_default=True,
              help="kill-rank/limit-memory: pgrep -f pattern of the training processes.")
@click.option("--iface", default="", help="link-down over SSH: the node's interface.")
@click.option("--duration", type=count(1, 86400), default=60, show_default=True,
              help="link-down over SSH: seconds until the link comes back up by itself.")
@click.option("--gpu", type=count(0, 1023), default=None, help="mask-gpu: GPU to hide.")
@click.option("--gpus", type=count(1, 1024), default=None,
              help="mask-gpu: GPUs the job sees now (default: from the job's env file).")
@click.option("--mb", type=count(1), default=None,
              help="limit-memory: memory.max in MiB.")
@click.option("--undo", is_flag=True,
              help="limit-memory: remove the job's slurmft-inject cgroups; mask-gpu: remove "
                   "the env file.")
@click.option("--checkpoint-dir", default=None,
              help="mask-gpu: the job's CHECKPOINT_PATH (default: reschedule.checkpoint_dir "
                   "or the job's retry record).")
@click.option("--state-dir", default=None,
              help="Where audit.jsonl goes (reschedule.state_dir; with --cluster: the "
                   "cluster's).")
@click.option("--timeout", type=FiniteFloat(min=0.1), default=10.0, show_default=True,
              help="Seconds for each command on the node.")
@click.pass_context
def inject_cmd(ctx: click.Context, action: str, job_id: int, node: str, seed: int | None,
               dry_run: bool, as_json: bool, cluster_name: str, match: str, iface: str,
               duration: int, gpu: int | None, gpus: int | None, mb: int | None, undo: bool,
               checkpoint_dir: str | None, state_dir: str | None, timeout: float) -> None:
    """Inject a fault into a running job, for fault-tolerance campaigns.

    \b
    kill-rank     SIGKILL one random process matching --match on a node of
                  the job (pgrep -f, only processes in the node's netns).
    kill-slurmd   --cluster: Cluster.fault; else over SSH:
                  pkill -KILL -x slurmd.
    link-down     --cluster: the node's veth down (undo: link-up). Over SSH it
                  needs --iface and undoes itself after --duration s:
                  setsid -f sh -c 'ip link set dev IF down; sleep S; ...up'.
    link-up, stop-sshd, start-sshd, freeze-sshd, thaw-sshd
                  --cluster only: over SSH they could not be undone.
    limit-memory  --mb M: move the node's matching processes into a new
                  cgroup v2 slurmft-inject-JOB-N with memory.max=M MiB
                  (--undo removes it). Fails, saying why, without a writable
                  cgroup v2 with the memory controller enabled.
    mask-gpu      --gpu I [--gpus N]: write CUDA_VISIBLE_DEVICES without I to
                  $CHECKPOINT_PATH/.slurmft-restart.env, which job.sh sources
                  at (re)start (takes effect on the job's next restart).

    \b
    Every injection is logged (logger slurmft.testbed.inject) and appended to
    audit.jsonl in the state dir (event "inject").
    """
    import shlex as _shlex

    from slurmft.recovery.state import StateStore
    from slurmft.testbed.inject import ExecNodeRunner, InjectRequest, Injector, SshNodeRunner

    cfg = get_config(ctx, reschedule={"state_dir": state_dir, "checkpoint_dir": checkpoint_dir})
    fault = slurm = runner = None
    store_dir = cfg.reschedule.state_dir
    if cluster_name:
        from slurmft.testbed import Cluster

        c = Cluster(cluster_name)
        if not dry_run and not c.is_up():
            raise SlurmFTError(f"cluster {cluster_name} is not up")
        store_dir = state_dir or str(c.layout.slurmft_state_dir)
        fault, runner = c.fault, ExecNodeRunner(c.node_exec_argv)
        if action != "mask-gpu":
            slurm = c.slurm_client(timeout=cfg.slurm.timeout)
    else:
        from slurmft.probe import ssh as _ssh
        from slurmft.slurm.client import CommandSlurmClient

        p = cfg.probe
        parsed = _ssh.load_ssh_config(p.ssh_config) if p.ssh_config else ""
        runner = SshNodeRunner(lambda host: _ssh.resolve_target(
            host, user=p.ssh_user, port=p.ssh_port, key=p.ssh_key, ssh_config=parsed,
            known_hosts=p.known_hosts, accept_unknown=p.accept_unknown_hosts))
        if action != "mask-gpu":
            slurm = CommandSlurmClient(timeout=cfg.slurm.timeout, bin_dir=cfg.slurm.bin_dir)
    store = StateStore(store_dir, cfg.reschedule.lock_timeout)
    ckpt = cfg.reschedule.checkpoint_dir
    if action == "mask-gpu" and not ckpt:
        ckpt = store.load(job_id).checkpoint_dir
    req = InjectRequest(action=action, job_id=job_id, node=node, seed=seed, dry_run=dry_run,
                        match=match, iface=iface, duration=duration, gpu=gpu, gpus=gpus, mb=mb,
                        undo=undo, checkpoint_dir=ckpt)
    res = Injector(slurm=slurm, runner=runner, fault=fault, store=store, timeout=timeout,
                   cluster_name=cluster_name).inject(req)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(f"{'dry run: ' if res.dry_run else ''}{res.detail}")
    if res.dry_run:
        for argv in res.commands:
            click.echo(f"  {_shlex.join(argv)}")
        if res.extra.get("content"):
            click.echo(res.extra["content"], nl=False)

# === observability (issue 7) ===

def _check_bind(bind: str, option: str = "--bind") -> str:
    import ipaddress

    from slurmft.core.errors import UsageError
    from slurmft.core.nodeset import validate_hostname

    try:
        return str(ipaddress.ip_address(bind))
    except ValueError:
        try:
            return validate_hostname(bind)
        except SlurmFTError:
            raise UsageError(f"{option} must name an IP address or host name, not {bind!r}") from None


@click.command("exporter")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics over HTTP on this port (0: any free port, printed).")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--checkpoint-dir", "checkpoint_dirs", multiple=True,
              type=click.Path(file_okay=False), help="Checkpoint directory to watch (repeatable).")
@click.option("--state-dir", default=None, type=click.Path(file_okay=False),
              help="slurmft state (audit log); default: reschedule.state_dir.")
@click.option("--audit-file", default=None, type=click.Path(dir_okay=False),
              help="Rescheduler audit JSONL (default: audit.jsonl in the state dir).")
@click.option("--textfile", default=None, type=click.Path(dir_okay=False),
              help="Write node_exporter textfile-collector output to PATH (*.prom).")
@click.option("--once", is_flag=True, help="With --textfile: write once and exit.")
@click.option("--interval", type=FiniteFloat(min=0.1), default=15.0, show_default=True,
              help="Seconds between textfile rewrites.")
@click.pass_context
def exporter(ctx: click.Context, port: int | None, bind: str, checkpoint_dirs: tuple[str, ...],
             state_dir: str | None, audit_file: str | None, textfile: str | None,
             once: bool, interval: float) -> None:
    """Export checkpoint and recovery metrics for Prometheus.

    \b
    slurmft exporter --port 9464 --checkpoint-dir /ckpt/job42
    slurmft exporter --textfile /var/lib/node_exporter/slurmft.prom --once
    """
    import threading

    from slurmft.core.errors import UsageError
    from slurmft.observe import metrics as m
    from slurmft.observe.exporter import ExporterCollector, build_registry

    if port is None and not textfile:
        raise UsageError("give --port to serve HTTP or --textfile PATH to write a file")
    if once and (port is not None or not textfile):
        raise UsageError("--once goes with --textfile and without --port")
    bind = _check_bind(bind)
    cfg = get_config(ctx, reschedule={"state_dir": state_dir})
    collector = ExporterCollector(checkpoint_dirs, state_dir=cfg.reschedule.state_dir,
                                  audit_file=audit_file)
    registry = build_registry(collector)
    if textfile:
        m.write_textfile(registry, textfile)
    if once:
        return
    if port is not None:
        server = m.start_http_server(registry, port, bind)
        click.echo(f"serving http://{bind}:{server.server_port}/metrics")
        sys.stdout.flush()
    stop = threading.Event()
    while not stop.wait(interval if textfile else 3600):
        if textfile:
            m.write_textfile(registry, textfile)


def render_logging(format_: str | None, log_paths: tuple[str, ...], logstash_hosts: tuple[str, ...],
                   beats_port: int, job_id: str | None, node_id: str | None,
                   out: str | None) -> None:
    """Render filebeat.yml and logstash.conf for slurmft's logs."""
    import os
    from pathlib import Path

    from slurmft.core.errors import UsageError
    from slurmft.core.log import default_node_id
    from slurmft.render import render

    fmt = format_ or os.environ.get("SLURMFT_LOG_FORMAT") or "text"
    if fmt not in ("text", "json"):
        raise UsageError(f"log format must be text or json, not {fmt!r}")
    for hostport in logstash_hosts:
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--logstash-host must be host:port, not {hostport!r}")
        _check_bind(host, "--logstash-host")
    ctx = {
        "format": fmt,
        "log_paths": list(log_paths) or ["/var/log/slurmft/*.log"],
        "logstash_hosts": list(logstash_hosts) or ["localhost:5044"],
        "beats_port": beats_port,
        "job_id": job_id or "${SLURM_JOB_ID:none}",
        "node_id": node_id or default_node_id(),
        "elasticsearch_hosts": [],
    }
    files = {"filebeat.yml": render("filebeat.yml.j2", ctx),
             "logstash.conf": render("logstash.conf.j2", ctx)}
    if out is None:
        for name, text in files.items():
            click.echo(f"# ---- {name} ----")
            click.echo(text, nl=False)
        return
    from slurmft.core.atomic import atomic_write_all

    target = Path(out)
    if not target.is_dir():
        raise UsageError(f"--out {target} is not a directory")
    for path in atomic_write_all(target, files):
        click.echo(str(path))


_render_logging_cmd = click.Command(
    "logging", callback=render_logging,
    help="Render filebeat.yml and a Logstash pipeline for slurmft's logs "
         "(text lines parsed by grok, or JSON lines by Filebeat's ndjson parser).",
    params=[
        click.Option(["--format", "format_"], type=click.Choice(["text", "json"]), default=None,
                     help="Log format to ship (default: SLURMFT_LOG_FORMAT or text)."),
        click.Option(["--log-path", "log_paths"], multiple=True,
                     help="Log file glob (repeatable; default /var/log/slurmft/*.log)."),
        click.Option(["--logstash-host", "logstash_hosts"], multiple=True,
                     help="host:port of Logstash's beats input (repeatable; default localhost:5044)."),
        click.Option(["--beats-port"], type=click.IntRange(1, 65535), default=5044,
                     show_default=True, help="Port of the pipeline's beats input."),
        click.Option(["--job-id"], default=None,
                     help="job_id field (default: Filebeat's ${SLURM_JOB_ID:none})."),
        click.Option(["--node-id"], default=None, help="node field (default: this node)."),
        click.Option(["--out"], type=click.Path(file_okay=False), default=None,
                     help="Write filebeat.yml and logstash.conf here (default: stdout)."),
    ],
)
cli.add_command(exporter)
# `slurmft render logging` when issue 4's `render` group exists, else `slurmft render-logging`.
if isinstance(cli.commands.get("render"), click.Group):
    cli.commands["render"].add_command(_render_logging_cmd, "logging")
else:
    cli.add_command(_render_logging_cmd, "render-logging")


def _note_json_errors(group: click.Group) -> None:
    """One rule for every --json: the document on stdout, errors on stderr (said in --help)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _note_json_errors(command)
        for param in command.params:
            if (isinstance(param, click.Option) and "--json" in param.opts
                    and JSON_ERRORS_NOTE not in (param.help or "")):
                param.help = f"{(param.help or 'Print JSON.').rstrip()} {JSON_ERRORS_NOTE}"


_note_json_errors(cli)
