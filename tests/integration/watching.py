"""`slurmft watch` started and stopped around an integration test: in the controller's
namespace, in a session of its own (so the test stops it, and whatever it started, by its pid
alone), its output to a file the test shows when something times out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def watch_env(cluster, state: Path) -> dict:
    """The cluster's environment with slurmft's state in ``state`` and the probe a link-down
    test wants: ping only (a cut link is what ping sees; SSH probing has its own tests),
    quick timeouts."""
    return {**cluster.env(), "SLURMFT_RESCHEDULE_STATE_DIR": str(state),
            "SLURMFT_PROBE_SSH": "false", "SLURMFT_PROBE_TIMEOUT": "2",
            "SLURMFT_PROBE_PING_TIMEOUT": "0.5"}


def start_watcher(cluster, env: dict, log_path: Path, *args: str,
                  stdout: Path | None = None) -> subprocess.Popen:
    """``slurmft -v watch --interval 1 ARGS``; stderr (and stdout, unless ``stdout`` names a
    file of its own, e.g. for ``--json``) appended to ``log_path``."""
    with open(log_path, "ab") as err, open(stdout or os.devnull, "ab") as out:
        return subprocess.Popen(
            cluster.exec_argv([sys.executable, "-m", "slurmft", "-v", "watch", "--interval",
                               "1", *args]),
            env=env, stdin=subprocess.DEVNULL, stdout=out if stdout else err,
            stderr=err, start_new_session=True)


def submit_and_watch(cluster, cluster_run, script: Path | str, nodes: str, env: dict,
                     log_path: Path) -> tuple[int, subprocess.Popen]:
    """``sbatch -w NODES SCRIPT`` in the cluster, then a watcher on that job alone (its log in
    ``log_path``): the job id and the watcher, for ``stop_watcher``."""
    cp = cluster_run(["sbatch", "--parsable", "-w", nodes, str(script)], env=env)
    assert cp.returncode == 0, cp.stderr
    job_id = int(cp.stdout.strip())
    return job_id, start_watcher(cluster, env, log_path, "--job", str(job_id))


def stop_watcher(proc: subprocess.Popen) -> None:
    """TERM to the watcher's session, KILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
