"""The ``slurmft`` command: parse, build config, call the library, print. Nothing else.

The cli package is the ONLY importer of click. ``main`` holds the root group and the one
registry of commands; each command group has its own module (``probe``, ``recovery``:
reschedule/watch/epilog, ``render``, ``checkpoint``, ``exporter``, ``testbed``: cluster, demo,
inject); ``adapters`` is the one place that builds the Slurm client, the prober and the local
cluster; ``errors`` is the one place that maps an exception to ``slurmft: <message>`` (one line
on stderr) and an exit code: no traceback reaches the user. With ``--json`` the JSON document
(if any) goes to stdout and errors stay on stderr, for every command.

Exit codes (slurmft.core.errors.ExitCode): 0 ok; 1 operation failed (Slurm, a file that cannot be
read or written, a corrupt checkpoint); 2 usage or config error; 3 policy refused (retry
budget); 4 not your job; 5/6 reschedule --in-place: needs a requeue / stale copy; 10 probe
found unhealthy hosts; 130 interrupted.
"""

from slurmft.cli.errors import error_exit
from slurmft.cli.main import cli, main
from slurmft.cli.options import JSON_ERRORS_NOTE, FiniteFloat
from slurmft.cli.probe import EXIT_UNHEALTHY

__all__ = ["EXIT_UNHEALTHY", "JSON_ERRORS_NOTE", "FiniteFloat", "cli", "error_exit", "main"]
