"""Sharding the watcher (issue 16 item 4): which jobs a watcher owns (recovery.shard), and
that watchers which both see a job never act twice on it (the per-job lock in the shared
state directory, the re-read of the job under it), also when one dies holding the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import filelock
import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import ConfigError
from slurmft.probe.records import Health
from slurmft.recovery.policy import RELAUNCH_MARK, Outcome
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.shard import Ownership, Shard, jump_hash, shard_of
from slurmft.recovery.state import LockBusyError, StateStore
from slurmft.recovery.watcher import Watcher
from slurmft.slurm.client import CommandSlurmClient
from tests.fakes.fake_slurm import FakeSlurm
from tests.unit.test_rescheduler import ScriptedProber

IDS = range(1, 10_001)


# ---------------------------------------------------------------- the selection function
def test_shard_of_is_stable_across_processes_and_releases():
    """Pinned values: a change of hash would move every job to another watcher on upgrade
    (two releases side by side during a rolling restart would overlap and leave gaps)."""
    assert [shard_of(i, 4) for i in range(1, 13)] == [2, 3, 1, 2, 0, 0, 1, 0, 2, 2, 1, 2]
    assert shard_of(123456789, 16) == 11 and shard_of(4294967295, 7) == 0
    code = "from slurmft.recovery.shard import shard_of; print([shard_of(i, 5) for i in range(50)])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2", "random")}
    assert outs == {f"{[shard_of(i, 5) for i in range(50)]}\n"}


@pytest.mark.parametrize("count", [2, 3, 8, 16])
def test_every_job_is_owned_by_exactly_one_shard_and_shares_are_balanced(count):
    shards = [Ownership.of(f"{i}/{count}") for i in range(count)]
    owners = Counter()
    for jid in IDS:
        mine = [i for i, s in enumerate(shards) if s.owns(jid)]
        assert len(mine) == 1, (jid, mine)
        owners[mine[0]] += 1
    fair = len(IDS) / count
    assert set(owners) == set(range(count))
    assert all(abs(n - fair) < 0.1 * fair for n in owners.values()), owners


def test_sparse_and_large_ids_are_balanced_too():
    ids = range(7_000_000, 7_000_000 + 10_000 * 97, 97)     # array-job-like strides
    counts = Counter(shard_of(j, 4) for j in ids)
    assert all(abs(n - 2500) < 250 for n in counts.values()), counts


def test_one_more_shard_moves_only_its_share_of_jobs_and_only_to_the_new_shard():
    moved = [j for j in IDS if shard_of(j, 4) != shard_of(j, 5)]
    assert all(shard_of(j, 5) == 4 for j in moved)
    assert 0.15 < len(moved) / len(IDS) < 0.25                 # about 1/5


def test_jump_hash_bounds():
    assert {jump_hash(k, 1) for k in range(100)} == {0}
    with pytest.raises(ValueError):
        jump_hash(1, 0)


@pytest.mark.parametrize("text", ["", "1", "2/2", "-1/2", "a/b", "1/0", "0/5000", "1/2/3"])
def test_bad_shards_are_refused_with_what_is_allowed(text):
    with pytest.raises(ConfigError, match="shard"):
        Shard.parse(text)


def test_shard_text_and_the_single_shard():
    assert Shard.parse(" 1 / 3 ") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    assert Ownership.of("0/1").everything and Ownership.of(None).everything


def test_partitions_and_shard_together_own_the_intersection():
    gpu = Ownership.of(None, ["gpu"])
    assert gpu.owns(5, "gpu") and not gpu.owns(5, "cpu") and not gpu.owns(5, "")
    assert gpu.owns(5, "cpu,gpu")                  # a pending job asking for either
    halves = [Ownership.of(f"{i}/2", ["gpu", "big"]) for i in range(2)]
    for jid in range(1, 200):
        assert sum(h.owns(jid, "gpu") for h in halves) == 1
        assert not any(h.owns(jid, "cpu") for h in halves)
    assert halves[0].describe() == "shard 0/2 in partition(s) big,gpu"
    with pytest.raises(ConfigError, match="partition"):
        Ownership.of(None, ["gpu;reboot"])


# ---------------------------------------------------------------- the watcher's share
def site(tmp_path, prober, jobs=3, nodes_each=1):
    """A fake Slurm with ``jobs`` running jobs and one rescheduler factory over one shared
    state directory (as every watcher of a site shares reschedule.state_dir)."""
    fake = FakeSlurm()
    fake.jobs.clear()
    names = list(fake.nodes)
    ids = [fake.add_job("RUNNING", names[k * nodes_each:(k + 1) * nodes_each])
           for k in range(jobs)]

    def watcher(**kw) -> Watcher:
        client = CommandSlurmClient(runner=fake)
        r = Rescheduler(client, prober, StateStore(tmp_path),
                        RescheduleConfig(state_dir=str(tmp_path)), uid=0,
                        sleep=lambda s: None)
        return Watcher(client, prober, r, interval=0.01, **kw)

    return fake, ids, watcher


def test_shards_split_the_running_jobs_and_a_restart_job_stays_with_its_chain(tmp_path):
    prober = ScriptedProber()
    fake, ids, watcher = site(tmp_path, prober, jobs=4)
    ws = [watcher(owner=Ownership.of(f"{i}/3")) for i in range(3)]
    seen = [set(w.cycle().jobs) for w in ws]
    assert set().union(*seen) == set(ids) and sum(map(len, seen)) == len(ids)
    for i, jobs in enumerate(seen):
        assert jobs == {j for j in ids if shard_of(j, 3) == i}
    # a restart job of ids[0] (submitted by slurmft: aliased to it) hashes as ids[0] does
    restart = fake.add_job("RUNNING", ["node4"], job_id=1000)
    assert shard_of(restart, 3) != shard_of(ids[0], 3)       # would go elsewhere by its own id
    StateStore(tmp_path).add_alias(restart, ids[0])
    owner_of_chain = shard_of(ids[0], 3)
    for i, w in enumerate(ws):
        res = w.cycle()
        assert (restart in res.jobs) == (i == owner_of_chain)
        assert res.not_owned == len(ids) + 1 - len(res.jobs)
        assert res.to_dict()["not_owned"] == res.not_owned


def test_original_ids_list_the_alias_folder_once(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.add_alias(12, 7)
    reads = []
    real = store.original_id
    monkeypatch.setattr(store, "original_id", lambda j: reads.append(j) or real(j))
    assert store.original_ids([5, 12, 9]) == {5: 5, 12: 7, 9: 9}
    assert reads == [12]                                       # only the aliased one is read
    assert StateStore(tmp_path / "none").original_ids([3]) == {3: 3}


def test_partition_watchers_see_only_their_partitions(tmp_path):
    prober = ScriptedProber()
    fake, ids, watcher = site(tmp_path, prober, jobs=3)
    fake.job(ids[0])["partition"] = "gpu"
    fake.job(ids[1])["partition"] = "cpu"
    assert watcher(owner=Ownership.of(None, ["gpu"])).cycle().jobs == [ids[0]]
    assert sorted(watcher(owner=Ownership.of(None, ["cpu", "gpu"])).cycle().jobs) == ids[:2]


# ---------------------------------------------------------------- agreement
class RaceProber(ScriptedProber):
    """While this watcher probes (its listing taken, its decision not yet made), ``during``
    runs once: the other watcher's whole cycle, or Slurm starting the requeued job."""

    def __init__(self, failed, during=()):
        super().__init__(failed)
        self.during = list(during)

    def probe(self, hosts):
        out = super().probe(hosts)
        while self.during:
            self.during.pop(0)()
        return out


