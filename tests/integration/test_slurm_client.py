"""CommandSlurmClient against the real Slurm 22.05 of the local cluster.

Commands run in the controller namespace through ``SubprocessRunner(prefix, env)``. Every node
state changed here is restored; every job submitted is cancelled.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from slurmft.core.errors import (
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    JobPendingError,
    NodeStateError,
    UnsatisfiableRequestError,
    UsageError,
)
from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.runner import SubprocessRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def runner(cluster) -> SubprocessRunner:
    return SubprocessRunner(prefix=cluster.exec_argv(["true"])[:-1], env=cluster.env())


@pytest.fixture
def client(runner) -> CommandSlurmClient:
    return CommandSlurmClient(runner=runner, timeout=30)


@pytest.fixture
def job_script(cluster) -> str:
    script = Path(cluster.shared_dir) / "slurm-client-test.sh"
    script.write_text("#!/bin/sh\nsleep 120\n")
    script.chmod(0o755)
    return str(script)


def submit(client, cluster, script, n=1, extra=()):
    return client.submit(script, [f"-N{n}", f"--chdir={cluster.shared_dir}",
                                  "--output=/dev/null", "-J", "sft-client-test", *extra])


def wait_state(client, job_id, states, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job.state in states:
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} never reached {states}: {client.job(job_id)}")


def test_nodes(client, cluster):
    nodes = {n.name: n for n in client.nodes()}
    assert set(cluster.nodes) <= set(nodes)
    for name in cluster.nodes:
        assert nodes[name].address == cluster.ip(name) and nodes[name].cpus > 0


def test_unknown_job(client):
    with pytest.raises(InvalidJobError) as exc:
        client.job(987654)
    assert "Invalid job id specified" in exc.value.slurm_message
    with pytest.raises(InvalidJobError):
        client.requeue(987654)


def test_unknown_node(client):
    with pytest.raises(InvalidNodeError) as exc:
        client.drain(["nosuchnode9"], "test")
    assert "Invalid node name" in exc.value.slurm_message


def test_drain_without_reason_rejected(client, runner, cluster):
    node = cluster.nodes[-1]
    with pytest.raises(UsageError):
        client.drain([node], "")
    # and Slurm itself refuses, in its own words, if asked directly:
    argv = scli.build_node_update_argv([node], "DRAIN", None)
    res = runner.run(argv, 30)
    err = sparse.error_for(argv, res.returncode, res.stderr, res.stdout)
    assert res.returncode != 0 and isinstance(err, NodeStateError)
    assert "You must specify a reason" in err.slurm_message
    assert not client.node(node).is_drained


def test_drain_and_resume(client, cluster):
    node = cluster.nodes[-1]
    client.drain([node], "slurmft integration test")
    try:
        info = client.node(node)
        assert info.is_drained and info.reason == "slurmft integration test"
    finally:
        client.resume([node])
    assert not client.node(node).is_drained
    with pytest.raises(NodeStateError):  # resume of a node that is not drained/down
        client.resume([node])


def test_running_job(client, cluster, job_script):
    job_id = submit(client, cluster, job_script)
    try:
        job = wait_state(client, job_id, {"RUNNING"})
        assert len(job.nodes) == 1 and job.nodes[0] in cluster.nodes
        assert client.node_names(job_id) == list(job.nodes)
        with pytest.raises(JobNotPendingError) as exc:
            client.update_job(job_id, exclude=[job.nodes[0]])
        assert "no longer pending" in exc.value.slurm_message
        # requeuehold -> PENDING held; now the update works; requeue of a pending job fails
        client.requeue_hold(job_id)
        job = wait_state(client, job_id, {"PENDING"})
        with pytest.raises(JobPendingError):
            client.requeue(job_id)
        client.update_job(job_id, exclude=[cluster.nodes[0]], num_nodes=(1, 1))
        job = client.job(job_id)
        assert job.excluded_nodes == (cluster.nodes[0],) and job.restart_count >= 1
        client.release(job_id)
        client.update_job(job_id, start_now=True)
        job = wait_state(client, job_id, {"RUNNING"})
        assert cluster.nodes[0] not in job.nodes
    finally:
        client.cancel(job_id)
    job = wait_state(client, job_id, {"CANCELLED"})
    assert job.has_ended


def test_unsatisfiable_submit(client, cluster, job_script):
    n = len(cluster.nodes)
    with pytest.raises(UnsatisfiableRequestError):
        submit(client, cluster, job_script, n=n, extra=[f"--exclude={cluster.nodes[-1]}"])
