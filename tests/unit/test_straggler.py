"""Stragglers: the busy time per step the heartbeat carries (format v2, v1 still read), the
MPI manager measuring it between agree and the next vote, StragglerDetector over synthetic
beats written by real Heartbeat objects, the supervisor's report and swap, the event."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from slurmft.checkpoint.heartbeat import (
    BUSY_ALPHA, ENV_DIR, HEARTBEAT_SIZE, Beat, Heartbeat, format_beat, parse_beat,
)
from slurmft.core.errors import UsageError
from slurmft.observe.events import EVENT_TYPES, Straggler as StragglerEvent, parse_event
from slurmft.supervise.hang import HangDetector
from slurmft.supervise.launch import LaunchSettings
from slurmft.supervise.straggler import Straggler, StragglerDetector
from slurmft.supervise.supervisor import RunOptions, Supervisor
from tests.unit.test_heartbeat import run_child
from tests.unit.test_supervisor import FakeMonitor, FakeProcesses, FakeSlurm

# ---- the heartbeat's busy time ----------------------------------------------------------------


def test_v2_lines_carry_the_busy_time_and_v1_lines_still_parse():
    data = format_beat(41, 7, 1234, "node3", busy_ms=52.25)
    assert len(data) == HEARTBEAT_SIZE and data.startswith(b"v2 run 41 7 1234 node3 52.2")
    assert parse_beat(data) == Beat(41, 7, 1234, "node3", False, 52.2)
    assert parse_beat(format_beat(41, 7, 1234, "node3")).busy_ms is None      # '-'
    v1 = b"v1 run 41 7 1234 node3".ljust(HEARTBEAT_SIZE - 1) + b"\n"
    assert parse_beat(v1) == Beat(41, 7, 1234, "node3", False, None)
    assert parse_beat(b"v1 done 3 4 5") == Beat(3, 4, 5, "", True, None)
    long_host = parse_beat(format_beat(1, 1, 1, "h" * 400, busy_ms=9.0))
    assert long_host.busy_ms == 9.0 and long_host.host == "h" * 64           # never cut off
    assert parse_beat(b"v2 run 1 2 3 h x") is None                          # a torn busy field
    assert parse_beat(b"v2 run 1 2 3 h nan").busy_ms is None


def test_beat_keeps_an_ewma_of_the_busy_time_and_ignores_bad_values(tmp_path):
    hb = Heartbeat(tmp_path, 0)
    hb.beat(0)
    assert hb.busy_ms is None and parse_beat((tmp_path / "rank-0").read_bytes()).busy_ms is None
    hb.beat(1, busy_s=0.050)
    assert hb.busy_ms == pytest.approx(50.0)
    hb.beat(2, busy_s=0.100)
    assert hb.busy_ms == pytest.approx(BUSY_ALPHA * 100 + (1 - BUSY_ALPHA) * 50)
    before = hb.busy_ms
    for bad in (-1.0, float("nan"), float("inf")):
        hb.beat(3, busy_s=bad)
    assert hb.busy_ms == before
    assert parse_beat((tmp_path / "rank-0").read_bytes()).busy_ms == pytest.approx(before, abs=0.05)
    hb.close()
    done = parse_beat((tmp_path / "rank-0").read_bytes())
    assert done.done and done.busy_ms == pytest.approx(before, abs=0.05)


def test_mpi_manager_measures_busy_time_from_agree_to_the_next_vote(tmp_path):
    pytest.importorskip("mpi4py")
    code = """
        import sys
        from slurmft.checkpoint.heartbeat import parse_beat
        from slurmft.checkpoint.mpi import MPICheckpointManager

        class Rank1:
            def Get_rank(self): return 1
            def Get_size(self): return 2
            def Barrier(self): pass
            def bcast(self, obj, root=0): return obj

        d = sys.argv[1]
        now = [100.0]
        m = MPICheckpointManager(d + "/ck1", comm=Rank1())
        m._clock = lambda: now[0]
        read = lambda: parse_beat(open(f"{d}/hb/rank-1", "rb").read()).busy_ms
        m.vote(0)                        # no agree yet: no busy time
        print(read())
        now[0] += 5.0                    # waiting inside the collective: not busy
        m.agree((0.0, 0.0))
        now[0] += 0.040                  # its own compute
        m.vote(1)
        print(read())
        now[0] += 3.0
        m.agree((0.0, 0.0))
        now[0] += 0.090
        m.vote(2)
        print(read())
        m.close()
    """
    cp = run_child(code, str(tmp_path), env={ENV_DIR: str(tmp_path / "hb")})
    assert cp.returncode == 0, cp.stderr
    first, second, third = cp.stdout.split()
    assert first == "None" and float(second) == pytest.approx(40.0)
    assert float(third) == pytest.approx(0.2 * 90 + 0.8 * 40, abs=0.05)


# ---- the detector over synthetic beats ----------------------------------------------------------


class Ranks:
    """``n`` real heartbeats in ``directory``, read back through HangDetector.beats()."""

    def __init__(self, directory: Path, n: int) -> None:
        self.hbs = [Heartbeat(directory, r) for r in range(n)]
        for r, hb in enumerate(self.hbs):
            hb._host = f"node{r + 1}"
        self.reader = HangDetector(directory, n, clock=lambda: 0.0)

    def step(self, step: int, busy_s: list[float]) -> dict[int, Beat | None]:
        for hb, busy in zip(self.hbs, busy_s):
            hb.beat(step, busy)
        self.reader.poll()
        return self.reader.beats()


def run(detector, ranks: Ranks, steps: range, busy, *, every: int = 1):
    """Feed ``busy(step, rank)`` seconds; observe every ``every`` steps (a poll misses beats
    in between). Returns (step, Straggler) of each naming."""
    named = []
    for step in steps:
        beats = ranks.step(step, [busy(step, r) for r in range(len(ranks.hbs))])
        if step % every == 0:
            named += [(step, s) for s in detector.observe(beats)]
    return named


def noisy(rng: random.Random, base: float = 0.05, spread: float = 0.4) -> float:
    return base * rng.uniform(1 - spread, 1 + spread)


@pytest.mark.parametrize("every", [1, 2, 3])
def test_a_rank_at_half_speed_is_named_within_30_of_its_steps(tmp_path, every):
    rng = random.Random(every)
    det = StragglerDetector(factor=1.5, steps=20, clock=iter(range(10**6)).__next__)
    ranks = Ranks(tmp_path, 4)

    def busy(step, rank):
        slow = 2.0 if rank == 2 and step >= 100 else 1.0
        return noisy(rng, spread=0.2) * slow
    named = run(det, ranks, range(0, 400), busy, every=every)
    assert len(named) == 1, named                          # once per launch
    step, s = named[0]
    assert s.rank == 2 and s.host == "node3" and 100 + 20 <= step <= 100 + 30
    assert s.ratio >= 1.5 and s.steps >= 20 and s.peers_ms == pytest.approx(50, rel=0.2)
    assert "rank 2 on node3" in s.describe() and det.named == {2}
    det.reset()
    assert det.named == frozenset() and det.slow_since(2) is None


def test_noise_and_rank_0s_checkpoint_saves_name_no_one(tmp_path):
    rng = random.Random(7)
    det = StragglerDetector(factor=1.5, steps=20)
    ranks = Ranks(tmp_path, 4)

    def busy(step, rank):
        save = 5.0 if rank == 0 and step % 10 == 0 else 1.0      # a save: 5 steps' worth
        hiccup = 8.0 if rng.random() < 0.01 else 1.0             # a GC pause, a page fault
        return noisy(rng, spread=0.4) * save * hiccup
    assert run(det, ranks, range(2000), busy) == []


def test_ranks_that_are_all_slow_alike_are_no_stragglers(tmp_path):
    rng = random.Random(3)
    det = StragglerDetector()
    ranks = Ranks(tmp_path, 4)
    assert run(det, ranks, range(400),
               lambda step, rank: noisy(rng, spread=0.2) * (2.0 if step >= 100 else 1.0)) == []


def test_with_two_ranks_the_slow_one_is_named_and_a_short_slowdown_is_not(tmp_path):
    det = StragglerDetector(factor=1.5, steps=20)
    ranks = Ranks(tmp_path, 2)
    # rank 1 at 3x for 15 steps only: a streak too short
    named = run(det, ranks, range(100),
                lambda step, rank: 0.05 * (3.0 if rank == 1 and 30 <= step < 45 else 1.0))
    assert named == [] and det.slow_since(1) is None
    named = run(det, ranks, range(100, 200),
                lambda step, rank: 0.05 * (2.0 if rank == 1 else 1.0))
    assert [(s.rank, s.host) for _, s in named] == [(1, "node2")]


def test_beats_without_a_busy_time_or_done_are_left_out():
    det = StragglerDetector(steps=1)
    v1 = {0: Beat(5, 5, 10, "a"), 1: Beat(5, 5, 11, "b"), 2: None}
    for step in range(10):
        assert det.observe({r: b and Beat(step, step, b.pid, b.host) for r, b in v1.items()}) == []
    assert det.observe({0: Beat(1, 1, 1, "a", busy_ms=50.0),
                        1: Beat(1, 1, 2, "b", done=True, busy_ms=500.0)}) == []


def test_a_tiny_busy_time_is_compared_with_the_floor_not_with_zero():
    det = StragglerDetector(steps=1, floor_ms=1.0)
    for step in range(5):
        assert det.observe({0: Beat(step, step, 1, "a", busy_ms=0.01),
                            1: Beat(step, step, 2, "b", busy_ms=0.5)}) == []


def test_bad_settings_are_usage_errors():
    for kwargs in ({"factor": 1.0}, {"factor": float("nan")}, {"steps": 0}, {"floor_ms": 0}):
        with pytest.raises(UsageError):
            StragglerDetector(**kwargs)


# ---- the supervisor -----------------------------------------------------------------------------


class BeatsMonitor(FakeMonitor):
    def beats(self):
        return {0: None}


class FakeStragglers:
    def __init__(self, answers: list[list[Straggler]]) -> None:
        self.answers, self.resets = answers, 0

    def reset(self):
        self.resets += 1

    def observe(self, beats):
        return self.answers.pop(0) if self.answers else []


def slow(rank: int, host: str) -> Straggler:
    return Straggler(rank=rank, host=host, pid=4242, busy_ms=101.0, peers_ms=50.0, ratio=2.02,
                     steps=21, step=131, seconds=2.5)


def supervisor(tmp_path, *, action, answers, launches, allocations, spares=1, calls_rc=()):
    procs = FakeProcesses(launches=launches, calls_rc=list(calls_rc))
    slurm = FakeSlurm(allocations=allocations)
    events: list = []
    opts = RunOptions(job_id=7, checkpoint_dir=tmp_path / "ck", here="node1", cwd=str(tmp_path),
                      slurmft_cmd=("slurmft",), reschedule_log=tmp_path / "r.log",
                      kill_grace=0.0, spares=spares, straggler_action=action)
    detector = FakeStragglers(answers)
    sup = Supervisor(LaunchSettings(train_cmd=("train",), launch_from="batch"), opts, slurm,
                     procs, monitor=BeatsMonitor([]), stragglers=detector, emit=events.append,
                     environ={"SLURM_JOB_NODELIST": "node[1-4]"}, sleep=lambda s: None,
                     clock=iter(range(10**6)).__next__)
    return sup, procs, events, detector


ALL4 = ["node1", "node2", "node3", "node4"]


def test_report_names_node_and_rank_at_error_and_the_training_goes_on(tmp_path, caplog):
    sup, procs, events, det = supervisor(tmp_path, action="report",
                                         answers=[[], [slow(1, "node2")]],
                                         launches=[[None, None, None, 0]], allocations=[])
    with caplog.at_level(logging.ERROR, logger="slurmft.supervise.supervisor"):
        assert sup.run() == 0
    assert len(procs.started) == 1 and procs.procs[0].signals == [] and det.resets == 1
    [rec] = [r for r in caplog.records if "straggler" in r.getMessage()]
    assert rec.levelno == logging.ERROR and rec.failed == ["node2"]     # failed_node=
    msg = rec.getMessage()
    assert "rank 1 on node2 is a straggler" in msg and "2.02x" in msg and "21 steps" in msg
    assert "reported only" in msg
    [ev] = [e for e in events if isinstance(e, StragglerEvent)]
    assert (ev.node, ev.rank, ev.action, ev.spare, ev.count) == ("node2", 1, "report", None, 1)


def test_swap_leaves_the_node_out_for_good_and_a_spare_takes_its_place(tmp_path, caplog):
    sup, procs, events, det = supervisor(
        tmp_path, action="swap", answers=[[slow(1, "node2")]],
        launches=[[None, None, None], [5], [0]], calls_rc=[0],
        allocations=[ALL4, ALL4, ["node1", "node2", "node4"]])      # then node3 is lost
    with caplog.at_level(logging.WARNING, logger="slurmft.supervise.supervisor"):
        assert sup.run() == 0
    lists = [s[1]["SLURM_JOB_NODELIST"] for s in procs.started]
    assert lists == ["node[1-3]", "node[1,3-4]", "node[1,4]"]      # node2 never again
    assert procs.procs[0].signals == ["TERM"] and sup.benched == ["node2"]
    assert procs.started[1][0][-2:] == ["--resume", str(tmp_path / "ck")]
    [ev] = [e for e in events if isinstance(e, StragglerEvent)]
    assert (ev.action, ev.spare, ev.node) == ("swap", "node4", "node2")
    text = caplog.text
    assert "swapping node2 for the spare node4" in text and "should drain it" in text
    assert det.resets == 3


def test_swap_without_a_free_spare_reports_and_says_so(tmp_path, caplog):
    sup, procs, events, _ = supervisor(tmp_path, action="swap",
                                       answers=[[slow(0, "node1")]],
                                       launches=[[None, None, 0]],
                                       allocations=[["node1", "node2", "node3"]])   # no node4
    with caplog.at_level(logging.ERROR, logger="slurmft.supervise.supervisor"):
        assert sup.run() == 0
    assert len(procs.started) == 1 and sup.benched == []
    assert "no free spare" in caplog.text
    [ev] = [e for e in events if isinstance(e, StragglerEvent)]
    assert ev.action == "no-spare" and ev.spare is None


def test_the_straggler_event_round_trips_through_the_audit_reader(tmp_path):
    from slurmft.observe.events import AuditFile

    assert EVENT_TYPES["straggler"] is StragglerEvent
    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.emit(StragglerEvent(job_id=7, node="node2", rank=1, pid=9, busy_ms=101.0,
                              peers_ms=50.0, ratio=2.02, streak_steps=21, at_step=131,
                              seconds=2.5, action="swap", spare="node4", count=1, launch=1))
    [ev] = audit.events()
    assert ev == StragglerEvent(time=ev.time, job_id=7, node="node2", rank=1, pid=9,
                                busy_ms=101.0, peers_ms=50.0, ratio=2.02, streak_steps=21,
                                at_step=131, seconds=2.5, action="swap", spare="node4",
                                count=1, launch=1)
    assert parse_event({"event": "straggler", "rank": "x", "ratio": -1}).rank is None
