"""A large cluster in the fake Slurm: ``jobs`` running jobs on a ``nodes``-node cluster.

Every job and node record is a copy of the ones captured from the real Slurm 22.05
(``tests/data/squeue.json``, ``sinfo.json``) with its name, nodes and state changed, so the
watcher reads the real 22.05 JSON shape at 10,000 nodes. Shared by the watcher's scale test
and ``bench/watcher_scale.py`` (which also runs it against the code before the cached view).
"""

from __future__ import annotations

import copy

from slurmft.probe.records import Health, ProbeResult
from tests.fakes.fake_slurm import FakeSlurm


def node_name(i: int) -> str:
    """node00001 ... node10000 (the names bench/scale.py's test bed resolves)."""
    return f"node{i:05d}"


def scale_cluster(jobs: int = 2000, nodes: int = 10_000, per_job: int = 5) -> FakeSlurm:
    """A FakeSlurm with ``jobs`` requeueable RUNNING jobs of ``per_job`` nodes each on the
    first nodes of a ``nodes``-node cluster (the rest idle): job k (from 0) has id k + 1 and
    nodes ``node_name(k * per_job + 1)`` to ``node_name((k + 1) * per_job)``."""
    if jobs * per_job > nodes:
        raise ValueError(f"{jobs} jobs of {per_job} nodes do not fit on {nodes} nodes")
    fake = FakeSlurm()
    fake.jobs.clear()
    fake.next_job_id = 1                    # job k (from 0) gets id k + 1
    template = next(iter(fake.nodes.values()))
    names = [node_name(i) for i in range(1, nodes + 1)]
    busy = jobs * per_job
    fake.nodes = {}
    for i, name in enumerate(names):
        doc = copy.deepcopy(template)
        doc.update(name=name, hostname=name, address=f"10.200.{i // 250}.{i % 250 + 1}",
                   state="allocated" if i < busy else "idle", state_flags=[], reason="")
        fake.nodes[name] = doc
    for k in range(jobs):
        fake.add_job("RUNNING", names[k * per_job:(k + 1) * per_job], name=f"train-{k}")
    return fake


class CountingProber:
    """A prober stub: every host healthy but those in ``failed``; counts hosts probed."""

    def __init__(self) -> None:
        self.failed: dict[str, Health] = {}
        self.calls = 0
        self.hosts = 0

    def probe(self, hosts):
        self.calls += 1
        self.hosts += len(hosts)
        return {h: ProbeResult(h, self.failed.get(h, Health.HEALTHY), reason="stub")
                for h in hosts}


def slurm_command(argv) -> str:
    """What a recorded Slurm argv is, for counting: ``squeue`` (the job listing),
    ``squeue-steps``, ``sinfo``, ``show-job`` (scontrol show job), or the write's own name
    (``scontrol-update``, ``scontrol-requeuehold``, ``scancel``, ...)."""
    cmd = str(argv[0]).rsplit("/", 1)[-1]
    if cmd == "squeue":
        return "squeue-steps" if "--steps" in argv else "squeue"
    if cmd == "scontrol":
        return "show-job" if argv[1:3] == ("show", "job") else f"scontrol-{argv[1]}"
    return cmd
