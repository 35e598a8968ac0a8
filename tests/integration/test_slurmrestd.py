"""slurm.backend: rest against the REAL slurmrestd (22.05, OpenAPI v0.0.38, JWT auth) that
``cluster up --rest`` starts: every operation goes through RestSlurmClient, and what it does
is checked through the commands' client (CommandSlurmClient: squeue/sinfo/scontrol).

Own 2-node cluster ``sft-rest`` (or $SLURMFT_TEST_REST_CLUSTER), torn down at the end.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from slurmft.cli import adapters
from slurmft.core.config import load_config
from slurmft.core.errors import InvalidJobError, JobNotPendingError
from slurmft.slurm.rest import (
    HttpTransport,
    RestAuthError,
    RestSlurmClient,
    RestUnsupportedError,
    TokenSource,
)
from slurmft.testbed import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def rest_cluster():
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root (network namespaces)")
    if not os.access("/usr/sbin/slurmrestd", os.X_OK):
        pytest.skip("slurmrestd is not installed (apt-get install slurmrestd)")
    c = Cluster(os.environ.get("SLURMFT_TEST_REST_CLUSTER", "sft-rest"))
    c.down()
    try:
        c.up(nodes=2, rest=True)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def cli(rest_cluster):
    return rest_cluster.slurm_client(timeout=20)


@pytest.fixture(scope="module")
def rest(rest_cluster):
    """Built as `slurmft` builds it: slurm.backend rest, from the cluster's environment."""
    env = {**rest_cluster.env(), "SLURMFT_SLURM_BACKEND": "rest"}
    client = adapters.slurm_client(load_config(env=env), env=env)
    assert isinstance(client, RestSlurmClient) and client.fallback is None
    return client


def wait_for(what, cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def script(cluster, name: str, body: str = "sleep 300") -> str:
    path = cluster.shared_dir / f"{name}.sh"
    path.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --requeue\n"
                    f"#SBATCH --output={cluster.shared_dir}/{name}-%j.out\n{body}\n")
    return str(path)


def same_view(rest_job, cli_job):
    """What both clients must agree on (times and the script path are not compared: a job
    submitted over REST has no command path, and squeue reads a moment later)."""
    keys = ("job_id", "name", "state", "user", "reason", "nodes", "node_count",
            "excluded_nodes", "required_nodes", "requeue", "restart_count", "partition",
            "work_dir", "stdout", "batch_host", "comment", "tasks", "tasks_per_node")
    return {k: getattr(rest_job, k) for k in keys} == {k: getattr(cli_job, k) for k in keys}


def test_nodes_and_version(rest, cli):
    assert rest.version() == cli.version()               # slurmrestd's meta, sinfo --version
    assert rest.nodes() == cli.nodes()
    assert [n.state for n in rest.nodes()] == ["idle", "idle"]


def test_job_lifecycle_through_slurmrestd(rest, cli, rest_cluster, monkeypatch):
    monkeypatch.chdir(rest_cluster.shared_dir)
    a = rest.submit(script(rest_cluster, "rest-a"), ["--nodes=2", "--comment=via rest"])
    ja = wait_for("job a running", lambda: (j := rest.job(a)).is_running and j)
    assert ja.nodes == ("node1", "node2") and ja.node_count == 2 and ja.requeue
    assert ja.comment == "via rest" and ja.work_dir == str(rest_cluster.shared_dir)
    assert same_view(ja, cli.job(a))
    assert {j.job_id for j in rest.jobs()} == {j.job_id for j in cli.jobs()}
    assert rest.allocation(a) == ["node1", "node2"] == cli.allocation(a)

    # Both nodes busy: a second job pends. Hold it, change its nodes, release it.
    b = rest.submit(script(rest_cluster, "rest-b"), ["-N", "2"])
    assert wait_for("job b pending", lambda: rest.job(b).is_pending)
    rest.hold(b)
    assert cli.job(b).reason == "JobHeldAdmin" == rest.job(b).reason
    rest.update_job(b, exclude=["node2"], num_nodes=(1, 1), comment="shrunk over rest")
    jb = cli.job(b)
    assert (jb.excluded_nodes, jb.node_count, jb.comment) == (("node2",), 1, "shrunk over rest")
    assert same_view(rest.job(b), jb)
    rest.release(b)
    rest.update_job(b, start_now=True)
    assert cli.job(b).reason != "JobHeldAdmin"

    # Running jobs refuse node-list updates, as scontrol does.
    with pytest.raises(JobNotPendingError):
        rest.update_job(a, exclude=["node2"])
    with pytest.raises(JobNotPendingError):
        cli.update_job(a, exclude=["node2"])

    # Cancel a: b starts on node1 only (node2 excluded).
    rest.kill_job(a)
    assert wait_for("job a cancelled", lambda: cli.job(a).state == "CANCELLED")
    jb = wait_for("job b running", lambda: (j := rest.job(b)).is_running and j)
    assert jb.nodes == ("node1",) and same_view(jb, cli.job(b))
    rest.cancel(b)
    assert wait_for("job b cancelled", lambda: cli.job(b).state == "CANCELLED")
    assert rest.job(b).state == "CANCELLED"


