"""Fixtures for integration tests on a REAL local cluster (root; CI runs as root).

``cluster``: a session-wide 4-node cluster (slurmft.testbed.Cluster), torn down at the end.
``cluster_run``: ``cluster_run(["sinfo"], timeout=60) -> CompletedProcess`` run inside it
(controller netns, node names resolvable, SLURM_CONF and SLURMFT_* set, text output).

The name is ``sft-test`` (or $SLURMFT_TEST_CLUSTER). A session lock makes a second pytest run
started at the same time use its own ``sft-t<pid>`` cluster instead of tearing down the first
one's; a cluster left behind by a killed run is cleaned up by the next run that gets the lock.
Put job scripts, outputs and checkpoints under ``cluster.shared_dir`` (nodes have a private
/tmp, so pytest's tmp_path is NOT visible to jobs).
"""

from __future__ import annotations

import os
import subprocess

import filelock
import pytest

from slurmft.testbed import Cluster


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests build a real cluster in network "
                                   "namespaces and need root (run `make test` as root)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root (network namespaces)")
    name = os.environ.get("SLURMFT_TEST_CLUSTER", "sft-test")
    lock = filelock.FileLock(str(Cluster(name).lock_path(f"{name}.session")))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        lock = None
        name = f"sft-t{os.getpid()}"
    c = Cluster(name)
    c.down()                      # leftovers of a killed run with this name
    try:
        c.up(nodes=4)
        yield c
    finally:
        c.down()
        if lock is not None:
            lock.release()


@pytest.fixture(scope="session")
def cluster_run(cluster):
    def run(argv, timeout: float = 60.0, check: bool = False, input: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = cluster.env()
        full_env.update(env or {})
        return subprocess.run(cluster.exec_argv([str(a) for a in argv]), env=full_env,
                              capture_output=True, text=True, timeout=timeout, check=check,
                              input=input)
    return run