def acted(tmp_path, op: str) -> list[dict]:
    return [r for r in StateStore(tmp_path).audit_lines()
            if r["event"] == "action" and r["op"] == op]


@pytest.mark.parametrize("restarted_meanwhile", [False, True])
def test_a_second_watcher_with_a_stale_view_does_not_requeue_again(tmp_path,
                                                                   restarted_meanwhile):
    """Both watchers own the job (overlapping config) and both list it RUNNING with node3
    dead. A acts while B probes; B's decision rests on a view older than A's requeue. Under
    the lock B reads the job again: pending and already excluding node3 (or already running
    again without it): nothing to do, no second requeue, no second retry spent."""
    failed = {"node3": Health.UNREACHABLE}
    b_prober = RaceProber(failed)
    fake, ids, watcher = site(tmp_path, b_prober, jobs=1, nodes_each=3)
    [jid] = ids
    a = watcher()
    a.prober = a.rescheduler.prober = ScriptedProber(failed)
    b = watcher()
    b_prober.during.append(a.cycle)
    if restarted_meanwhile:
        b_prober.during.append(lambda: fake.start_pending(jid))
    res_b = b.cycle()
    assert res_b.failed == {jid: ["node3"]}            # B saw the failure (stale view) ...
    [report] = res_b.reports
    assert report.decision.outcome in (Outcome.ALREADY_DONE, Outcome.NOTHING)
    assert not report.decision.actions and report.commands == []   # ... and did nothing
    assert [c for c in fake.calls if "requeuehold" in c] == [
        ("scontrol", "requeuehold", str(jid))]
    assert len(acted(tmp_path, "requeue_hold")) == 1
    record = StateStore(tmp_path).load(jid)
    assert len(record.attempts) == 1                   # one retry spent, not two
    decided = [r["outcome"] for r in StateStore(tmp_path).audit_lines()
               if r["event"] == "decision"]
    assert decided.count("requeue") == 1
    # the job runs again: A (which acted) records the recovery, B does not
    if not restarted_meanwhile:
        fake.start_pending(jid)
    b_prober.failed = a.prober.failed = {}
    a.cycle(), b.cycle()
    recovered = [r for r in StateStore(tmp_path).audit_lines() if r["event"] == "recovered"]
    assert [r["job_id"] for r in recovered] == [jid]
    assert [c for c in fake.calls if "requeuehold" in c] == [
        ("scontrol", "requeuehold", str(jid))]