def test_unknown_job_is_the_same_error(rest, cli):
    with pytest.raises(InvalidJobError):
        rest.job(999999)
    with pytest.raises(InvalidJobError):
        cli.read_job(999999)
    with pytest.raises(InvalidJobError):
        rest.kill_job(999999)


def test_drain_and_resume(rest, cli):
    """v0.0.38 has no node write: refused with a typed error and nothing changed; with the
    commands' fallback it drains and resumes, and slurmrestd's own view shows it."""
    with pytest.raises(RestUnsupportedError, match="^drain: .*slurm.backend: cli"):
        rest.drain(["node2"], "rest test")
    assert not cli.node("node2").is_drained
    both = RestSlurmClient(rest.transport, timeout=rest.timeout, fallback=cli)
    both.drain(["node2"], "rest test")
    n2 = rest.node("node2")
    assert n2.is_drained and n2.reason == "rest test" and n2 == cli.node("node2")
    both.resume(["node2"])
    assert wait_for("node2 idle", lambda: not rest.node("node2").is_drained)
    assert rest.node("node2") == cli.node("node2")


def test_tokens_are_checked(rest, rest_cluster):
    url = rest_cluster.status()["rest"]["url"]
    bad = RestSlurmClient(HttpTransport(url, "root", TokenSource(value="not-a-token")))
    with pytest.raises(RestAuthError, match="invalid or expired token"):
        bad.jobs()
    out = subprocess.run(rest_cluster.exec_argv(["scontrol", "token", "lifespan=1"]),
                         env=rest_cluster.env(), capture_output=True, text=True, timeout=20,
                         check=True).stdout
    short = RestSlurmClient(HttpTransport(url, "root", TokenSource(
        value=out.strip().split("=", 1)[1])))
    assert len(short.nodes()) == 2                     # valid for a second
    time.sleep(2.1)
    with pytest.raises(RestAuthError, match="expired at"):
        short.nodes()
    # slurmctld itself refuses it too (the client's own check bypassed)
    late = RestSlurmClient(HttpTransport(url, "root", replace_clock(short.transport.tokens)))
    with pytest.raises(RestAuthError, match="invalid or expired token"):
        late.nodes()


def replace_clock(tokens: TokenSource) -> TokenSource:
    return TokenSource(value=tokens.value, clock=lambda: 0.0)


def test_key_and_socket_are_private(rest_cluster):
    st = rest_cluster.status()["rest"]
    key = rest_cluster.layout.etc_dir / "jwt_hs256.key"
    assert oct(key.stat().st_mode & 0o777) == "0o400"
    sock_dir = os.path.dirname(st["url"].removeprefix("unix:"))
    assert oct(os.stat(sock_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(st["token_file"]).st_mode & 0o777) == "0o600"
    conf = rest_cluster.slurm_conf_path.read_text()
    assert "AuthAltTypes=auth/jwt" in conf and f"jwt_key={key}" in conf
