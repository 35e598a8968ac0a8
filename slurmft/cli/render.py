"""``slurmft render``: the files slurmft renders (hostfile, restart script, job wrapper) and the
log shipping configuration (Filebeat + Logstash)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from slurmft.cli import adapters
from slurmft.cli.options import check_bind, count, get_config
from slurmft.core.config import Config
from slurmft.core.errors import UsageError


@click.group("render")
def render_group() -> None:
    """Print slurmft's rendered files: hostfile, restart script, job wrapper, log shipping,
    and the site kit (render deploy)."""


def _render_options(f: Callable) -> Callable:
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


@dataclass
class _RenderRequest:
    """One ``render hostfile|restart|job`` invocation, its options resolved against the config."""

    which: str
    cfg: Config
    train: str
    ckpt: str
    job_name: str | None
    job: Any = None                       # JobInfo of --job, if given
    names: list[str] | None = None
    excluded: list[str] | None = None
    node_count: int | None = None
    spares: int = 0
    replicas: int = 0
    total_steps: int | None = None
    group_jobs: bool = False
    lighthouse: str = ""
    warm: bool = False


def _check_train_cmd(which: str, train: str) -> None:
    import shlex

    try:
        words = shlex.split(train)
    except ValueError as exc:
        raise UsageError(f"render {which}: --train-cmd is not valid shell words ({exc}): "
                         f"{train!r}") from None
    if not words:
        raise UsageError(f"render {which}: give --train-cmd (or set reschedule.train_cmd)")


def _resolve_nodes(req: _RenderRequest, nodelist: str | None, exclude: str | None) -> None:
    """The nodes to render for (--nodes, else the job's) minus the excluded ones."""
    from slurmft.core import nodeset

    job = req.job
    if req.which == "job" and nodelist and nodelist.isdigit():   # the wrapper needs a count
        req.node_count, nodelist = int(nodelist), None
        if req.node_count < 1:
            raise UsageError("render job: --nodes must be at least 1")
    names = nodeset.expand(nodelist) if nodelist else list(job.nodes if job else [])
    excluded = nodeset.expand(exclude) if exclude else list(job.excluded_nodes if job else [])
    req.names, req.excluded = [n for n in names if n not in excluded], excluded
    if req.which in ("hostfile", "restart") and not req.names:
        raise UsageError(f"render {req.which}: give --nodes HOSTLIST or --job JOBID with nodes")


def _render_text(req: _RenderRequest) -> str:
    from dataclasses import replace

    from slurmft.recovery.rescheduler import job_context, restart_context
    from slurmft.render import render
    from slurmft.slurm.records import JobInfo

    rcfg, job = req.cfg.reschedule, req.job
    if req.which == "hostfile":
        return render("hostfile.j2", {"nodes": req.names, "slots": rcfg.slots})
    if req.which == "restart":
        base = job or JobInfo(job_id=1, name=req.job_name or "train", state="FAILED")
        if req.job_name:
            base = replace(base, name=req.job_name)
        return render("restart.sh.j2", restart_context(
            base, req.names, req.excluded, req.train, req.ckpt, rcfg,
            reschedule_log=f"{rcfg.state_dir}/reschedule.log"))
    n_nodes = req.node_count or len(req.names) or (job.node_count if job else 1)
    return render("job.sh.j2", job_context(
        rcfg, train_cmd=req.train, checkpoint_dir=req.ckpt,
        job_name=req.job_name or (job.name if job else "train"), nodes=n_nodes,
        partition=job.partition if job else "", spares=req.spares, replicas=req.replicas,
        total_steps=req.total_steps, group_jobs=req.group_jobs, lighthouse=req.lighthouse,
        warm=req.warm))


def _render_cmd(ctx: click.Context, which: str, job_id: str | None, nodelist: str | None,
                exclude: str | None, slots: int | None, train_cmd: str | None,
                checkpoint_dir: str | None, job_name: str | None, launcher: str | None,
                launch_from: str | None, out: str | None, spares: int = 0,
                replicas: int = 0, total_steps: int | None = None, group_jobs: bool = False,
                lighthouse: str | None = None, warm: bool = False) -> None:
    cfg = get_config(ctx, reschedule={"slots": slots, "launcher": launcher,
                                      "launch_from": launch_from})
    req = _RenderRequest(which, cfg, train=train_cmd or cfg.reschedule.train_cmd,
                         ckpt=checkpoint_dir or cfg.reschedule.checkpoint_dir, job_name=job_name,
                         spares=spares, replicas=replicas, total_steps=total_steps,
                         group_jobs=group_jobs, lighthouse=_lighthouse(group_jobs, replicas,
                                                                       lighthouse), warm=warm)
    if which in ("job", "restart"):       # usage errors first, before Slurm is asked
        _check_train_cmd(which, req.train)
        if not req.ckpt:
            raise UsageError(f"render {which}: give --checkpoint-dir "
                             "(or set reschedule.checkpoint_dir)")
    if job_id is not None:
        from slurmft.slurm.commands import check_job_id

        req.job = adapters.slurm_client(cfg).job(check_job_id(job_id))
    _resolve_nodes(req, nodelist, exclude)
    text = _render_text(req)
    if out:
        from slurmft.core.atomic import atomic_write

        atomic_write(out, text, mode=None if which == "hostfile" else 0o755)
        click.echo(out)
    else:
        click.echo(text, nl=False)


def _lighthouse(group_jobs: bool, replicas: int, url: str | None) -> str:
    """--group-jobs' lighthouse URL, checked (``""`` without --group-jobs)."""
    if not group_jobs:
        if url:
            raise UsageError("render job: --lighthouse goes with --group-jobs")
        return ""
    if not replicas or not url:
        raise UsageError("render job: --group-jobs needs --replicas R and --lighthouse "
                         "http://HOST:PORT (where `slurmft lighthouse` runs)")
    from slurmft.supervise.launch import check_lighthouse_url

    try:
        return check_lighthouse_url(url)
    except ValueError as exc:
        raise UsageError(f"render job: --lighthouse: {exc}") from None


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
@click.option("--spares", type=count(0, 4096), default=0, show_default=True,
              help="Hold this many extra nodes: a lost node is replaced by a spare and the "
                   "training keeps its world size (#SBATCH --nodes is nodes + spares).")
@click.option("--replicas", type=count(0, 4096), default=0, show_default=True,
              help="Per-step mode with torchft (`slurmft run --replicas`): the training "
                   "nodes in this many replica groups; a lost group is relaunched alone and "
                   "rejoins from a peer while the others train on. 0: restart mode.")
@click.option("--total-steps", type=count(1, 10**12), default=None,
              help="The training's total steps (`slurmft run --total-steps`): a job that "
                   "shrank asks for full size back when nodes return and it pays.")
@click.option("--group-jobs", is_flag=True,
              help="With --replicas R: one job per replica group, submitted R times with the "
                   "group id as argument (`sbatch job.sh I`), --nodes/R nodes each (`slurmft "
                   "run --group-id`), torchft's lighthouse "
                   "outside the groups (--lighthouse): losing any node costs one group a "
                   "requeue, never the whole run.")
@click.option("--lighthouse", default=None, metavar="URL",
              help="With --group-jobs: http://HOST:PORT of `slurmft lighthouse`.")
@click.option("--warm", is_flag=True,
              help="`slurmft run --warm`: one pre-imported Python per node forks the ranks, "
                   "so a relaunch skips interpreter and import start-up (restart mode; a "
                   "`python SCRIPT` or `python -m MODULE` training command).")
@click.pass_context
def render_job(ctx: click.Context, spares: int, replicas: int, total_steps: int | None,
               group_jobs: bool, lighthouse: str | None, warm: bool, **kw: Any) -> None:
    """The job wrapper to submit training with: requeueable, `exec slurmft run` (relaunches in
    place on node loss, a dead or hung rank; hands the rest to a requeue)."""
    _render_cmd(ctx, "job", spares=spares, replicas=replicas, total_steps=total_steps,
                group_jobs=group_jobs, lighthouse=lighthouse, warm=warm, **kw)


def _logging_context(fmt: str, log_paths: tuple[str, ...], logstash_hosts: tuple[str, ...],
                     beats_port: int, job_id: str | None, node_id: str | None) -> dict:
    from slurmft.core.log import default_node_id

    if fmt not in ("text", "json"):
        raise UsageError(f"log format must be text or json, not {fmt!r}")
    for hostport in logstash_hosts:
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--logstash-host must be host:port, not {hostport!r}")
        check_bind(host, "--logstash-host")
    return {
        "format": fmt,
        "log_paths": list(log_paths) or ["/var/log/slurmft/*.log"],
        "logstash_hosts": list(logstash_hosts) or ["localhost:5044"],
        "beats_port": beats_port,
        "job_id": job_id or "${SLURM_JOB_ID:none}",
        "node_id": node_id or default_node_id(),
        "elasticsearch_hosts": [],
    }


@render_group.command("logging")
@click.option("--format", "format_", type=click.Choice(["text", "json"]), default=None,
              help="Log format to ship (default: SLURMFT_LOG_FORMAT or text).")
@click.option("--log-path", "log_paths", multiple=True,
              help="Log file glob (repeatable; default /var/log/slurmft/*.log).")
@click.option("--logstash-host", "logstash_hosts", multiple=True,
              help="host:port of Logstash's beats input (repeatable; default localhost:5044).")
@click.option("--beats-port", type=click.IntRange(1, 65535), default=5044, show_default=True,
              help="Port of the pipeline's beats input.")
@click.option("--job-id", default=None,
              help="job_id field (default: Filebeat's ${SLURM_JOB_ID:none}).")
@click.option("--node-id", default=None, help="node field (default: this node).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write filebeat.yml and logstash.conf here (default: stdout).")
def render_logging(format_: str | None, log_paths: tuple[str, ...],
                   logstash_hosts: tuple[str, ...], beats_port: int, job_id: str | None,
                   node_id: str | None, out: str | None) -> None:
    """Render filebeat.yml and a Logstash pipeline for slurmft's logs (text lines parsed by
    grok, or JSON lines by Filebeat's ndjson parser)."""
    from slurmft.render import render

    fmt = format_ or os.environ.get("SLURMFT_LOG_FORMAT") or "text"
    ctx = _logging_context(fmt, log_paths, logstash_hosts, beats_port, job_id, node_id)
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


from slurmft.cli.deploy import render_deploy  # noqa: E402 - its own module, one group

render_group.add_command(render_deploy)
