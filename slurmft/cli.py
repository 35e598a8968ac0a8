"""The ``slurmft`` command: parse, build config, call the library, print. Nothing else.

This is the ONLY module that imports click. Every SlurmFTError becomes one line
``slurmft: <message>`` on stderr and the error's exit code; no tracebacks reach the user.

Exit codes: 0 ok; 1 operation failed; 2 usage or config error; 3 policy refused (retry budget);
4 permission denied; 10 probe found unhealthy hosts; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from slurmft import __version__
from slurmft.config import Config, load_config
from slurmft.errors import SlurmFTError
from slurmft.log import setup_logging

EXIT_UNHEALTHY = 10


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def get_config(ctx: click.Context, **overrides: dict) -> Config:
    """The layered config for this invocation (CLI flags passed as ``overrides``)."""
    obj = ctx.find_root().obj or {}
    return load_config(obj.get("config_path"), overrides=overrides or None)


class SlurmFTGroup(click.Group):
    """Maps SlurmFTError to one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SlurmFTError as exc:
            click.echo(f"slurmft: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("slurmft: interrupted", err=True)
            ctx.exit(130)


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
    level = {0: "WARNING", 1: "INFO"}.get(verbose, "DEBUG")
    setup_logging(level=level, fmt=log_format)


def main() -> None:
    cli(prog_name="slurmft")


# ---------------------------------------------------------------------------------------------
# Each area registers its commands below, in its own section.
# ---------------------------------------------------------------------------------------------

# === cluster (issue 2) ===

# === slurm + probe (issue 3) ===

# === reschedule / render / epilog / watch (issue 4) ===

# === checkpoint (issue 5) ===

# === demo / inject (issue 6) ===

# === observability (issue 7) ===
