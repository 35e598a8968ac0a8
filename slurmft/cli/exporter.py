"""``slurmft exporter``: checkpoint and recovery metrics for Prometheus (HTTP or textfile)."""

from __future__ import annotations

import sys
import threading

import click

from slurmft.cli.options import FiniteFloat, check_bind, get_config
from slurmft.core.errors import UsageError


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
def exporter_cmd(ctx: click.Context, port: int | None, bind: str,
                 checkpoint_dirs: tuple[str, ...], state_dir: str | None,
                 audit_file: str | None, textfile: str | None, once: bool,
                 interval: float) -> None:
    """Export checkpoint and recovery metrics for Prometheus.

    \b
    slurmft exporter --port 9464 --checkpoint-dir /ckpt/job42
    slurmft exporter --textfile /var/lib/node_exporter/slurmft.prom --once
    """
    from slurmft.observe import metrics as m
    from slurmft.observe.exporter import ExporterCollector, build_registry

    if port is None and not textfile:
        raise UsageError("give --port to serve HTTP or --textfile PATH to write a file")
    if once and (port is not None or not textfile):
        raise UsageError("--once goes with --textfile and without --port")
    bind = check_bind(bind)
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
