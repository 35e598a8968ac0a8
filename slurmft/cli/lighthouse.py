"""``slurmft lighthouse``: torchft's lighthouse for per-step mode with one job per replica
group, and the ``slurmft run --group-id`` options that point a group at it."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from slurmft.cli.options import count, echo_json
from slurmft.core.errors import UsageError


def lighthouse_binary() -> str:
    """torchft's lighthouse: next to this Python (as pip installs it), else on PATH."""
    beside = Path(sys.executable).parent / "torchft_lighthouse"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("torchft_lighthouse")
    if not found:
        raise UsageError("torchft's lighthouse (torchft_lighthouse) is neither next to this "
                         "Python nor on PATH: pip install 'slurmft[torchft]'")
    return found


def group_job(replicas: int, group_id: int | None, lighthouse: str | None,
              store_port: int) -> Any:
    """``slurmft run --group-id I --lighthouse URL``: the GroupJob (None: not given); a
    usage error for half of it or values that do not fit."""
    if group_id is None and lighthouse is None:
        return None
    if group_id is None or lighthouse is None or not replicas:
        raise UsageError("one job per replica group needs all of --replicas R, --group-id I "
                         "and --lighthouse http://HOST:PORT")
    from slurmft.supervise.launch import GroupJob

    try:
        return GroupJob(group_id=group_id, replicas=replicas, lighthouse=lighthouse,
                        store_port=store_port)
    except ValueError as exc:
        raise UsageError(f"--group-id/--lighthouse: {exc}") from None


@click.command("lighthouse")
@click.option("--port", type=count(1024, 65535), default=29510, show_default=True,
              help="Listen on this TCP port, every address of this host.")
@click.option("--min-replicas", type=count(1, 4096), default=1, show_default=True,
              help="A quorum needs this many replica groups.")
@click.option("--join-timeout-ms", type=count(0, 3_600_000), default=1000, show_default=True,
              help="How long a quorum waits for groups still joining.")
@click.option("--heartbeat-timeout-ms", type=count(100, 3_600_000), default=2000,
              show_default=True, help="A group silent this long leaves the quorum.")
@click.option("--dry-run", is_flag=True, help="Print the command and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print it as JSON.")
def lighthouse_cmd(port: int, min_replicas: int, join_timeout_ms: int,
                   heartbeat_timeout_ms: int, dry_run: bool, as_json: bool) -> None:
    """Run torchft's lighthouse for per-step mode with one job per replica group.

    \b
    Start it where no training runs (a login or service node): a group that
    loses its node is then requeued alone, and the other groups keep their
    quorum. Each group is a job of its own, as `slurmft render job --replicas R
    --group-jobs --lighthouse http://HOST:PORT -o job.sh` writes it:
      slurmft lighthouse --port 29510 &
      for i in 0 1 2 3; do sbatch job.sh $i; done    # R=4
    The lighthouse keeps no state worth saving: restart it and the groups join
    again within one heartbeat. Runs in the foreground until stopped.
    """
    from slurmft.supervise.launch import lighthouse_command

    binary = "torchft_lighthouse" if dry_run else lighthouse_binary()
    argv = lighthouse_command([binary], port, min_replicas, join_timeout_ms,
                              heartbeat_timeout_ms=heartbeat_timeout_ms)
    if dry_run:
        if as_json:
            echo_json({"argv": argv, "port": port, "min_replicas": min_replicas})
        else:
            click.echo(shlex.join(argv))
        return
    sys.stdout.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise UsageError(f"cannot start {argv[0]}: {exc.strerror}") from None
