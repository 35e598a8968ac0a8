"""The watcher's load on Slurm does not grow with jobs (issue 16 item 3): 2,000 running jobs on
10,000 nodes in the fake Slurm (22.05 JSON), the Slurm commands of each cycle counted."""

from __future__ import annotations

from collections import Counter

import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.core.nodeset import expand
from slurmft.probe.records import Health
from slurmft.recovery.policy import Outcome
from slurmft.recovery.rescheduler import Rescheduler, poll_delays
from slurmft.recovery.state import StateStore
from slurmft.recovery.watcher import Watcher
from slurmft.slurm.client import CommandSlurmClient
from tests.fakes.fake_slurm import FakeSlurm
from tests.fakes.scale import CountingProber, node_name, scale_cluster, slurm_command

JOBS, NODES, PER_JOB = 2000, 10_000, 5


class Sleeps:
    """sleep/clock pair: time moves only when the code sleeps; every pause is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def watcher_on(fake, tmp_path, prober, start_wait=3.0):
    """A watcher over ``fake`` set up as ``slurmft watch`` builds it (its default --wait 3)."""
    sleeps = Sleeps()
    client = CommandSlurmClient(runner=fake)
    r = Rescheduler(client, prober, StateStore(tmp_path), RescheduleConfig(state_dir=str(tmp_path)),
                    uid=0, sleep=sleeps.sleep, clock=sleeps.clock, start_wait=start_wait,
                    wall=lambda: 2000.5)
    return Watcher(client, prober, r, interval=0.01), sleeps


def cycle_counting(w, fake):
    n = len(fake.calls)
    res = w.cycle()
    calls = fake.calls[n:]
    return res, Counter(slurm_command(c) for c in calls), calls


def job_of(k: int) -> int:
    return k + 1            # scale_cluster's jobs get ids 1..JOBS, job k on its k-th 5 nodes


def test_2000_jobs_on_10000_nodes_one_squeue_per_cycle(tmp_path):
    fake = scale_cluster(JOBS, NODES, PER_JOB)
    prober = CountingProber()
    w, sleeps = watcher_on(fake, tmp_path, prober)
    for _ in range(2):                                      # all healthy
        res, counts, _ = cycle_counting(w, fake)
        assert len(res.jobs) == JOBS and res.reports == [] and res.errors == {}
        assert counts == {"squeue": 1}
        assert res.slurm_reads == {"listings": 1, "node_states": 0, "step_listings": 0,
                                   "job_reads": 0}
    assert prober.hosts == 2 * NODES                        # every node probed each cycle

    # A node fails in each of three jobs (the second node of jobs 0, 700 and 1999).
    victims = {job_of(k): node_name(k * PER_JOB + 2) for k in (0, 700, 1999)}
    prober.failed = {n: Health.UNREACHABLE for n in victims.values()}
    res, counts, calls = cycle_counting(w, fake)
    assert res.failed == {jid: [node] for jid, node in victims.items()}
    assert [rep.decision.outcome for rep in res.reports] == [Outcome.REQUEUE] * 3
    assert counts["squeue"] == 1 and counts["sinfo"] <= 1
    assert counts["squeue-steps"] == 1                      # one listing for all three jobs
    assert counts["show-job"] == 3                          # the re-read of each, under its lock
    first_write = next(i for i, c in enumerate(calls) if slurm_command(c) not in
                       ("squeue", "squeue-steps", "sinfo", "show-job"))
    assert not [c for c in calls[first_write:] if c[0] == "squeue"]   # no polling after acting
    for jid, node in victims.items():                       # each got its scontrol actions
        mine = [c for c in calls if str(jid) in c or f"JobId={jid}" in c]
        assert [slurm_command(c) for c in mine] == [
            "show-job", "scancel", "scontrol-requeuehold", "scontrol-update",
            "scontrol-release", "scontrol-update"]
        assert ("scontrol", "update", f"JobId={jid}", f"ExcNodeList={node}",
                "NumNodes=4-4") in mine
        assert fake.job(jid)["job_state"] == "PENDING"
        assert fake.job(jid)["excluded_nodes"] == node
        assert "DRAIN" in fake.node(node)["state_flags"] and fake.node(node)["state"] == "down"
    assert sleeps.slept == [pytest.approx(0.55)] * 3         # the credential gaps, no polling
    assert {jid: res.phases[jid] for jid in victims} == dict.fromkeys(victims, "requeued")

    # Slurm applied its requeue delay to one: the next cycle nudges it, still one squeue.
    prober.failed = {}
    fake.job(job_of(700)).update(state_reason="BeginTime")
    res, counts, calls = cycle_counting(w, fake)
    assert counts == {"squeue": 1, "scontrol-update": 1}
    assert calls[-1] == ("scontrol", "update", f"JobId={job_of(700)}", "StartTime=now")

    for jid in victims:                                     # Slurm starts them without the node
        fake.start_pending(jid)
    res, counts, _ = cycle_counting(w, fake)
    assert counts == {"squeue": 1}
    assert len(res.jobs) == JOBS and set(res.phases.values()) == {"watched"}
    recovered = [rec["job_id"] for rec in w.rescheduler.store.audit_lines()
                 if rec["event"] == "recovered"]
    assert sorted(recovered) == sorted(victims)
    for jid, node in victims.items():
        assert node not in expand(fake.job(jid)["nodes"])


def test_ten_jobs_rescheduled_in_one_cycle_still_list_the_queue_once(tmp_path):
    """Whatever the number of jobs acted on, the queue is listed once: the rescheduler reads
    the job it acts on alone (scontrol show job), never squeue; one step listing serves all."""
    fake = FakeSlurm()
    fake.jobs.clear()
    fake.nodes = scale_cluster(0, 80, PER_JOB).nodes
    names = list(fake.nodes)
    jobs = [fake.add_job("RUNNING", names[k * 4:(k + 1) * 4]) for k in range(20)]
    for jid in jobs[:10]:
        fake.start_step(jid)
    prober = CountingProber()
    w, sleeps = watcher_on(fake, tmp_path, prober, start_wait=60)
    prober.failed = {names[k * 4 + 3]: Health.UNREACHABLE for k in range(0, 20, 2)}
    res, counts, calls = cycle_counting(w, fake)
    assert len(res.reports) == 10 and res.errors == {}
    assert [c[0] for c in calls].count("squeue") == 2       # one job listing, one step listing
    assert counts["squeue"] == 1 and counts["squeue-steps"] == 1
    assert counts["show-job"] == 10 and counts["scontrol-requeuehold"] == 10
    assert counts.get("sinfo", 0) <= 1
    assert res.slurm_reads == {"listings": 1, "node_states": 0, "step_listings": 1,
                               "job_reads": 10}
    assert max(sleeps.slept) < 1.1 and len(sleeps.slept) == 10   # credential gaps only
    # The recovery of the requeued jobs that ran steps waits for their first step: once they
    # run again, each cycle reads the steps once for all of them.
    for jid in jobs[0:20:2]:
        fake.start_pending(jid)
    res, counts, _ = cycle_counting(w, fake)
    assert counts == {"squeue": 1, "squeue-steps": 1}
    for jid in jobs[0:10:2]:
        fake.start_step(jid)
    res, counts, _ = cycle_counting(w, fake)
    assert counts == {"squeue": 1, "squeue-steps": 1}
    assert set(res.phases.values()) == {"watched"}          # all recovered
    recovered = [rec["job_id"] for rec in w.rescheduler.store.audit_lines()
                 if rec["event"] == "recovered"]
    assert sorted(recovered) == jobs[0:20:2]
    res, counts, _ = cycle_counting(w, fake)
    assert counts == {"squeue": 1}                          # nothing waits for a step now


def test_reschedule_alone_waits_with_a_slow_backoff(tmp_path):
    """The CLI's reschedule (no watcher) still waits up to --wait for the job to run, reading
    it at 0.5 s, then 1.5 times later each time, at most 5 s apart (it used to read every
    0.2 s: 300 listings of the whole queue for --wait 60)."""
    fake = FakeSlurm()
    fake.jobs.clear()
    jid = fake.add_job("RUNNING", ["node1", "node2", "node3", "node4"])
    sleeps = Sleeps()
    r = Rescheduler(CommandSlurmClient(runner=fake), CountingProber(), StateStore(tmp_path),
                    RescheduleConfig(state_dir=str(tmp_path)), uid=0, sleep=sleeps.sleep,
                    clock=sleeps.clock, start_wait=60, wall=lambda: 2000.5)
    r.prober.failed = {"node3": Health.UNREACHABLE}     # and the job never starts again
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.REQUEUE and report.state_after == "PENDING"
    polls = sleeps.slept[1:]                                # after the credential gap
    assert polls[:6] == pytest.approx([0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875])
    assert max(polls) == 5.0 and sum(polls) == pytest.approx(60)
    assert len(polls) <= 18
    listings = [c for c in fake.calls if slurm_command(c) == "squeue"]
    assert len(listings) == len(polls) + 3                 # first read, re-read, kick's first


def test_poll_delays_grow_to_their_cap():
    delays = poll_delays()
    assert [round(next(delays), 4) for _ in range(9)] == [
        0.5, 0.75, 1.125, 1.6875, 2.5312, 3.7969, 5.0, 5.0, 5.0]
