"""``slurmft render deploy``: the files a site installs to run slurmft (slurmft.render.deploy)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from slurmft.cli.options import FiniteFloat, check_bind, echo_json, get_config
from slurmft.core.errors import SlurmFTError, UsageError

#: Placeholders of the example job wrapper (the in-job trap), for a training users replace.
EXAMPLE_TRAIN_CMD = "python3 train.py"
EXAMPLE_CHECKPOINT_DIR = "/shared/checkpoints/example"


def _default_slurmft_bin() -> str:
    """The ``slurmft`` of the installation running this command."""
    return str(Path(sys.prefix) / "bin" / "slurmft")


def _job_wrapper(cfg: Any, slurmft_bin: str, state_dir: str) -> str:
    from dataclasses import replace

    from slurmft.recovery.scripts import job_context
    from slurmft.render import render

    rcfg = replace(cfg.reschedule, state_dir=state_dir)
    return render("job.sh.j2", job_context(
        rcfg, train_cmd=EXAMPLE_TRAIN_CMD, checkpoint_dir=EXAMPLE_CHECKPOINT_DIR,
        job_name="example", nodes=2, slurmft_cmd=[slurmft_bin]))


def _prepare_out(out: str) -> list[Path]:
    """Make ``out`` (and missing parents); returns the folders created, deepest first."""
    target = Path(out)
    created: list[Path] = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlurmFTError(f"cannot create --out {out}: {exc.strerror}") from None
    if not target.is_dir():
        raise SlurmFTError(f"--out {out} is not a directory")
    return created


def _write(out: str, files: dict[str, Any]) -> list[Path]:
    from slurmft.core.atomic import atomic_write_all

    created = _prepare_out(out)
    try:
        paths = atomic_write_all(out, {name: f.text for name, f in files.items()})
        for path in paths:
            os.chmod(path, files[path.name].mode)
    except OSError as exc:
        for folder in created:          # leave nothing behind a refused write
            try:
                folder.rmdir()
            except OSError:
                break
        raise SlurmFTError(f"cannot write to --out {out}: "
                           f"{exc.strerror or exc}") from None
    return paths


@click.command("deploy")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write the kit into (created if missing).")
@click.option("--user", default=None,
              help="User the watcher and the exporter run as (default slurmft). A Slurm "
                   "operator, or SlurmUser itself: see PRIVILEGES.md in the kit.")
@click.option("--slurm-user", default=None,
              help="SlurmUser of slurm.conf: runs the epilog (default slurm).")
@click.option("--state-dir", default=None, type=click.Path(file_okay=False),
              help="Shared state folder, the same on every host (reschedule.state_dir).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="slurmft YAML config the services read (SLURMFT_CONFIG in slurmft.env); "
                   "its settings are read now too, so the kit agrees with it.")
@click.option("--etc-dir", default=None,
              help="Folder of slurmft.env and the probe's SSH key (default /etc/slurmft).")
@click.option("--slurmft-bin", default=None,
              help="Path of the slurmft command on the hosts (default: this installation's, "
                   f"e.g. {_default_slurmft_bin()}).")
@click.option("--epilog-path", default=None,
              help="Where the EpilogSlurmctld wrapper is installed (default "
                   "/etc/slurm/slurmft-epilog).")
@click.option("--log-dir", default=None,
              help="Log folder of the services, shipped by Filebeat (default /var/log/slurmft).")
@click.option("--probe-user", default=None,
              help="User the prober logs in as over SSH (default probe.ssh_user, or --user "
                   "when that is root).")
@click.option("--probe-key", default=None,
              help="Private key of the probe (default probe.ssh_key or ETC_DIR/ssh/id_ed25519).")
@click.option("--known-hosts", default=None,
              help="known_hosts of the probe (default probe.known_hosts or "
                   "ETC_DIR/ssh/known_hosts).")
@click.option("--watch-interval", type=FiniteFloat(min=0.05), default=None,
              help="Seconds between the watcher's probe cycles (default 2).")
@click.option("--exporter-bind", default=None,
              help="Address the exporter listens on (default 127.0.0.1; 0.0.0.0 when "
                   "Prometheus runs elsewhere).")
@click.option("--exporter-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the exporter (default 9464).")
@click.option("--scrape-target", "exporter_targets", multiple=True,
              help="host:port Prometheus scrapes the exporter at (repeatable; default "
                   "localhost:PORT).")
@click.option("--scrape-interval", type=click.IntRange(1, 3600), default=None,
              help="Seconds between Prometheus's scrapes and rule evaluations (default 15).")
@click.option("--node-exporter", "node_exporter_targets", multiple=True,
              help="host:port of node_exporter (--collector.systemd) on the watcher's host, "
                   "for the watcher-down alert (repeatable; default localhost:9100).")
@click.option("--checkpoint-dir", "checkpoint_dirs", multiple=True,
              help="Checkpoint folder the exporter reports on (repeatable).")
@click.option("--checkpoint-max-age", type=FiniteFloat(min=1), default=None,
              help="Seconds without a new verified checkpoint before the alert (default "
                   "twice checkpoint.interval, or 3600).")
@click.option("--node-unhealthy-for", type=click.IntRange(1, 10080), default=None,
              help="Minutes a node may stay unhealthy before the alert (default 30).")
@click.option("--elasticsearch", "elasticsearch_hosts", multiple=True,
              help="http(s)://host:port of Elasticsearch for Logstash's output (repeatable; "
                   "default https://localhost:9200).")
@click.option("--es-index", default=None,
              help="Elasticsearch index (default slurmft-%{+YYYY.MM.dd}).")
@click.option("--logstash-host", "logstash_hosts", multiple=True,
              help="host:port of Logstash's beats input for Filebeat (repeatable; default "
                   "localhost:5044).")
@click.option("--dry-run", is_flag=True, help="Say what would be written; write nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the files (name, path, bytes, mode, install_to) as JSON.")
@click.pass_context
def render_deploy(ctx: click.Context, out: str, config_file: str | None, dry_run: bool,
                  as_json: bool, **flags: Any) -> None:
    """Write everything a site installs to run slurmft, into --out.

    \b
    README.md, PRIVILEGES.md   how to install it; what the watcher's user may do
    slurm.conf.slurmft         EpilogSlurmctld + JobRequeue lines for slurm.conf
    slurmft-epilog             the EpilogSlurmctld wrapper (no arguments, exits 0)
    job-wrapper.example.sh     the in-job trap (`slurmft render job` output)
    slurmft.env                SLURMFT_* settings of the services and the epilog
    slurmft-watch.service      systemd unit of `slurmft watch`
    slurmft-exporter.service   systemd unit of `slurmft exporter`
    probe-ssh-setup.sh         the probe's own non-root SSH key and known_hosts
    prometheus.yml             scrape config; slurmft.rules.yml: alert rules
    grafana-dashboard.json     the dashboard
    filebeat.yml, logstash.conf  logs to Elasticsearch

    \b
    Settings come from the config (--config, SLURMFT_CONFIG, SLURMFT_* variables), then
    these flags. Example:
      slurmft render deploy --out site --state-dir /shared/slurmft \\
          --checkpoint-dir /shared/ckpt --elasticsearch https://es1:9200
    Then follow site/README.md (docs/deploy.md: the whole walk).
    """
    from slurmft.render.deploy import DeploySettings, deploy_files, summary

    if config_file:
        path = Path(config_file)
        if not path.is_absolute():
            raise UsageError(f"--config must be an absolute path (the services read it), "
                             f"not {config_file!r}")
        ctx.find_root().obj["config_path"] = config_file
    if flags.get("exporter_bind"):
        flags["exporter_bind"] = check_bind(flags["exporter_bind"], "--exporter-bind")
    cfg = get_config(ctx)
    flags["slurmft_bin"] = flags.get("slurmft_bin") or _default_slurmft_bin()
    settings = DeploySettings.from_config(cfg, config_file=config_file, **flags)
    files = deploy_files(settings, job_wrapper=_job_wrapper(cfg, settings.slurmft_bin,
                                                            settings.state_dir))
    paths: list[Path] = [] if dry_run else _write(out, files)
    if as_json:
        echo_json({"out": out, "dry_run": dry_run,
                   "files": summary(files, Path(out), paths)})
        return
    verb = "would write" if dry_run else "wrote"
    for f in files.values():
        place = f" -> {f.install_to}" if f.install_to else ""
        click.echo(f"{verb} {Path(out) / f.name}{place}")
    if not dry_run:
        click.echo(f"next: read {Path(out) / 'README.md'}")
