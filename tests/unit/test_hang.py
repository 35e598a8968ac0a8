"""HangDetector over real heartbeat files in tmp_path with a fake clock (no sleeps): progress,
no progress, the timeout derived from the observed step time with its floor, the startup
grace, ranks that finished, reset between launches; stacks files; the py-spy helper."""

from __future__ import annotations

import pytest

from slurmft.checkpoint.heartbeat import Heartbeat, format_beat
from slurmft.core.errors import UsageError
from slurmft.supervise.hang import (
    READ_INTERVAL_MAX, READ_INTERVAL_MIN, CommandResult, HangDetector, StuckRank, laggards,
    py_spy_argv, py_spy_dump, read_interval, read_stacks,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Ranks:
    """Heartbeats of ranks 0..n-1 in one directory, beaten by hand."""

    def __init__(self, directory, n: int) -> None:
        self.hb = [Heartbeat(directory, r) for r in range(n)]
        self.step = [0] * n

    def beat(self, *ranks: int, steps: int = 1) -> None:
        for r in ranks or range(len(self.hb)):
            self.step[r] += steps
            self.hb[r].beat(self.step[r])


def detector(tmp_path, world=2, **kw):
    clock = kw.pop("clock", FakeClock())
    kw.setdefault("startup_grace", 300.0)
    return HangDetector(tmp_path, world, clock=clock, **kw), clock


def test_a_rank_without_progress_is_stuck_after_the_timeout(tmp_path):
    det, clock = detector(tmp_path, timeout=20.0)
    ranks = Ranks(tmp_path, 2)
    ranks.beat()
    assert det.poll() == []
    for _ in range(10):                         # both make progress: never stuck
        clock.advance(15)
        ranks.beat()
        assert det.poll() == []
    clock.advance(15)
    ranks.beat(0)                               # rank 1 stops at step 11
    assert det.poll() == []                     # 15 s < 20 s
    clock.advance(5)
    ranks.beat(0)
    stuck = det.poll()
    assert stuck == [StuckRank(1, 11, 20.0, None, ranks.hb[1]._host, ranks.hb[1]._pid)]
    assert "rank 1 on" in stuck[0].describe() and "last step 11" in stuck[0].describe()
    clock.advance(1)
    ranks.beat(1)                               # it moves again: not stuck any more
    assert det.poll() == []


def test_progress_is_the_content_changing_not_its_mtime(tmp_path):
    det, clock = detector(tmp_path, world=1, timeout=10.0)
    path = tmp_path / "rank-0"
    path.write_bytes(format_beat(5, 1, 42, "node1"))
    assert det.poll() == []
    clock.advance(9)
    path.write_bytes(format_beat(5, 1, 42, "node1"))     # rewritten, same content
    assert det.poll() == []
    clock.advance(1)
    assert [s.rank for s in det.poll()] == [0]
    path.write_bytes(format_beat(5, 2, 42, "node1"))     # same step, new beat: progress
    assert det.poll() == []
    path.write_bytes(b"v1 run 5 2")                       # a torn read: a change, no beat
    clock.advance(9)
    assert det.poll() == []
    assert det.last_beat(0).count == 2


def test_the_timeout_is_factor_times_the_median_step_time_with_a_floor(tmp_path):
    det, clock = detector(tmp_path, world=2, factor=10.0, floor=30.0)
    ranks = Ranks(tmp_path, 2)
    ranks.beat()
    det.poll()
    assert det.current_timeout() is None and det.step_time is None   # nothing seen yet
    # polled every 1 s, 4 steps per poll: 0.25 s per step -> 2.5 s, below the floor
    for _ in range(5):
        clock.advance(1.0)
        ranks.beat(steps=4)
        det.poll()
    assert det.step_time == pytest.approx(0.25)
    assert det.current_timeout() == 30.0
    clock.advance(29.9)
    assert det.poll() == []
    clock.advance(0.2)
    assert [s.rank for s in det.poll()] == [0, 1]


def test_slow_steps_raise_the_timeout_above_the_floor(tmp_path):
    det, clock = detector(tmp_path, world=1, factor=10.0, floor=30.0)
    ranks = Ranks(tmp_path, 1)
    ranks.beat()
    det.poll()
    # one step every 6 s, polled every 2 s (two polls of three see no change)
    for i in range(30):
        clock.advance(2.0)
        if i % 3 == 2:
            ranks.beat()
        det.poll()
    assert det.step_time == pytest.approx(6.0) and det.current_timeout() == pytest.approx(60.0)
    clock.advance(59)
    assert det.poll() == []
    clock.advance(1)
    (s,) = det.poll()
    assert s.seconds_without_progress == pytest.approx(60.0)


def test_one_slow_step_does_not_move_the_median(tmp_path):
    det, clock = detector(tmp_path, world=1, factor=10.0, floor=5.0)
    ranks = Ranks(tmp_path, 1)
    ranks.beat()
    det.poll()
    for _ in range(10):
        clock.advance(1.0)
        ranks.beat()
        det.poll()
    clock.advance(8.0)                          # a checkpoint save: one 8 s step
    ranks.beat()
    det.poll()
    assert det.step_time == 1.0 and det.current_timeout() == 10.0


def test_startup_grace_before_the_first_heartbeat_and_before_the_median(tmp_path):
    det, clock = detector(tmp_path, world=2, startup_grace=300.0)
    ranks = Ranks(tmp_path, 2)
    clock.advance(1000)                         # no rank ever beat: heartbeats not in use
    assert det.poll() == []
    det.reset(2)
    ranks = Ranks(tmp_path, 2)
    clock.advance(200)                          # slow imports
    ranks.beat(0)                               # rank 0 is up; rank 1 still importing
    assert det.poll() == []
    clock.advance(99)
    assert det.poll() == []                     # rank 0: no median yet, grace applies
    clock.advance(1)
    stuck = det.poll()
    assert [(s.rank, s.last_step, s.seconds_without_progress) for s in stuck] == [(1, None, 300.0)]
    # told to expect heartbeats: the grace applies even when no rank ever beat
    det2, clock2 = detector(tmp_path / "other", world=1, startup_grace=10.0,
                            expect_heartbeats=True)
    clock2.advance(10)
    assert [s.rank for s in det2.poll()] == [0]
    det3, clock3 = detector(tmp_path / "none", world=1, startup_grace=None,
                            expect_heartbeats=True)
    clock3.advance(1e6)
    assert det3.poll() == []


def test_a_rank_that_finished_is_never_stuck(tmp_path):
    det, clock = detector(tmp_path, world=2, timeout=5.0)
    ranks = Ranks(tmp_path, 2)
    ranks.beat()
    det.poll()
    ranks.hb[1].close()                         # done (e.g. while rank 0 saves the last one)
    clock.advance(1)
    det.poll()
    clock.advance(100)
    assert [s.rank for s in det.poll()] == [0]


def test_the_training_finished_once_every_rank_closed(tmp_path):
    det, _ = detector(tmp_path, world=2, timeout=5.0)
    assert not det.finished()                   # no heartbeat yet
    ranks = Ranks(tmp_path, 2)
    ranks.beat()
    ranks.hb[1].close()
    assert not det.finished()                   # rank 0 still runs
    ranks.hb[0].close()
    assert det.finished()                       # read now, no poll() needed
    assert not HangDetector(tmp_path, 0).finished()     # no ranks: nothing finished


def test_reset_forgets_the_old_launch_and_removes_its_files(tmp_path):
    det, clock = detector(tmp_path, world=3, timeout=5.0)
    ranks = Ranks(tmp_path, 3)
    ranks.beat()
    (tmp_path / "rank-2.stacks").write_text("Timeout (0:00:01)!\nThread 0x1:\n")
    (tmp_path / "notes.txt").write_text("keep")
    det.poll()
    for _ in range(4):
        clock.advance(1)
        ranks.beat()
        det.poll()
    assert det.step_time == 1.0
    det.reset(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert det.world_size == 2 and det.step_time is None and det.last_beat(0) is None
    clock.advance(100)                          # the new launch has not beaten: grace
    assert det.poll() == []
    HangDetector(tmp_path / "missing", 0).reset(4)   # nothing to remove: fine


def test_stacks_reads_the_newest_dump(tmp_path):
    det, _ = detector(tmp_path, world=1)
    assert det.stacks(0) is None
    (tmp_path / "rank-0.stacks").write_text("")
    assert det.stacks(0) is None
    (tmp_path / "rank-0.stacks").write_text(
        "Timeout (0:00:01)!\nThread 0x1 (most recent call first):\n  File \"a.py\", line 1 in old\n\n"
        "Timeout (0:00:01)!\nThread 0x1 (most recent call first):\n  File \"a.py\", line 2 in new\n")
    text = det.stacks(0)
    assert text.startswith("Timeout (0:00:01)!") and "in new" in text and "in old" not in text
    (tmp_path / "other").write_text("no header at all\n")
    assert read_stacks(tmp_path / "other") == "no header at all\n"


def test_laggards_are_the_ranks_at_the_lowest_step():
    stuck = [StuckRank(0, 12, 40, None), StuckRank(1, 11, 41, None), StuckRank(2, 12, 40, None)]
    assert [s.rank for s in laggards(stuck)] == [1]
    assert [s.rank for s in laggards([StuckRank(3, None, 300, None)])] == [3]


@pytest.mark.parametrize("kw, msg", [
    ({"timeout": 0}, "hang timeout"), ({"timeout": float("nan")}, "hang timeout"),
    ({"floor": -1}, "hang floor"), ({"factor": 0}, "hang factor"),
    ({"startup_grace": float("inf")}, "startup grace")])
def test_bad_settings_are_usage_errors(tmp_path, kw, msg):
    with pytest.raises(UsageError, match=msg):
        HangDetector(tmp_path, 1, **kw)
    with pytest.raises(UsageError, match="world size"):
        HangDetector(tmp_path, -1)


def test_py_spy_dump_runs_py_spy_where_it_is_installed(caplog):
    calls = []

    def runner(argv, timeout):
        calls.append((list(argv), timeout))
        return CommandResult(0, "Thread 42 (idle): \"MainThread\"\n    wait (train.py:10)\n")

    assert py_spy_dump(42, runner=runner, which=lambda name: None) is None
    assert calls == []                                  # not installed: not run
    out = py_spy_dump(42, runner=runner, which=lambda name: "/usr/bin/py-spy", timeout=3)
    assert calls == [(["/usr/bin/py-spy", "dump", "--pid", "42"], 3)]
    assert "wait (train.py:10)" in out
    failing = lambda argv, t: CommandResult(1, "", "Permission denied (os error 13)\n")
    assert py_spy_dump(42, runner=failing, which=lambda n: "py-spy") is None
    assert "py-spy dump of pid 42 failed (rc 1): Permission denied" in caplog.text
    assert py_spy_dump(42, runner=lambda a, t: CommandResult(None, stderr="no answer"),
                       which=lambda n: "py-spy") is None
    assert "timed out or did not start" in caplog.text
    with pytest.raises(UsageError):
        py_spy_argv(0)


def test_train_py_checks_its_hang_options():
    """--hang-rank without --hang-at-step is one line and exit 2 (parsed before MPI starts)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    pytest.importorskip("mpi4py")
    script = Path(__file__).resolve().parents[2] / "slurmft" / "examples" / "train.py"
    cp = subprocess.run([sys.executable, str(script), "--checkpoint-dir", "/nonexistent",
                         "--hang-rank", "1"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines()[-1] == ("train.py: error: --hang-rank needs "
                                                  "--hang-at-step N")


@pytest.mark.parametrize("step_time, expected", [
    (None, READ_INTERVAL_MAX),            # no step seen yet: once a second
    (0.05, READ_INTERVAL_MIN),            # fast steps: at most 4 reads a second
    (0.3, 0.6),                           # about two steps
    (5.0, READ_INTERVAL_MAX),             # slow steps: still once a second
    (float("nan"), READ_INTERVAL_MAX),
])
def test_heartbeats_are_read_about_every_two_steps_within_bounds(step_time, expected):
    assert read_interval(step_time) == pytest.approx(expected)


def test_a_fixed_read_interval_wins_over_the_step_time():
    assert read_interval(0.05, fixed=2.0) == 2.0
