"""The real local cluster: Slurm, SSH, Open MPI across namespaces, faults, clean teardown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import pytest

from slurmft.core.errors import UsageError
from slurmft.testbed import Cluster
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration
MPI_HELLO = Path(str(files("slurmft") / "examples" / "mpi_hello.py"))   # package data
PYTHON = str(Path(sys.executable).absolute())     # the venv's python, by absolute path


def sinfo_states(cluster_run) -> dict[str, str]:
    cp = cluster_run(["sinfo", "-h", "-N", "-o", "%N %T"])
    assert cp.returncode == 0, cp.stderr
    return dict(line.split() for line in cp.stdout.splitlines())


def ssh_argv(cluster, node, *cmd, timeout=2):
    return ["ssh", "-F", str(cluster.ssh_config_path), "-o", f"ConnectTimeout={timeout}", node,
            *cmd]


def test_four_nodes_idle(cluster, cluster_run):
    assert sinfo_states(cluster_run) == {f"node{i}": "idle" for i in range(1, 5)}
    cp = cluster_run(["sinfo", "-h", "-o", "%P %a"])
    assert cp.stdout.split() == ["main*", "up"]


def test_network_is_isolated(cluster, cluster_run):
    """Nothing of the cluster in the root netns but an unreachable route; no default routes."""
    root_routes = subprocess.run(["ip", "route", "show", cluster.subnet], capture_output=True,
                                 text=True).stdout
    assert root_routes.split()[:2] == ["unreachable", cluster.subnet]
    root_links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True,
                                           text=True).stdout)
    ours = {"br0"} | {f"v{i}" for i in range(1, len(cluster.nodes) + 1)}
    assert not ours & {link["ifname"] for link in root_links}
    prefix = cluster.subnet.rsplit(".", 1)[0] + "."
    assert not [a for link in root_links for a in link.get("addr_info", [])
                if a.get("local", "").startswith(prefix)]
    for node in ["ctl", *cluster.nodes]:
        routes = subprocess.run(["ip", "-n", cluster.netns(node), "route", "show"],
                                capture_output=True, text=True, check=True).stdout
        assert "default" not in routes and cluster.subnet in routes
    # From the root namespace a node address fails locally (no packet leaves the machine).
    cp = subprocess.run(["ping", "-c1", "-W1", cluster.ip("node1")], capture_output=True,
                        text=True)
    assert cp.returncode != 0
    # Inside, the bridge reaches every node.
    for node in cluster.nodes:
        assert cluster_run(["ping", "-c1", "-W1", node]).returncode == 0


def test_up_again_says_already_up(cluster):
    res = cluster.up(nodes=4)
    assert res.already_up and res.subnet == cluster.subnet


def test_status_reports_daemons_and_slurm_view(cluster):
    cp = subprocess.run([PYTHON, "-m", "slurmft", "cluster", "status", "--json", "--name",
                         cluster.name], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    st = json.loads(cp.stdout)
    assert st["up"] and st["subnet"] == cluster.subnet
    assert st["controller"]["daemons"]["slurmctld"]["state"] == "running"
    for node in st["nodes"]:
        assert node["slurm_state"] == "idle" and node["link"] == "up"
        assert {d["state"] for d in node["daemons"].values()} == {"running"}
        assert node["address"] == cluster.ip(node["name"])


def test_exec_cli_exit_code_hosts_and_env(cluster):
    base = [PYTHON, "-m", "slurmft", "cluster", "exec", "--name", cluster.name, "--"]
    cp = subprocess.run(base + ["sh", "-c", 'getent hosts node3; echo "$SLURM_CONF"; exit 7'],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 7
    lines = cp.stdout.splitlines()
    assert lines[0].split() == [cluster.ip("node3"), "node3"]
    assert lines[1] == str(cluster.slurm_conf_path)
    # The real /etc/hosts is untouched.
    assert "node3" not in Path("/etc/hosts").read_text()


def test_sbatch_srun_hostname_on_four_nodes(cluster, cluster_run):
    shared = cluster.shared_dir
    script = shared / "hostname.sh"
    script.write_text("#!/bin/sh\nsrun hostname\n")
    out = shared / "hostname.out"
    cp = cluster_run(["sbatch", "--wait", "-N4", f"--chdir={shared}", f"--output={out}",
                      "--parsable", str(script)], timeout=90)
    assert cp.returncode == 0, cp.stderr
    assert sorted(out.read_text().split()) == ["node1", "node2", "node3", "node4"]


def test_mpirun_allreduce_across_nodes(cluster, cluster_run):
    hostfile = cluster.shared_dir / "hostfile.mpi"
    hostfile.write_text("".join(f"{n} slots=1\n" for n in cluster.nodes))
    cp = cluster_run(["mpirun", "--allow-run-as-root", "-np", "4", "--hostfile", hostfile,
                      "--mca", "plm_rsh_args", f"-F {cluster.ssh_config_path}",
                      "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", cluster.subnet,
                      "--mca", "oob_tcp_if_include", cluster.subnet,
                      PYTHON, MPI_HELLO], timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "allreduce sum=10 expected=10 OK" in cp.stdout
    hosts = {part.split("=")[1] for line in cp.stdout.splitlines() if line.startswith("rank=")
             for part in line.split() if part.startswith("host=")}
    assert hosts == {"node1", "node2", "node3", "node4"}


def test_link_down_then_up(cluster, cluster_run):
    ping = ["ping", "-c1", "-W1", "node3"]
    assert cluster_run(ping).returncode == 0
    try:
        cluster.fault("node3", "link-down")
        assert cluster_run(ping).returncode != 0
        assert cluster_run(["ping", "-c1", "-W1", "node2"]).returncode == 0
    finally:
        cluster.fault("node3", "link-up")
    wait_for(lambda: cluster_run(ping).returncode == 0, 10, "node3 to answer ping again")


def test_freeze_sshd_ping_answers_ssh_hangs(cluster, cluster_run):
    assert cluster_run(ssh_argv(cluster, "node2", "hostname")).stdout.strip() == "node2"
    try:
        cluster.fault("node2", "freeze-sshd")
        assert cluster_run(["ping", "-c1", "-W1", "node2"]).returncode == 0
        t0 = time.monotonic()
        cp = cluster_run(ssh_argv(cluster, "node2", "true", timeout=2), timeout=20)
        assert cp.returncode == 255
        assert "timed out" in cp.stderr
        assert time.monotonic() - t0 >= 1.5      # it hung until the timeout, not refused
    finally:
        cluster.fault("node2", "thaw-sshd")
    assert cluster_run(ssh_argv(cluster, "node2", "hostname")).stdout.strip() == "node2"


def test_stop_and_start_sshd(cluster, cluster_run):
    try:
        cluster.fault("node4", "stop-sshd")
        cp = cluster_run(ssh_argv(cluster, "node4", "true"))
        assert cp.returncode == 255 and "refused" in cp.stderr
        assert cluster_run(["ping", "-c1", "-W1", "node4"]).returncode == 0
    finally:
        cluster.fault("node4", "start-sshd")
    assert cluster_run(ssh_argv(cluster, "node4", "hostname")).stdout.strip() == "node4"


def test_kill_job_procs_kills_only_that_nodes_tasks(cluster, cluster_run):
    shared = cluster.shared_dir
    script = shared / "sleep.sh"
    script.write_text("#!/bin/sh\nsrun sleep 300\n")
    out = shared / "sleep.out"
    cp = cluster_run(["sbatch", "-N4", "--no-requeue", f"--chdir={shared}", f"--output={out}",
                      "--parsable", str(script)])
    assert cp.returncode == 0, cp.stderr
    job = cp.stdout.strip()
    try:
        def sleeps(node):
            return [p for p in cluster.job_pids(node) if _comm(p) == "sleep"]
        wait_for(lambda: sleeps("node3") and sleeps("node2"), 30, "the step's tasks")
        pids, others = sleeps("node3"), sleeps("node2")
        assert len(pids) == 1 and not set(others) & set(pids)
        msg = cluster.fault("node3", "kill-job-procs")
        assert msg.startswith("killed ") and str(pids[0]) in msg.split(":")[1].split()
        assert all(Path(f"/proc/{p}").exists() for p in others)   # node2's task lives on
        wait_for(lambda: "node3: task 2: Killed" in out.read_text(), 30, "srun to see the kill")
        # The daemons of node3 are untouched.
        st = {n["name"]: n for n in cluster.status()["nodes"]}
        assert st["node3"]["daemons"]["slurmd"]["state"] == "running"
    finally:
        cluster_run(["scancel", job])
    wait_for(lambda: set(sinfo_states(cluster_run).values()) == {"idle"}, 30,
             "all nodes idle again")


def test_kill_and_restart_slurmd(cluster, cluster_run):
    before = cluster.status()
    old = {n["name"]: n for n in before["nodes"]}["node4"]["daemons"]["slurmd"]["pid"]
    cluster.fault("node4", "kill-slurmd")
    st = {n["name"]: n for n in cluster.status()["nodes"]}["node4"]
    assert st["daemons"]["slurmd"]["state"] == "dead"
    cluster.fault("node4", "restart-slurmd")
    st = {n["name"]: n for n in cluster.status()["nodes"]}["node4"]
    assert st["daemons"]["slurmd"]["state"] == "running" and st["daemons"]["slurmd"]["pid"] != old
    wait_for(lambda: sinfo_states(cluster_run).get("node4") == "idle", 30, "node4 idle",
             lambda: cluster_run(["sinfo", "-N", "-o", "%N %T %E"]).stdout)


def test_subnet_clash_is_rejected_and_leaves_nothing(cluster):
    other = Cluster(f"sft-c{os.getpid()}")
    with pytest.raises(UsageError, match="clashes"):
        other.up(nodes=2, subnet=cluster.subnet)
    assert not other.state_dir.exists()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _mountinfo(pid="self") -> str:
    return Path(f"/proc/{pid}/mountinfo").read_text()


def _all_mountinfo() -> str:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((p / "mountinfo").read_text())
            except OSError:
                continue
    return "".join(out)


def test_second_cluster_coexists_and_down_leaves_nothing(cluster, cluster_run):
    second = Cluster(f"sft-d{os.getpid()}")
    res = second.up(nodes=2)
    try:
        assert res.subnet != cluster.subnet
        netns = [second.netns("ctl"), second.netns("node1"), second.netns("node2")]
        assert set(netns) <= set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True).stdout.split())
        cp = subprocess.run(second.exec_argv(["sinfo", "-h", "-N", "-o", "%N %T"]),
                            env=second.env(), capture_output=True, text=True, timeout=30)
        assert cp.stdout.split() == ["node1", "idle", "node2", "idle"]
        pids = list(res.started.values())
        state_dir = str(second.state_dir)
        # Positive control: the nodes' private mount namespaces bind the cluster's hosts file.
        assert state_dir in _mountinfo(res.started["node1:holder"])
        assert state_dir not in _mountinfo("self")     # ...and nothing in ours
    finally:
        removed = second.down()
    assert any("namespaces" in r for r in removed)
    ns_now = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in ns_now.split() for ns in netns)
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    assert res.subnet not in routes
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():   # only a not-yet-reaped zombie may remain for a moment
            assert stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    assert state_dir not in _all_mountinfo()      # no process anywhere still has our mounts
    assert not any(ns in _mountinfo("self") for ns in netns)
    assert not Path(state_dir).exists()
    assert second.down() == []          # safe to call twice
    # The first cluster is unaffected.
    assert sinfo_states(cluster_run) == {f"node{i}": "idle" for i in range(1, 5)}


def test_failed_up_tears_down_what_it_built(monkeypatch):
    from slurmft.core.errors import ClusterError
    from slurmft.testbed.layout import Layout
    monkeypatch.setattr(Layout, "slurm_conf_text", lambda self: "NoSuchOption=1\n")
    broken = Cluster(f"sft-f{os.getpid()}")
    with pytest.raises(ClusterError, match=r"(slurmctld|slurmd) exited.*see \S+\.log: .*"
                                           r"unrecognized key: NoSuchOption") as info:
        broken.up(nodes=2, timeout=15)
    # The logs survive the teardown, at the path the message names.
    logfile = Path(str(info.value).split("see ", 1)[1].split(": ", 1)[0])
    assert logfile.is_file() and "NoSuchOption" in logfile.read_text()
    shutil.rmtree(logfile.parent)
    ns_now = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"slurmft-{broken.name}-" not in ns_now
    assert not broken.state_dir.exists()
    assert str(broken.state_dir) not in _all_mountinfo()