def test_a_second_watcher_does_not_relaunch_a_wrapper_job_twice(tmp_path):
    """The same race for a job of slurmft's wrapper (--no-kill, relaunched in place): A sets
    node3 DOWN (Slurm takes it out of the job) and signals the batch script; B's re-read
    shows the job without node3: no second signal, no second retry."""
    failed = {"node3": Health.UNREACHABLE}
    b_prober = RaceProber(failed)
    fake = FakeSlurm()
    fake.jobs.clear()
    jid = fake.add_job("RUNNING", ["node1", "node2", "node3"], comment=RELAUNCH_MARK,
                       no_kill=True)

    def watcher(prober) -> Watcher:
        client = CommandSlurmClient(runner=fake)
        r = Rescheduler(client, prober, StateStore(tmp_path),
                        RescheduleConfig(state_dir=str(tmp_path)), uid=0, sleep=lambda s: None)
        return Watcher(client, prober, r, interval=0.01)

    a, b = watcher(ScriptedProber(failed)), watcher(b_prober)
    b_prober.during.append(a.cycle)
    [report] = b.cycle().reports
    assert report.decision.outcome is Outcome.NOTHING and report.commands == []
    assert len(fake.signals) == 1                       # one SIGUSR2 to the batch script
    assert len(acted(tmp_path, "signal_batch")) == 1
    assert len(StateStore(tmp_path).load(jid).attempts) == 1


# ---------------------------------------------------------------- locks survive a crash
HOLDER = textwrap.dedent("""
    import sys, time
    from slurmft.recovery.state import StateStore
    with StateStore(sys.argv[1]).lock(int(sys.argv[2])):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_lock_held_by_a_killed_watcher_is_free_at_once(tmp_path):
    """A watcher SIGKILLed while it holds a job's lock (mid-reschedule) leaves the lock file
    behind, but the kernel drops its flock with the process: the next watcher takes the
    lock at once, without waiting for lock_timeout."""
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), "42"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusyError, match="still running"):
            with StateStore(state, lock_timeout=0.2).lock(42):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        t0 = time.monotonic()
        with StateStore(state, lock_timeout=5).lock(42) as original:
            assert original == 42
            took = time.monotonic() - t0
            assert (state / "jobs" / "42.lock").exists()      # the file stays; unlocked
            other = filelock.FileLock(str(state / "jobs" / "42.lock"))
            with pytest.raises(filelock.Timeout):             # and we really hold it now
                other.acquire(timeout=0.05)
        assert took < 0.5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_lock_follows_an_alias_written_while_waiting(tmp_path):
    """A restart job read as its own original before its alias was written: once the lock is
    held the alias is read again, and the chain's lock is the one held."""
    store = StateStore(tmp_path / "state")
    store._ensure()
    real = store.original_id
    calls = []

    def original_id(job_id):
        calls.append(job_id)
        if len(calls) == 1:                    # the alias is written right after this read
            store.add_alias(99, 7)
            return job_id
        return real(job_id)

    store.original_id = original_id
    with store.lock(99) as original:
        assert original == 7
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(str(tmp_path / "state" / "jobs" / "7.lock")).acquire(timeout=0.05)
    filelock.FileLock(str(tmp_path / "state" / "jobs" / "99.lock")).acquire(timeout=0.05)


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "shard index must be 0-1"),
    (["--shard", "half"], "shard must be I/N"),
    (["--partition", "gpu;x"], "invalid partition name"),
])
def test_watch_refuses_bad_shard_options_in_one_line(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["watch", "--once", *args],
                             env={"SLURMFT_RESCHEDULE_STATE_DIR": str(tmp_path)})
    assert res.exit_code == 2 and message in res.output
    assert "Traceback" not in res.output
