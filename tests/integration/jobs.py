"""A requeueable training stand-in on a real local cluster, and what Slurm says about it.

Shared by the deploy integration tests (test_prometheus.py, test_epilog_wrapper.py):
``LoopJob`` submits ``-N n`` jobs whose batch script runs ``srun`` (so each run of the job has
a job step, the mark ``slurmft watch`` takes for "training running again"), breaks links, and
puts the cluster back as it found it (links up, jobs gone, nodes resumed and idle).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.waiting import wait_for

PY = sys.executable
ACTIVE = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED")

Run = Callable[..., subprocess.CompletedProcess]


def slurmft(*args: str) -> list[str]:
    return [PY, "-m", "slurmft", *args]


def cluster_runner(cluster) -> Run:
    """``run(argv, timeout=60)`` inside ``cluster`` (controller netns, SLURM_CONF set)."""
    def run(argv, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(cluster.exec_argv([str(a) for a in argv]),
                              env={**cluster.env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    return run


def show_job(run: Run, job_id: int) -> dict[str, str]:
    """``scontrol show job -o`` as a dict ({} once Slurm forgot the job)."""
    out = run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def job_state(run: Run, job_id: int) -> str:
    for j in json.loads(run(["squeue", "--json"]).stdout or '{"jobs": []}')["jobs"]:
        if j["job_id"] == job_id:
            return j["job_state"]
    return "GONE"


def node_line(run: Run, node: str) -> tuple[str, str]:
    """(state, reason) of ``node`` as ``sinfo -N`` shows them (state e.g. ``drained*``)."""
    out = run(["sinfo", "-h", "-N", "-n", node, "-o", "%T|%E"]).stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


def running_on(run: Run, job_id: int, count: int) -> list[str] | None:
    """The job's nodes while it is RUNNING on exactly ``count`` nodes, else None."""
    j = show_job(run, job_id)
    if j.get("JobState") != "RUNNING":
        return None
    nodes = run(["scontrol", "show", "hostnames", j["NodeList"]]).stdout.split()
    return nodes if len(nodes) == count else None


class LoopJob:
    """Submit requeueable loop jobs, break node links; ``cleanup()`` undoes all of it."""

    def __init__(self, cluster, name: str = "deploy-test") -> None:
        self.cluster = cluster
        self.run = cluster_runner(cluster)
        self.name = name
        self.jobs: list[int] = []
        self.broken: list[str] = []
        shared = Path(cluster.shared_dir)
        self.script = shared / f"{name}-loop.sh"
        self.script.write_text("#!/bin/bash\n"
                               'echo "start job=$SLURM_JOB_ID restarts=${SLURM_RESTART_COUNT:-0} '
                               'nodes=$SLURM_JOB_NODELIST"\n'
                               "srun bash -c 'while true; do sleep 1; done'\n")
        self.script.chmod(0o755)

    def output(self, job_id: int) -> str:
        path = Path(self.cluster.shared_dir, f"{self.name}-{job_id}.out")
        return path.read_text() if path.exists() else "-"

    def submit(self, nodes: int = 4) -> int:
        shared = self.cluster.shared_dir
        cp = self.run(["sbatch", "--parsable", "--requeue", f"-N{nodes}", "-J", self.name,
                       f"--output={shared}/{self.name}-%j.out", "--open-mode=append",
                       f"--chdir={shared}", str(self.script)])
        assert cp.returncode == 0, cp.stderr
        jid = int(cp.stdout.strip().split(";")[0])
        self.jobs.append(jid)
        wait_for(lambda: running_on(self.run, jid, nodes), 30, f"job {jid} RUNNING",
                 show=lambda: show_job(self.run, jid))
        return jid

    def link_down(self, node: str) -> None:
        self.broken.append(node)
        self.cluster.fault(node, "link-down")

    def cleanup(self) -> None:
        for node in self.broken:
            self.cluster.fault(node, "link-up")
        for jid in self.jobs:
            self.run(["scancel", str(jid)])
        wait_for(lambda: all(job_state(self.run, j) not in ACTIVE for j in self.jobs), 60,
                 "test jobs to end", show=lambda: {j: job_state(self.run, j) for j in self.jobs})
        for node in self.cluster.nodes:
            self.run(["scontrol", "update", f"nodename={node}", "state=resume"])
        wait_for(lambda: all(node_line(self.run, n)[0] == "idle" for n in self.cluster.nodes),
                 60, "nodes idle again",
                 show=lambda: {n: node_line(self.run, n) for n in self.cluster.nodes})
