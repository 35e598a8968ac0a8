"""Two watchers at once never act twice on one job (issue 16 item 4), on the real cluster.

Three real `slurmft watch` processes share one state directory: one watches every job, one
owns the job's shard (``--shard I/2``): both see the job, as two watchers do whose options
overlap or when one takes over a dead one's shard; the third owns the other shard and must
never look at it. A node of the job is cut off (link down). The audit file shows one
recovery: one decision to requeue, one requeuehold, one ``recovered``; the job runs again,
once requeued, without the node. Watchers are stopped by pid in the finally."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from slurmft.recovery.shard import shard_of
from slurmft.recovery.state import StateStore
from tests.integration.jobs import LoopJob, running_on, show_job
from tests.integration.waiting import wait_for
from tests.integration.watching import start_watcher, stop_watcher, watch_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def start(cluster, env: dict, work: Path, name: str, *args: str) -> subprocess.Popen:
    """`slurmft watch --json ARGS`: the cycles to <name>.jsonl, the log to <name>.log."""
    return start_watcher(cluster, env, work / f"{name}.log", "--json", *args,
                         stdout=work / f"{name}.jsonl")


def cycles(work: Path, name: str) -> list[dict]:
    path = work / f"{name}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_two_watchers_recover_a_lost_node_once(cluster):
    work = Path(cluster.shared_dir) / "two-watchers"
    state = work / "state"
    work.mkdir(parents=True, exist_ok=True)
    env = watch_env(cluster, state)
    jobs = LoopJob(cluster, name="two-watchers")
    watchers: dict[str, subprocess.Popen] = {}
    try:
        jid = jobs.submit(nodes=3)
        mine = shard_of(jid, 2)
        watchers["all"] = start(cluster, env, work, "all")
        watchers["owner"] = start(cluster, env, work, "owner", "--shard", f"{mine}/2")
        watchers["other"] = start(cluster, env, work, "other",
                                          "--shard", f"{1 - mine}/2")
        # all three have listed the queue (and the two owners probed the job) before the cut
        wait_for(lambda: all(cycles(work, n) for n in watchers), 30, "a cycle of each watcher",
                 show=lambda: {n: (work / f"{n}.log").read_text()[-500:] for n in watchers})
        nodes = running_on(jobs.run, jid, 3)
        lost = next(n for n in reversed(nodes) if n != show_job(jobs.run, jid)["BatchHost"])
        t0 = time.monotonic()
        jobs.link_down(lost)

        def diagnose() -> str:
            logs = {n: (work / f"{n}.log").read_text()[-800:] for n in watchers}
            return f"job {show_job(jobs.run, jid)}\nlogs {logs}"

        again = wait_for(lambda: (n := running_on(jobs.run, jid, 2)) and lost not in n and n,
                         90, "the job RUNNING again on 2 nodes without the lost one",
                         show=diagnose)
        recovered_in = time.monotonic() - t0
        # a second watcher acting late would do so within a few of its cycles: give it time
        wait_for(lambda: any(r["event"] == "recovered" and r["job_id"] == jid
                             for r in StateStore(state).audit_lines()), 30,
                 "the recovery in the audit file", show=diagnose)
        time.sleep(4)
        for proc in watchers.values():
            assert proc.poll() is None, "a watcher exited"

        audit = [r for r in StateStore(state).audit_lines() if r.get("job_id") == jid]
        decisions = [r["outcome"] for r in audit if r["event"] == "decision"]
        ops = [r["op"] for r in audit if r["event"] == "action"]
        detected = [r for r in audit if r["event"] == "detected"]
        assert decisions.count("requeue") == 1, decisions
        assert set(decisions) <= {"requeue", "already_done", "nothing"}, decisions
        assert ops.count("requeue_hold") == 1 and ops.count("release") == 1, ops
        assert ops.count("kill_job") == 1 and ops.count("down") == 1, ops
        assert len([r for r in audit if r["event"] == "recovered"]) == 1
        assert detected and all(r["nodes"] == [lost] for r in detected)
        # Slurm requeued it once, without the node, and the record spent one retry
        job = show_job(jobs.run, jid)
        assert job["Restarts"] == "1" and lost in job.get("ExcNodeList", ""), job
        assert len(StateStore(state).load(jid).attempts) == 1
        assert lost not in again
        # the watcher of the other shard never looked at the job
        other = cycles(work, "other")
        assert other and all(jid not in c["jobs"] and not c["reports"] for c in other)
        assert any(c["not_owned"] >= 1 for c in other)
        acted_by = [n for n in ("all", "owner")
                    if any(c["reports"] and any(r["job_id"] == jid for r in c["reports"])
                           for c in cycles(work, n))]
        print(f"lost {lost}; running again after {recovered_in:.1f}s; detected by "
              f"{len(detected)} watcher(s); reports from {acted_by}; decisions {decisions}")
    finally:
        for proc in watchers.values():
            stop_watcher(proc)
        jobs.cleanup()
