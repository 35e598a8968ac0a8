"""The root ``slurmft`` group: global options (config, verbosity, log format), logging setup,
and the one registry of command groups (each lives in its own module of this package)."""

from __future__ import annotations

import click

from slurmft import __version__
from slurmft.cli.checkpoint import checkpoint_group
from slurmft.cli.errors import SlurmFTGroup
from slurmft.cli.exporter import exporter_cmd
from slurmft.cli.lighthouse import lighthouse_cmd
from slurmft.cli.options import note_json_errors
from slurmft.cli.probe import probe_cmd
from slurmft.cli.recovery import epilog_cmd, reschedule_cmd, watch_cmd
from slurmft.cli.render import render_group
from slurmft.cli.run import run_cmd
from slurmft.cli.testbed import cluster_group, demo_cmd, inject_cmd
from slurmft.core.config import LogConfig, load_config
from slurmft.core.errors import SlurmFTError
from slurmft.core.log import setup_logging

#: Every command, registered in one place and one style (name -> click command).
COMMANDS: dict[str, click.Command] = {
    "checkpoint": checkpoint_group,
    "cluster": cluster_group,
    "demo": demo_cmd,
    "epilog": epilog_cmd,
    "exporter": exporter_cmd,
    "inject": inject_cmd,
    "lighthouse": lighthouse_cmd,
    "probe": probe_cmd,
    "render": render_group,
    "reschedule": reschedule_cmd,
    "run": run_cmd,
    "watch": watch_cmd,
}


def _log_config(config_path: str | None, subcommand: str | None) -> LogConfig:
    try:
        return load_config(config_path).log
    except SlurmFTError:
        if subcommand != "epilog":   # the epilog never fails: Slurm would drain the node
            raise
        return LogConfig()


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
    log_cfg = _log_config(config_path, ctx.invoked_subcommand)
    # -v / -vv win over the configured level (log.level, default WARNING).
    level = {0: log_cfg.level, 1: "INFO"}.get(verbose, "DEBUG")
    setup_logging(level=level, fmt=log_format or log_cfg.format, logfile=log_cfg.file or None)


for _name, _command in COMMANDS.items():
    cli.add_command(_command, _name)
note_json_errors(cli)


def main() -> None:
    cli(prog_name="slurmft")
