"""``slurmft probe``: node health, all hosts in parallel."""

from __future__ import annotations

import click

from slurmft.cli import adapters
from slurmft.cli.options import FiniteFloat, count, echo_json, get_config, job_id_type
from slurmft.core.errors import ExitCode, SlurmFTError

#: The exit code of a probe that found at least one host not healthy.
EXIT_UNHEALTHY = ExitCode.UNHEALTHY


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    colors = {"HEALTHY": "green", "UNREACHABLE": "red", "UNRESPONSIVE": "red",
              "DEGRADED": "yellow"}
    table = Table("host", "state", "reason", "latency", box=None, header_style="bold")
    for r in results.values():
        st = r.health.value
        table.add_row(r.host, f"[{colors[st]}]{st}[/]", r.reason, f"{r.latency_s:.3f}s")
    Console(highlight=False).print(table)


@click.command("probe")
@click.argument("hostlist", required=False)
@click.option("--job", "job_id", type=job_id_type(), default=None,
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
    from slurmft.core import nodeset

    if not hostlist and job_id is None:
        raise click.UsageError("give a HOSTLIST or --job JOBID")
    cfg = get_config(ctx, probe={"timeout": timeout, "command": command,
                                 "ssh_config": ssh_config,
                                 "accept_unknown_hosts": accept_unknown_hosts,
                                 "check_slurmd": check_slurmd, "slurmd_port": slurmd_port})
    names = nodeset.expand(hostlist) if hostlist else []
    if job_id is not None:
        job = adapters.slurm_client(cfg).job(job_id)
        if not job.nodes:
            raise SlurmFTError(
                f"job {job_id} holds no nodes (state {job.state}): nothing to probe; "
                "probe a pending job once it runs, or name the hosts")
        names = list(dict.fromkeys([*names, *job.nodes]))
    if not names:
        raise click.UsageError("the hostlist is empty")
    results = adapters.prober(cfg).probe(names)
    if as_json:
        echo_json({"hosts": [r.to_dict() for r in results.values()],
                   "healthy": all(not r.health.is_failed for r in results.values())})
    else:
        _print_table(results)
    if any(r.health.is_failed for r in results.values()):
        ctx.exit(EXIT_UNHEALTHY)
