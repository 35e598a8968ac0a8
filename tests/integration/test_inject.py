"""slurmft inject on the real local cluster: a 2-node job whose tasks run a stand-in named
train.py (in the cluster's shared dir: nodes have a private /tmp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.core.selfcmd import slurmft_argv
from slurmft.recovery.rescheduler import job_context
from slurmft.recovery.state import StateStore
from slurmft.render import render
from slurmft.testbed.demo import mpirun_args
from slurmft.testbed.inject import list_procs_argv, parse_procs
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration


def node_procs(cluster, node: str, pattern: str) -> list[int]:
    """Matching processes ON the node (its netns), looked up without SSH."""
    cp = subprocess.run(cluster.node_exec_argv(node, list_procs_argv(pattern)),
                        capture_output=True, text=True, timeout=10)
    return [p.pid for p in parse_procs(cp.stdout)]


def reachable(cluster_run, node: str) -> bool:
    return cluster_run(["ping", "-c1", "-W1", node], timeout=10).returncode == 0


def job_state(cluster_run, jid: int) -> str:
    out = cluster_run(["scontrol", "show", "job", str(jid)]).stdout
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "GONE"


def inject_local(cluster, *args: str) -> subprocess.CompletedProcess:
    """`slurmft inject ... --cluster NAME` from the root namespace (nsenter, Cluster.fault)."""
    return subprocess.run([sys.executable, "-m", "slurmft", "inject", *args, "--cluster",
                           cluster.name], capture_output=True, text=True, timeout=60)


def inject_ssh(cluster_run, *args: str) -> subprocess.CompletedProcess:
    """`slurmft inject ...` as at a real site: inside the cluster, over SSH."""
    return cluster_run([sys.executable, "-m", "slurmft", "inject", *args], timeout=60)


@pytest.fixture
def standin(cluster, cluster_run):
    """submit(n) -> (job id, nodes, pattern): a job whose task on every node is train.py."""
    work = Path(cluster.shared_dir) / "inject"
    work.mkdir(exist_ok=True)
    train = work / "train.py"
    train.write_text("while :; do sleep 0.5; done\n")
    jobs: list[int] = []
    downs: list[str] = []

    def submit(n: int = 2):
        jid = int(cluster_run(["sbatch", "--parsable", "--no-requeue", f"-N{n}", "-J", "inject",
                               f"--chdir={work}", f"--output={work}/inject-%j.out",
                               f"--wrap=srun sh {train}"], check=True).stdout.split(";")[0])
        jobs.append(jid)
        nodes = wait_for(lambda: _nodes_if_running(cluster, cluster_run, jid, n, str(train)),
                         30, f"job {jid} running train.py on {n} nodes")
        return jid, nodes, str(train)

    submit.downs = downs  # type: ignore[attr-defined]
    yield submit
    for node in downs:
        cluster.fault(node, "link-up")
    for jid in jobs:
        cluster_run(["scancel", str(jid)])
    wait_for(lambda: all(job_state(cluster_run, j) not in ("RUNNING", "PENDING", "COMPLETING")
                         for j in jobs), 30, "test jobs to end")


def _nodes_if_running(cluster, cluster_run, jid, n, pattern):
    out = cluster_run(["squeue", "-h", "-j", str(jid), "-o", "%T %N"]).stdout.split()
    if len(out) != 2 or out[0] != "RUNNING":
        return None
    nodes = cluster_run(["scontrol", "show", "hostnames", out[1]]).stdout.split()
    if len(nodes) == n and all(node_procs(cluster, x, pattern) for x in nodes):
        return nodes
    return None


def test_kill_rank_over_ssh_and_by_cluster(cluster, cluster_run, standin):
    jid, nodes, pattern = standin(2)
    before = {n: node_procs(cluster, n, pattern) for n in nodes}
    # real-site path: Slurm client + SSH (probe settings from the cluster's env)
    cp = inject_ssh(cluster_run, "kill-rank", "--job", str(jid), "--node", nodes[1],
                    "--match", pattern, "--seed", "3", "--json")
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    assert res["node"] == nodes[1] and res["pid"] in before[nodes[1]]
    assert res["pid"] not in node_procs(cluster, nodes[1], pattern)
    audit = [a for a in StateStore(cluster.layout.slurmft_state_dir).audit_lines()
             if a.get("event") == "inject" and a["job"] == jid]
    assert audit[-1]["action"] == "kill-rank" and audit[-1]["pid"] == res["pid"]

    # --cluster path on a fresh job: nsenter into the node, random node from the seed
    jid, nodes, pattern = standin(2)
    before = {n: node_procs(cluster, n, pattern) for n in nodes}
    cp = inject_local(cluster, "kill-rank", "--job", str(jid), "--seed", "1", "--json")
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    assert res["pid"] in before[res["node"]]
    assert res["pid"] not in node_procs(cluster, res["node"], pattern)


def test_link_down_and_up(cluster, cluster_run, standin):
    jid, nodes, _ = standin(2)
    node = nodes[0]
    standin.downs.append(node)
    cp = inject_local(cluster, "link-down", "--job", str(jid), "--node", node)
    assert cp.returncode == 0, cp.stderr
    assert not reachable(cluster_run, node)
    cp = inject_local(cluster, "link-up", "--job", str(jid), "--node", node)
    assert cp.returncode == 0, cp.stderr
    standin.downs.remove(node)
    wait_for(lambda: reachable(cluster_run, node), 10, f"{node} reachable again")

    # over SSH the link comes back by itself after --duration
    cp = inject_ssh(cluster_run, "link-down", "--job", str(jid), "--node", node, "--iface",
                    "eth0", "--duration", "2")
    assert cp.returncode == 0, cp.stderr
    wait_for(lambda: not reachable(cluster_run, node), 5, f"{node} unreachable")
    wait_for(lambda: reachable(cluster_run, node), 15, f"{node} back after --duration")


def _slurmd(cluster) -> dict[str, dict]:
    return {n["name"]: n["daemons"]["slurmd"] for n in cluster.status()["nodes"]}


def test_kill_slurmd_over_ssh_hits_only_that_node(cluster, cluster_run, standin):
    """pkill runs in the node's netns: the other nodes' slurmd (same PID namespace!) live."""
    jid, nodes, _ = standin(2)
    before = _slurmd(cluster)
    try:
        cp = inject_ssh(cluster_run, "kill-slurmd", "--job", str(jid), "--node", nodes[1])
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == f"killed slurmd on {nodes[1]} (SIGKILL)"
        after = wait_for(lambda: (lambda d: d if d[nodes[1]]["state"] != "running" else None)(
            _slurmd(cluster)), 5, f"slurmd on {nodes[1]} gone")
        assert all(after[n] == before[n] for n in before if n != nodes[1])
    finally:
        cluster.fault(nodes[1], "restart-slurmd")


def test_limit_memory_works_or_says_why(cluster, cluster_run, standin):
    jid, nodes, pattern = standin(2)
    cp = inject_local(cluster, "limit-memory", "--job", str(jid), "--node", nodes[0], "--mb",
                      "64", "--match", pattern, "--json")
    if cp.returncode == 0:        # a machine with a writable cgroup v2 memory controller
        res = json.loads(cp.stdout)
        cg = Path(res["extra"]["cgroup"])
        assert (cg / "memory.max").read_text().strip() == str(64 * 2**20)
        undo = inject_local(cluster, "limit-memory", "--job", str(jid), "--node", nodes[0],
                            "--undo")
        assert undo.returncode == 0, undo.stderr
        assert not cg.exists()
    else:
        assert cp.returncode == 1
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"slurmft: limit-memory on {nodes[0]} "
                                                       "impossible: ")
        assert "cgroup" in lines[0]


def test_mask_gpu_reaches_every_rank_of_the_restarted_job(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "inject-gpu"
    work.mkdir(exist_ok=True)
    ckpt = work / "ckpt"
    (work / "ckpt").mkdir(exist_ok=True)
    (ckpt / ".slurmft-restart.env").unlink(missing_ok=True)
    show = work / "show.sh"
    show.write_text('echo "rank on $(hostname) sees ${CUDA_VISIBLE_DEVICES-unset}"\n')
    out = work / "job.out"
    out.unlink(missing_ok=True)
    cfg = RescheduleConfig(state_dir=str(cluster.layout.slurmft_state_dir),
                           mpirun_args=mpirun_args(cluster))
    ctx = job_context(cfg, train_cmd=["sh", str(show)], checkpoint_dir=str(ckpt), nodes=2,
                      job_name="inject-gpu", work_dir=str(work), output=str(out),
                      slurmft_cmd=slurmft_argv(),
                      reschedule_log=str(work / "r.log"))
    (work / "job.sh").write_text(render("job.sh.j2", ctx))
    jid = int(cluster_run(["sbatch", "--parsable", str(work / "job.sh")],
                          check=True).stdout.split(";")[0])
    try:
        wait_for(lambda: job_state(cluster_run, jid) == "COMPLETED", 40, f"job {jid} to finish")
        cp = inject_ssh(cluster_run, "mask-gpu", "--job", str(jid), "--gpu", "1", "--gpus",
                        "4", "--checkpoint-dir", str(ckpt))
        assert cp.returncode == 0, cp.stderr
        cluster_run(["scontrol", "requeue", str(jid)], check=True)
        # 22.05 refuses a job update right after a requeue ("try again in a bit") and the job
        # then waits out its requeue delay: send StartTime=now until Slurm takes it (or the
        # job no longer pends)
        wait_for(lambda: cluster_run(["scontrol", "update", f"jobid={jid}",
                                      "StartTime=now"]).returncode == 0
                 or job_state(cluster_run, jid) != "PENDING",
                 20, f"Slurm to take StartTime=now for job {jid}")
        wait_for(lambda: "Restarts=1" in cluster_run(["scontrol", "show", "job", str(jid)]).stdout
                 and job_state(cluster_run, jid) == "COMPLETED", 40, f"job {jid} to rerun")
    finally:
        cluster_run(["scancel", str(jid)])
    lines = [x for x in out.read_text().splitlines() if x.startswith("rank on ")]
    assert len(lines) == 4, out.read_text()
    assert all(x.endswith("sees unset") for x in lines[:2])
    assert all(x.endswith("sees 0,2,3") for x in lines[2:])
    assert len({x.split()[2] for x in lines[2:]}) == 2, lines
