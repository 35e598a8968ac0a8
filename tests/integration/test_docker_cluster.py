"""The docker backend (slurmft.testbed.docker) on a real Docker daemon.

A session fixture starts a private dockerd (own socket and data root, no bridge, no iptables,
no IP forwarding), builds the node image (cached: skipped when an image with the same content
hash exists) and brings up a 4-node cluster; teardown removes the containers, network and
volume, keeps the images as the cache, and stops the daemon. If dockerd cannot START here
(not installed, missing kernel feature), every test is skipped with the reason; a failing image
build or `up` fails the tests.

Run: ``make docker-test`` (root), or ``pytest -m docker tests/integration/test_docker_cluster.py``.
The Slurm release is $SLURMFT_DOCKER_TEST_SLURM (22.05, the default; 24.11; 26.05: the image of
that Debian suite); ``make test-slurm-matrix`` runs this file once per release.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import filelock
import pytest

from slurmft.testbed.docker import (
    DockerCluster,
    DockerUnavailableError,
    PrivateDockerd,
)
from tests.integration.waiting import wait_for

# 900 s: the first test also pays for the session fixture (a cold image build is ~1-2 min).
pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(900)]

NAME = os.environ.get("SLURMFT_DOCKER_TEST_CLUSTER", "sft-dtest")
RELEASE = os.environ.get("SLURMFT_DOCKER_TEST_SLURM", "22.05")
ALL = ["node1", "node2", "node3", "node4"]


@pytest.fixture(scope="session")
def dcluster():
    if os.geteuid() != 0:
        pytest.skip("the docker cluster tests start their own dockerd: run as root")
    missing = [b for b in ("dockerd", "docker") if not shutil.which(b)]
    if not shutil.which("docker-compose") and (
            not shutil.which("docker") or subprocess.run(
                ["docker", "compose", "version"], capture_output=True).returncode != 0):
        missing.append("docker-compose")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install docker.io "
                    "docker-compose debootstrap")
    daemon = PrivateDockerd()
    # One session at a time on the private daemon: the owner stops it at the end.
    daemon.data_root.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(daemon.data_root.parent / ".dockerd-session.lock"))
    try:
        lock.acquire(timeout=600)
    except filelock.Timeout:
        pytest.skip("another docker test session held the private dockerd for 10 minutes")
    try:
        try:
            daemon.start()
        except DockerUnavailableError as exc:
            pytest.skip(f"cannot start dockerd here: {exc}")
        c = DockerCluster(NAME, docker_host=daemon.host)
        try:
            c.down()                           # leftovers of a killed run
            res = c.up(nodes=4, slurm_release=RELEASE)
            print(f"\ndocker cluster up (Slurm {RELEASE}): {c.state.timings} "
                  f"total {res.seconds}s\nSLURM_MATRIX_VERSION={c.slurm_version()}")
            yield c
        finally:
            try:
                c.down()                       # images stay: they are the build cache
            finally:
                daemon.stop()
    finally:
        lock.release()


def run(c: DockerCluster, *argv: str, timeout: float = 60.0, check: bool = True):
    cp = c.run(list(argv), timeout=timeout)
    if check and cp.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed rc={cp.returncode}: {cp.stderr.strip()[-500:]}")
    return cp


def job_fields(c: DockerCluster, job_id: str) -> dict[str, str]:
    out = run(c, "scontrol", "show", "job", "-o", job_id).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def probe(c: DockerCluster, hostlist: str) -> dict[str, str]:
    cp = run(c, "slurmft", "probe", hostlist, "--json", check=False, timeout=60)
    if cp.returncode not in (0, 10):
        pytest.fail(f"slurmft probe rc={cp.returncode}: {cp.stderr.strip()[-500:]}")
    return {h["host"]: h["state"] for h in json.loads(cp.stdout)["hosts"]}


def heal(c: DockerCluster, node: str) -> None:
    """Link up, daemons thawed, node resumed; wait until Slurm sees it idle."""
    c.fault(node, "link-up")
    c.run(["scontrol", "update", f"nodename={node}", "state=resume"])
    wait_for(lambda: c.slurm_view().get(node) == "idle", 60, f"{node} idle again")


def test_all_nodes_idle_on_an_internal_network(dcluster):
    assert dcluster.slurm_view() == {n: "idle" for n in ALL}
    st = dcluster.status()
    assert st["up"] and st["backend"] == "docker"
    assert st["slurm_release"] == RELEASE and st["slurm_version"].startswith(RELEASE + ".")
    assert [n["container"] for n in st["nodes"]] == ["running"] * 4
    assert {"munged", "sshd", "slurmd"} <= set(st["nodes"][0]["daemons"])
    assert "slurmctld" in st["controller"]["daemons"]
    net = dcluster.docker.run("network", "inspect", "--format", "{{.Internal}}",
                              f"{dcluster.state.project}_cluster").stdout.strip()
    assert net == "true"
    # No way out: no default route in any container.
    for host in ("ctl", "node1"):
        routes = dcluster.docker.run("exec", dcluster.container(host), "ip", "route").stdout
        assert "default" not in routes, routes
    # The bridge holds no IPv4 address: not even this machine answers from the cluster.
    gateway = str(dcluster.layout.subnet.broadcast_address - 1)
    assert run(dcluster, "ping", "-c1", "-W1", gateway, check=False).returncode != 0
    conf = run(dcluster, "scontrol", "show", "config").stdout
    assert "SlurmdTimeout           = 10 sec" in conf


def test_multi_node_job_and_mpi_over_ssh(dcluster):
    out = run(dcluster, "srun", "-N4", "hostname").stdout.split()
    assert sorted(out) == ALL
    # The shared volume: written on node1, read on node4.
    shared = str(dcluster.shared_dir)
    run(dcluster, "srun", "-N1", "-w", "node1", "sh", "-c", f"echo from-node1 > {shared}/probe.txt")
    assert run(dcluster, "srun", "-N1", "-w", "node4", "cat", f"{shared}/probe.txt").stdout.strip() \
        == "from-node1"
    # Open MPI across the containers over SSH (the cluster's key and known_hosts).
    cp = run(dcluster, "mpirun", "--allow-run-as-root", "-np", "4",
             "--host", ",".join(ALL), "--mca", "btl", "self,tcp", "hostname", timeout=60)
    assert sorted(cp.stdout.split()) == ALL


def test_link_down_probe_says_unreachable(dcluster):
    try:
        dcluster.fault("node3", "link-down")
        assert dcluster.status()["nodes"][2]["link"] == "down"
        assert run(dcluster, "ping", "-c1", "-W1", "node3", check=False).returncode != 0
        health = probe(dcluster, "node[1-4]")
        assert health["node3"] == "UNREACHABLE"
        assert [health[n] for n in ("node1", "node2", "node4")] == ["HEALTHY"] * 3
    finally:
        heal(dcluster, "node3")
    assert probe(dcluster, "node3") == {"node3": "HEALTHY"}


def test_frozen_sshd_is_unresponsive(dcluster):
    try:
        assert "froze" in dcluster.fault("node2", "freeze-sshd")
        health = probe(dcluster, "node2")
        assert health == {"node2": "UNRESPONSIVE"}
    finally:
        dcluster.fault("node2", "thaw-sshd")
    assert probe(dcluster, "node2") == {"node2": "HEALTHY"}


def test_stopped_sshd_and_restarted_slurmd(dcluster):
    try:
        assert dcluster.fault("node2", "stop-sshd") == "stopped sshd on node2"
        assert "sshd" not in dcluster.status()["nodes"][1]["daemons"]
        assert probe(dcluster, "node2") == {"node2": "UNRESPONSIVE"}
    finally:
        dcluster.fault("node2", "start-sshd")
    assert probe(dcluster, "node2") == {"node2": "HEALTHY"}
    before = dcluster.status()["nodes"][1]["daemons"]["slurmd"]["pid"]
    dcluster.fault("node2", "restart-slurmd")
    after = dcluster.status()["nodes"][1]["daemons"]["slurmd"]["pid"]
    assert after != before
    assert run(dcluster, "srun", "-N1", "-w", "node2", "hostname").stdout.strip() == "node2"


def test_reschedule_brings_job_back_on_healthy_nodes(dcluster):
    jid = run(dcluster, "sbatch", "--parsable", "--requeue", "-N4", "-o", "/dev/null",
              "--wrap", "srun sleep 600").stdout.strip().split(";")[0]
    try:
        wait_for(lambda: job_fields(dcluster, jid).get("JobState") == "RUNNING", 30,
                 f"job {jid} running")
        dcluster.fault("node4", "link-down")
        cp = run(dcluster, "slurmft", "reschedule", jid, "--json", timeout=120, check=False)
        assert cp.returncode == 0, cp.stderr
        report = json.loads(cp.stdout)
        assert "node4" in json.dumps(report)

        def back_on_three():
            f = job_fields(dcluster, jid)
            if f.get("JobState") != "RUNNING":
                return None
            nodes = run(dcluster, "scontrol", "show", "hostnames", f["NodeList"]).stdout.split()
            return nodes if len(nodes) == 3 else None

        nodes = wait_for(back_on_three, 60, f"job {jid} running on 3 nodes")
        assert sorted(nodes) == ["node1", "node2", "node3"]
        assert "node4" in job_fields(dcluster, jid).get("ExcNodeList", "")
    finally:
        dcluster.run(["scancel", jid])
        heal(dcluster, "node4")


def test_node_down_and_up_restarts_the_container(dcluster):
    try:
        dcluster.fault("node1", "node-down")
        assert dcluster.status()["nodes"][0]["container"] == "exited"
        assert probe(dcluster, "node1") == {"node1": "UNREACHABLE"}
    finally:
        dcluster.fault("node1", "node-up")
    # The entrypoint runs again: munged, sshd and slurmd come back and the node registers.
    wait_for(lambda: dcluster.slurm_view().get("node1") == "idle", 60, "node1 idle after restart")
    assert probe(dcluster, "node1") == {"node1": "HEALTHY"}


def test_reschedule_dry_run_changes_nothing(dcluster):
    jid = run(dcluster, "sbatch", "--parsable", "--requeue", "-N4", "-o", "/dev/null",
              "--wrap", "srun sleep 600").stdout.strip().split(";")[0]
    try:
        wait_for(lambda: job_fields(dcluster, jid).get("JobState") == "RUNNING", 30,
                 f"job {jid} running")
        dcluster.fault("node2", "link-down")
        cp = run(dcluster, "slurmft", "reschedule", jid, "--dry-run", timeout=120, check=False)
        assert cp.returncode == 0, cp.stderr
        # What it would run, in the argv of this release's adapter; nothing of it ran.
        assert f"scontrol requeuehold {jid}" in cp.stdout
        assert f"scontrol update JobId={jid} ExcNodeList=node2 NumNodes=3-3" in cp.stdout
        f = job_fields(dcluster, jid)
        assert f["JobState"] == "RUNNING" and f["Restarts"] == "0"
        assert f["NodeList"] == "node[1-4]"
        assert not dcluster.slurm_view().get("node2", "").startswith("drain")
    finally:
        dcluster.run(["scancel", jid])
        heal(dcluster, "node2")


def submit_loop(c: DockerCluster, nodes: int = 4) -> str:
    jid = run(c, "sbatch", "--parsable", "--requeue", f"-N{nodes}", "-o", "/dev/null",
              "--wrap", "srun sleep 600").stdout.strip().split(";")[0]
    wait_for(lambda: job_fields(c, jid).get("JobState") == "RUNNING", 30, f"job {jid} running")
    return jid


def running_on(c: DockerCluster, jid: str, count: int) -> list[str] | None:
    f = job_fields(c, jid)
    if f.get("JobState") != "RUNNING":
        return None
    nodes = run(c, "scontrol", "show", "hostnames", f["NodeList"]).stdout.split()
    return nodes if len(nodes) == count else None


def test_watch_recovers_the_job(dcluster):
    """slurmft watch (the cached view: one squeue, sinfo, squeue --steps per cycle) on this
    release: a job that lost node4 runs again on the other three, one action."""
    jid = submit_loop(dcluster)
    pid_file = "/tmp/slurmft-watch.pid"             # inside ctl (its private /tmp)
    proc = subprocess.Popen(
        dcluster.exec_argv(["sh", "-c", f'echo $$ > {pid_file}; exec slurmft watch --job {jid} '
                            '--interval 0.5 --json']),
        env=dcluster.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    nodes = None
    try:
        wait_for(lambda: run(dcluster, "cat", pid_file, check=False).returncode == 0, 20,
                 "watch started")
        time.sleep(1.5)
        dcluster.fault("node4", "link-down")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not nodes:
            nodes = running_on(dcluster, jid, 3)
            time.sleep(0.3)
    finally:
        dcluster.run(["sh", "-c", f'kill -TERM "$(cat {pid_file})"'])
        out, err = proc.communicate(timeout=30)
        dcluster.run(["scancel", jid])
        heal(dcluster, "node4")
    assert nodes, f"watch did not recover job {jid}: {job_fields(dcluster, jid)}\n{err[-2000:]}"
    assert "node4" not in nodes and "Traceback" not in err
    cycles = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    acted = [c for c in cycles if c["reports"]]
    assert len(acted) == 1 and acted[0]["failed"] == {jid: ["node4"]}, acted


def test_epilog_after_slurm_requeued_the_job(dcluster):
    """What EpilogSlurmctld sees after Slurm itself requeued a job off a node it declared
    DOWN: `slurmft epilog` hands the job to a detached reschedule that excludes the node."""
    jid = submit_loop(dcluster)
    try:
        dcluster.fault("node1", "link-down")
        # Slurm's own handling, without waiting SlurmdTimeout: the node is declared DOWN.
        run(dcluster, "scontrol", "update", "nodename=node1", "state=down", "reason=test-dead")
        seen: list[str] = []

        def requeued() -> bool:
            f = job_fields(dcluster, jid)
            state = f"{f.get('JobState')} ({f.get('Reason')})"
            if not seen or seen[-1] != state:
                seen.append(state)
            return f.get("JobState") == "PENDING"
        t0 = time.monotonic()
        wait_for(requeued, 60, "Slurm's requeue", show=lambda: " -> ".join(seen))
        print(f"requeued by Slurm after {time.monotonic() - t0:.1f} s: {' -> '.join(seen)}")
        cp = run(dcluster, "env", f"SLURM_JOB_ID={jid}", "SLURM_JOB_NODELIST=node[1-4]",
                 "SLURM_JOB_EXIT_CODE=0", "SLURM_SCRIPT_CONTEXT=epilog_slurmctld",
                 "slurmft", "epilog", timeout=30, check=False)
        assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
        assert "reschedule started" in cp.stderr
        nodes = wait_for(lambda: running_on(dcluster, jid, 3), 40, "RUNNING on 3 nodes")
        assert "node1" not in nodes
        assert job_fields(dcluster, jid)["ExcNodeList"] == "node1"
    finally:
        dcluster.run(["scancel", jid])
        heal(dcluster, "node1")


def test_unknown_job_id_is_one_line(dcluster):
    cp = run(dcluster, "slurmft", "reschedule", "3999999", check=False)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert cp.stderr.strip().startswith("slurmft: no such job") and "Traceback" not in cp.stderr
