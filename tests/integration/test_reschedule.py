"""``slurmft reschedule`` / ``watch`` / ``epilog`` against the real local Slurm 22.05 cluster.

Every test runs the real CLI inside the controller namespace (``cluster_run``), breaks a
node's link with ``cluster.fault``, and restores the cluster afterwards (link up, node resumed,
jobs cancelled) so other tests can use it.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration

PY = sys.executable
TEST_USER = "slurmft-test"


# Probe by ping (what a link-down fault breaks). SSH probing is covered by the prober's own
# tests; here a login shell on the shared test machine can stall (e.g. root's .bashrc waiting
# on a pyenv lock), which would mark healthy nodes UNRESPONSIVE. SLURMFT_IT_PROBE_SSH=1 turns
# SSH back on.
PROBE_ENV = {"SLURMFT_PROBE_TIMEOUT": "3",
             "SLURMFT_PROBE_SSH": "true" if os.environ.get("SLURMFT_IT_PROBE_SSH") else "false"}


def slurmft(*args: str) -> list[str]:
    return [PY, "-m", "slurmft", *args]


def run_slurmft(cluster_run, *args: str, env: dict | None = None, timeout: float = 90):
    return cluster_run(slurmft(*args), env={**PROBE_ENV, **(env or {})}, timeout=timeout)


def squeue_job(cluster_run, job_id: int) -> dict:
    out = cluster_run(["squeue", "--json"], check=True).stdout
    for j in json.loads(out)["jobs"]:
        if j["job_id"] == job_id:
            return j
    return {}


def show_job(cluster_run, job_id: int) -> dict[str, str]:
    out = cluster_run(["scontrol", "show", "job", "-o", str(job_id)], check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def node_line(cluster_run, node: str) -> str:
    return cluster_run(["sinfo", "-h", "-N", "-n", node, "-o", "%T|%E"], check=True).stdout.strip()


def running_on(cluster_run, job_id: int, count: int) -> list[str] | None:
    j = show_job(cluster_run, job_id)
    if j.get("JobState") != "RUNNING":
        return None
    nodes = cluster_run(["scontrol", "show", "hostnames", j["NodeList"]],
                        check=True).stdout.split()
    return nodes if len(nodes) == count else None


@pytest.fixture
def loop_job(cluster, cluster_run):
    """Submit a requeueable 4-node job running a training stand-in; clean everything up."""
    shared = Path(cluster.shared_dir)
    script = shared / "resched-loop.sh"
    script.write_text("#!/bin/bash\n"
                      'echo "start job=$SLURM_JOB_ID restarts=${SLURM_RESTART_COUNT:-0} '
                      'nodes=$SLURM_JOB_NODELIST"\n'
                      "srun bash -c 'while true; do sleep 1; done'\n")
    script.chmod(0o755)
    jobs: list[int] = []
    broken: list[str] = []

    def submit(n: int = 4, *extra: str, user: str | None = None) -> int:
        out = "/dev/null" if user else f"{shared}/resched-%j.out"
        argv = ["sbatch", "--parsable", f"-N{n}", "-J", "resched-test", f"--output={out}",
                "--open-mode=append", *extra]
        argv += ["--chdir=/tmp", str(script)] if user else [f"--chdir={shared}", str(script)]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        jid = int(cluster_run(argv, check=True).stdout.strip().split(";")[0])
        jobs.append(jid)
        # a job that cannot start at submit (a node still settling after the last test)
        # waits for Slurm's next scheduling pass (up to 60 s here): give it that, and say why
        wait_for(lambda: running_on(cluster_run, jid, n), 90, f"job {jid} RUNNING",
                 show=lambda: ({k: v for k, v in show_job(cluster_run, jid).items()
                                if k in ("JobState", "Reason", "NodeList")},
                               {x: node_line(cluster_run, x) for x in cluster.nodes}))
        return jid

    def fault(node: str) -> None:
        broken.append(node)
        cluster.fault(node, "link-down")

    submit.fault = fault  # type: ignore[attr-defined]
    yield submit
    for node in broken:
        cluster.fault(node, "link-up")
    for jid in jobs:
        cluster_run(["scancel", str(jid)])
    active = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "SUSPENDED")
    wait_for(lambda: all(squeue_job(cluster_run, j).get("job_state", "GONE") not in active
                         for j in jobs), 60, "test jobs to end",
             show=lambda: {j: squeue_job(cluster_run, j).get("job_state") for j in jobs})
    for node in cluster.nodes:
        cluster_run(["scontrol", "update", f"nodename={node}", "state=resume"])
    # "idle", not "idle*": a node Slurm still sees as not responding takes no job
    wait_for(lambda: all(node_line(cluster_run, n).split("|")[0] == "idle" for n in cluster.nodes),
             60, "nodes idle again",
             show=lambda: {n: node_line(cluster_run, n) for n in cluster.nodes})


def test_reschedule_running_job_after_link_down(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    loop_job.fault("node3")
    t0 = time.monotonic()
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    print(f"report: elapsed {report['elapsed_s']}s, running_after {report['running_after_s']}s")
    assert report["outcome"] == "requeue" and report["failed"] == ["node3"]
    # its srun step SIGKILLed by number (a job killed whole gets SIGTERM first, SIGKILL only
    # KillWait later), then the batch script's process group, then the requeue
    cmds = report["commands"]
    batch = ["scancel", "--batch", "--full", "--signal=KILL", str(jid)]
    assert batch in cmds, cmds
    kill = cmds.index(batch)
    assert cmds[:kill] in ([], [["scancel", "--ctld", "--signal=KILL", f"{jid}.0"]]), cmds
    assert cmds[kill + 1] == ["scontrol", "requeuehold", str(jid)]
    nodes = wait_for(lambda: running_on(cluster_run, jid, 3), 15, "RUNNING on 3 nodes")
    took = time.monotonic() - t0
    assert "node3" not in nodes
    j = show_job(cluster_run, jid)
    assert j["Restarts"] == "1" and j["ExcNodeList"] == "node3"
    state, reason = node_line(cluster_run, "node3").split("|", 1)
    assert state.startswith("drain") and "slurmft" in reason and str(jid) in reason
    audit = Path(cluster.shared_dir, "slurmft", "audit.jsonl").read_text().splitlines()
    ops = [json.loads(a).get("op") for a in audit if json.loads(a).get("job_id") == jid]
    assert ops[-7:] == ["kill_job", "requeue_hold", "down", "drain", "update_job", "release",
                        "update_job"]
    print(f"reschedule -> RUNNING on 3 nodes in {took:.2f}s")
    # The old run's srun is gone: one left alive cancels "step 0" KillWait + 2 s (7 s here)
    # after its step was killed, and the requeued run's first step has that id.
    time.sleep(8)
    j = show_job(cluster_run, jid)
    assert (j["JobState"], j["Restarts"]) == ("RUNNING", "1"), j
    out = Path(cluster.shared_dir, f"resched-{jid}.out").read_text()
    assert "Timed out waiting for job step" not in out, out


def test_dry_run_changes_nothing(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    loop_job.fault("node2")
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"scontrol requeuehold {jid}" in res.stdout
    assert f"scontrol update JobId={jid} ExcNodeList=node2 NumNodes=3-3" in res.stdout
    j = show_job(cluster_run, jid)
    assert j["JobState"] == "RUNNING" and j["Restarts"] == "0"
    assert not node_line(cluster_run, "node2").startswith("drain")


def test_nothing_failed_is_a_no_op(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    res = run_slurmft(cluster_run, "reschedule", str(jid))
    assert res.returncode == 0 and "nothing changed" in res.stdout
    assert show_job(cluster_run, jid)["Restarts"] == "0"


def test_watch_recovers_the_job(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    proc = subprocess.Popen(
        cluster.exec_argv(slurmft("watch", "--job", str(jid), "--interval", "0.5", "--json")),
        env={**cluster.env(), **PROBE_ENV, "SLURMFT_PROBE_TIMEOUT": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    nodes = None
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        loop_job.fault("node4")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not nodes:
            nodes = running_on(cluster_run, jid, 3)
            time.sleep(0.1)
        took = time.monotonic() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    if not nodes:
        log = Path(cluster.shared_dir, f"resched-{jid}.out")
        pytest.fail(f"watch did not recover job {jid}: {show_job(cluster_run, jid)}\n{err}\n"
                    f"job output:\n{log.read_text() if log.exists() else '-'}")
    assert "node4" not in nodes
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    cycles = [json.loads(line) for line in out.splitlines() if line.strip()]
    acted = [c for c in cycles if c["reports"]]
    assert len(acted) == 1 and acted[0]["failed"] == {str(jid): ["node4"]}
    assert show_job(cluster_run, jid)["Restarts"] == "1"
    print(f"watch: fault -> RUNNING on 3 nodes in {took:.2f}s")


def test_epilog_after_slurm_requeued_the_job(cluster, cluster_run, loop_job):
    """What EpilogSlurmctld sees after Slurm requeued a job off a dead node."""
    jid = loop_job(4)
    loop_job.fault("node1")
    # Slurm's own handling, without waiting SlurmdTimeout: the node is declared DOWN.
    cluster_run(["scontrol", "update", "nodename=node1", "state=down", "reason=test-dead"],
                check=True)
    wait_for(lambda: show_job(cluster_run, jid)["JobState"] == "PENDING", 30, "Slurm requeue",
             show=lambda: {k: v for k, v in show_job(cluster_run, jid).items()
                           if k in ("JobState", "Reason", "Restarts", "NodeList")})
    env = {"SLURM_JOB_ID": str(jid), "SLURM_JOB_NODELIST": "node[1-4]",
           "SLURM_JOB_EXIT_CODE": "0", "SLURM_SCRIPT_CONTEXT": "epilog_slurmctld"}
    t0 = time.monotonic()
    res = run_slurmft(cluster_run, "epilog", env=env, timeout=30)
    assert time.monotonic() - t0 < 2.0 + 1.5     # the hook itself, plus nsenter/python start
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert "reschedule started" in res.stderr
    nodes = wait_for(lambda: running_on(cluster_run, jid, 3), 25, "RUNNING on 3 nodes")
    assert "node1" not in nodes
    assert show_job(cluster_run, jid)["ExcNodeList"] == "node1"


def test_retry_budget_exhausted_holds_the_job(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    loop_job.fault("node2")
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--max-retry", "0")
    assert res.returncode == 3, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]      # log lines before, one error line last
    assert last.startswith("slurmft: job") and "retry budget spent (0/0)" in last
    assert "Traceback" not in res.stderr
    j = show_job(cluster_run, jid)
    assert j["JobState"] == "PENDING"
    assert j["Reason"].startswith("JobHeld") or j["Reason"] == "job_requeued_in_held_state"
    comment = squeue_job(cluster_run, jid).get("comment", "")
    assert "retry budget spent" in comment


def test_unknown_job_id(cluster_run):
    res = run_slurmft(cluster_run, "reschedule", "999999")
    assert res.returncode == 1
    assert res.stderr.strip().startswith("slurmft: no such job")
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def test_user() -> str:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", TEST_USER], check=True)
    return TEST_USER


def test_other_users_job_is_refused(cluster, cluster_run, loop_job, test_user):
    jid = loop_job(4)        # a root job
    res = cluster_run(["setpriv", f"--reuid={test_user}", f"--regid={test_user}",
                       "--clear-groups", *slurmft("reschedule", str(jid))],
                      timeout=60, env=PROBE_ENV)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "may only reschedule its own jobs" in res.stderr
    assert show_job(cluster_run, jid)["Restarts"] == "0"


def test_owner_may_reschedule_own_job(cluster, cluster_run, loop_job, test_user):
    jid = loop_job(4, user=test_user)
    loop_job.fault("node3")
    # job ids restart at 1 with every new cluster: a fresh state dir, so no old record applies
    state_dir = f"/tmp/slurmft-user-{os.getpid()}-{jid}"
    res = cluster_run(["setpriv", f"--reuid={test_user}", f"--regid={test_user}",
                       "--clear-groups", *slurmft("reschedule", str(jid), "--wait", "0")],
                      timeout=90, env={**PROBE_ENV,
                                       "SLURMFT_RESCHEDULE_STATE_DIR": state_dir,
                                       # the cluster's SSH key is root's: probe by ping only
                                       "SLURMFT_PROBE_SSH": "false"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "cannot down node3" in res.stderr        # node states need root: the job waits
    # for Slurm to declare node3 down, then runs on the other 3
    shutil.rmtree(state_dir, ignore_errors=True)
    j = show_job(cluster_run, jid)
    assert j["Restarts"] == "1" and j["ExcNodeList"] == "node3"


def test_two_concurrent_calls_requeue_once(cluster, cluster_run, loop_job):
    jid = loop_job(4)
    loop_job.fault("node2")
    procs = [subprocess.Popen(cluster.exec_argv(slurmft("reschedule", str(jid), "--json")),
                              env={**cluster.env(), **PROBE_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=90), p.stdout.read(), p.stderr.read()) for p in procs]
    for r in results:
        print(f"rc={r[0]}\n{r[1]}\n{r[2]}")
    assert [r[0] for r in results] == [0, 0], results
    outcomes = sorted(json.loads(r[1])["outcome"] for r in results)
    assert outcomes[1] == "requeue" and outcomes[0] in ("nothing", "already_done"), outcomes
    wait_for(lambda: running_on(cluster_run, jid, 3), 15, "RUNNING on 3 nodes")
    assert show_job(cluster_run, jid)["Restarts"] == "1"


def test_no_requeue_job_gets_a_restart_job(cluster, cluster_run, loop_job):
    jid = loop_job(4, "--no-requeue")
    loop_job.fault("node4")
    cluster_run(["scontrol", "update", "nodename=node4", "state=down", "reason=test-dead"],
                check=True)
    wait_for(lambda: show_job(cluster_run, jid)["JobState"] == "NODE_FAIL", 20, "NODE_FAIL")
    ckpt = Path(cluster.shared_dir) / "ckpt-restart"
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--json", "--train-cmd",
                      "bash -c 'sleep 300' train", "--checkpoint-dir", str(ckpt),
                      env={"SLURMFT_RESCHEDULE_LAUNCHER": "srun"})
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["outcome"] == "resubmit"
    new = report["new_job_id"]
    try:
        nodes = wait_for(lambda: running_on(cluster_run, new, 3), 30, "restart job RUNNING")
        assert "node4" not in nodes
        script = Path(report["restart_script"]).read_text()
        assert "#SBATCH --exclude=node4" in script and str(ckpt) in script
    finally:
        cluster_run(["scancel", str(new)])


@pytest.fixture(scope="module")
def epilog_cluster(tmp_path_factory):
    """A second small cluster whose slurm.conf has EpilogSlurmctld = slurmft epilog."""
    from slurmft.testbed import Cluster

    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    hook_dir = Path("/var/lib/slurmft") / f"epilog-test-{os.getpid()}"
    hook_dir.mkdir(parents=True, exist_ok=True)
    hook = hook_dir / "epilog.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    c = Cluster(f"sft-ep{os.getpid() % 100000}")
    c.down()
    try:
        c.up(nodes=4, epilog=str(hook))
        env = c.env({})
        lines = ["#!/bin/sh", "# EpilogSlurmctld: slurmctld's env is minimal; set slurmft's"]
        for key in ("PATH", "SLURM_CONF", "SLURMFT_RESCHEDULE_STATE_DIR"):
            lines.append(f"export {key}={shlex.quote(env[key])}")
        lines.append("export SLURMFT_PROBE_SSH=false SLURMFT_PROBE_TIMEOUT=2")
        lines.append(f"exec {shlex.quote(PY)} -m slurmft epilog")
        hook.write_text("\n".join(lines) + "\n")
        yield c
    finally:
        c.down()
        for f in hook_dir.iterdir():
            f.unlink()
        hook_dir.rmdir()


def test_epilog_slurmctld_end_to_end(epilog_cluster):
    """No watcher: Slurm notices the dead node itself (SlurmdTimeout), requeues the job, and
    its EpilogSlurmctld hands it to slurmft, which shrinks it onto the 3 healthy nodes (a
    4-node job would otherwise wait for a 4th node forever)."""
    c = epilog_cluster

    def run(argv):
        return subprocess.run(c.exec_argv(argv), env=c.env(), capture_output=True, text=True,
                              timeout=60)

    shared = Path(c.shared_dir)
    script = shared / "ep-loop.sh"
    script.write_text("#!/bin/bash\nsrun bash -c 'while true; do sleep 1; done'\n")
    script.chmod(0o755)
    jid = int(run(["sbatch", "--parsable", "--requeue", "-N4", f"--chdir={shared}",
                   f"--output={shared}/ep-%j.out", str(script)]).stdout.strip())
    try:
        wait_for(lambda: run(["squeue", "-h", "-j", str(jid), "-o", "%T"]).stdout.strip()
                 == "RUNNING", 30, "job RUNNING")
        c.fault("node2", "link-down")
        t0 = time.monotonic()

        def recovered():
            out = run(["squeue", "-h", "-j", str(jid), "-o", "%T|%N"]).stdout.strip()
            return out if out == "RUNNING|node[1,3-4]" else None

        wait_for(recovered, 90, "RUNNING on node[1,3-4] via EpilogSlurmctld",
                 show=lambda: run(["squeue", "-h", "-j", str(jid), "-o", "%T|%N|%r"]).stdout)
        print(f"epilog path: fault -> RUNNING on 3 nodes in {time.monotonic() - t0:.1f}s")
        log = shared / "slurmft" / "epilog.log"       # the detached reschedule's output
        # Slurm requeued it (PENDING -> update) or the batch script failed first (FAILED,
        # requeueable -> requeuehold path): both are handled.
        text = wait_for(lambda: "retries used" in log.read_text() and log.read_text(), 15,
                        "the reschedule report in epilog.log", show=log.read_text)
        assert ("pending job 1 updated" in text or "job 1 requeued" in text), text
        assert "ExcNodeList=node2" in text
    finally:
        c.fault("node2", "link-up")
        run(["scancel", str(jid)])


def test_a_second_loss_takes_the_first_lost_node_back_once_it_is_healthy(
        cluster, cluster_run, loop_job):
    """A job that shrank for a lost node and loses another after the first came back (idle,
    healthy) is requeued with it: it keeps its size instead of shrinking again."""
    jid = loop_job(4)
    loop_job.fault("node3")
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--json")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: running_on(cluster_run, jid, 3), 30, "RUNNING on 3 nodes")
    cluster.fault("node3", "link-up")                   # repaired; the admin resumes it
    cluster_run(["scontrol", "update", "nodename=node3", "state=resume"], check=True)
    wait_for(lambda: node_line(cluster_run, "node3").split("|")[0] == "idle", 60,
             "node3 idle again", show=lambda: node_line(cluster_run, "node3"))
    loop_job.fault("node2")
    res = run_slurmft(cluster_run, "reschedule", str(jid), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["outcome"] == "requeue" and report["failed"] == ["node2"]
    assert report["num_nodes"] == 3 and report["exclude"] == ["node2"], report
    assert "node3 healthy again, taken back" in report["message"]
    nodes = wait_for(lambda: running_on(cluster_run, jid, 3), 30, "RUNNING on 3 nodes again")
    assert "node3" in nodes and "node2" not in nodes
    j = show_job(cluster_run, jid)
    assert j["Restarts"] == "2" and j["ExcNodeList"] == "node2"
