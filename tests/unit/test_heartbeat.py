"""Heartbeats (training side): the fixed-size file overwritten in place, the environment that
turns them on, the checkpoint managers beating every step, and faulthandler's stacks written
by a real process that stops beating (small dump_after: each test takes a second or two)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slurmft.checkpoint import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.heartbeat import (
    ENV_DIR, ENV_DUMP_AFTER, HEARTBEAT_SIZE, Beat, Heartbeat, format_beat, heartbeat_from_env,
    parse_beat, rank_from_env,
)
from slurmft.core.errors import SlurmFTError
from slurmft.supervise.hang import HangDetector

ROOT = Path(__file__).resolve().parents[2]


def run_child(code: str, *args: str, timeout: float = 30.0, env: dict | None = None,
              ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_format_and_parse_round_trip_at_a_fixed_size():
    data = format_beat(41, 7, 1234, "node3")
    assert len(data) == HEARTBEAT_SIZE and data.endswith(b"\n")
    assert parse_beat(data) == Beat(41, 7, 1234, "node3", done=False)
    assert parse_beat(format_beat(41, 8, 1234, "node3", done=True)).done
    long_host = format_beat(1, 1, 1, "h" * 400)
    assert len(long_host) == HEARTBEAT_SIZE and parse_beat(long_host).host.startswith("hhh")
    for junk in (b"", b"v1 run 3", b"v0 run 1 2 3 h", b"v1 run x 2 3 h", b"\0" * 128):
        assert parse_beat(junk) is None


def test_beat_overwrites_one_file_in_place_and_close_marks_it_done(tmp_path):
    hb = Heartbeat(tmp_path / "hb", 3)
    path = tmp_path / "hb" / "rank-3"
    assert path.read_bytes() == b""                   # no beat yet: nothing to read
    inode = path.stat().st_ino
    seen = set()
    for step in range(100, 150):
        hb.beat(step)
        data = path.read_bytes()
        seen.add(data)
        assert len(data) == HEARTBEAT_SIZE
    assert len(seen) == 50                             # every beat changes the content
    beat = parse_beat(path.read_bytes())
    assert (beat.step, beat.count, beat.pid, beat.done) == (149, 50, os.getpid(), False)
    assert path.stat().st_ino == inode and sorted(os.listdir(tmp_path / "hb")) == ["rank-3"]
    hb.close()
    assert parse_beat(path.read_bytes()) == Beat(149, 51, os.getpid(), beat.host, done=True)
    hb.beat(150)                                       # after close: nothing, no error
    assert parse_beat(path.read_bytes()).done and hb.closed


def test_a_new_heartbeat_empties_what_a_previous_launch_left(tmp_path):
    (tmp_path / "rank-0").write_bytes(format_beat(999, 5, 1, "old"))
    with Heartbeat(tmp_path, 0) as hb:
        assert (tmp_path / "rank-0").read_bytes() == b""
        hb.beat(0)
        assert parse_beat((tmp_path / "rank-0").read_bytes()).step == 0


def test_bad_arguments_and_an_unwritable_directory_are_typed_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SlurmFTError, match="cannot write heartbeats in .*file/hb.*SLURMFT_HEARTBEAT_DIR"):
        Heartbeat(tmp_path / "file" / "hb", 0)
    with pytest.raises(SlurmFTError, match="rank must be >= 0"):
        Heartbeat(tmp_path, -1)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(SlurmFTError, match="dump_after"):
            Heartbeat(tmp_path, 0, dump_after=bad)


def test_heartbeat_from_env(tmp_path, caplog):
    assert heartbeat_from_env(0, {}) is None
    assert heartbeat_from_env(0, {ENV_DIR: "  "}) is None
    hb = heartbeat_from_env(2, {ENV_DIR: str(tmp_path / "d")})
    assert hb.rank == 2 and hb.dump_after is None and hb.path == tmp_path / "d" / "rank-2"
    hb.close()
    # the rank from the launcher when none is given (Open MPI before Slurm's task id)
    hb = heartbeat_from_env(None, {ENV_DIR: str(tmp_path), "SLURM_PROCID": "1",
                                   "OMPI_COMM_WORLD_RANK": "5"})
    assert hb.rank == 5
    hb.close()
    assert rank_from_env({"SLURM_PROCID": "1"}) == 1 and rank_from_env({}) is None
    assert rank_from_env({"PMIX_RANK": "x", "RANK": "4"}) == 4
    # a bad dump_after or directory is logged and never stops the training
    hb = heartbeat_from_env(0, {ENV_DIR: str(tmp_path), ENV_DUMP_AFTER: "soon"})
    assert hb is not None and hb.dump_after is None
    hb.close()
    assert "SLURMFT_HANG_DUMP_AFTER='soon' is not a positive number" in caplog.text
    (tmp_path / "file").write_text("x")
    assert heartbeat_from_env(0, {ENV_DIR: str(tmp_path / "file")}) is None
    assert "no heartbeats: cannot write heartbeats" in caplog.text


def test_checkpoint_manager_beats_in_should_save_when_the_env_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    with CheckpointManager(tmp_path / "a", CheckpointPolicy(step_interval=5)) as mgr:
        assert mgr.heartbeat is None
        plain = [mgr.should_save(step) for step in range(7)]   # no heartbeat: no file
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "hb"))
    monkeypatch.delenv(ENV_DUMP_AFTER, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    mgr = CheckpointManager(tmp_path / "b", CheckpointPolicy(step_interval=5))
    assert mgr.heartbeat is not None and mgr.heartbeat.rank == 3
    assert [mgr.should_save(step) for step in range(7)] == plain   # the policy's answers
    assert plain[:5] == [False] * 5 and plain[5]
    assert parse_beat((tmp_path / "hb" / "rank-3").read_bytes()).step == 6
    mgr.beat(9)
    assert parse_beat((tmp_path / "hb" / "rank-3").read_bytes()).step == 9
    mgr.close()
    assert parse_beat((tmp_path / "hb" / "rank-3").read_bytes()).done
    # explicit: rank given, or heartbeats off
    with CheckpointManager(tmp_path / "c", rank=1) as m1, \
            CheckpointManager(tmp_path / "d", heartbeat=False) as m2:
        assert m1.heartbeat.rank == 1 and m2.heartbeat is None


def test_mpi_manager_beats_on_every_rank_in_vote(tmp_path):
    """rank 0 (mpi4py's singleton) beats through should_save; a rank != 0 (a stand-in
    communicator) in vote itself. Its own process: MPI_Init stays out of pytest's."""
    pytest.importorskip("mpi4py")
    code = """
        import sys
        from slurmft.checkpoint.heartbeat import parse_beat
        from slurmft.checkpoint.mpi import MPICheckpointManager
        from slurmft.checkpoint import CheckpointPolicy

        class Rank1:
            def Get_rank(self): return 1
            def Get_size(self): return 2
            def Barrier(self): pass
            def bcast(self, obj, root=0): return obj

        d = sys.argv[1]
        m0 = MPICheckpointManager(d + "/ck0", CheckpointPolicy(step_interval=2))
        m1 = MPICheckpointManager(d + "/ck1", CheckpointPolicy(step_interval=2), comm=Rank1())
        for step in range(5):
            v0, v1 = m0.vote(step), m1.vote(step)
        print(v0, v1, m0.should_save(6))
        for r in (0, 1):
            b = parse_beat(open(f"{d}/hb/rank-{r}", "rb").read())
            print(r, b.step, b.count)
        m1.close(); m0.close()
        print(parse_beat(open(f"{d}/hb/rank-1", "rb").read()).done)
    """
    cp = run_child(code, str(tmp_path), env={ENV_DIR: str(tmp_path / "hb")})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split("\n")[:4] == ["(1.0, 0.0) (0.0, 0.0) True", "0 6 6", "1 4 5", "True"]


CHILD = """
    import os, sys, time
    from slurmft.checkpoint.heartbeat import heartbeat_from_env

    def stuck_in_collective():
        time.sleep(60)

    hb = heartbeat_from_env(int(sys.argv[1]))
    for step in range(int(sys.argv[2])):
        hb.beat(step)
        time.sleep(float(sys.argv[3]))
    print("stuck", flush=True)
    stuck_in_collective()
"""


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def test_a_rank_that_stops_beating_dumps_its_stacks_and_the_detector_reports_them(tmp_path):
    hb_dir = tmp_path / "hb"
    env = {**os.environ, ENV_DIR: str(hb_dir), ENV_DUMP_AFTER: "0.3"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), "1", "5", "0.01"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stuck"
        stacks = hb_dir / "rank-1.stacks"
        wait_for(lambda: b"stuck_in_collective" in stacks.read_bytes(), 5, "stacks dumped")
        now = [0.0]
        det = HangDetector(hb_dir, 2, timeout=10, startup_grace=60, clock=lambda: now[0])
        assert det.poll() == []
        now[0] = 61.0                   # rank 1 unchanged for 61 s, rank 0 never beat
        stuck = {s.rank: s for s in det.poll()}
        assert set(stuck) == {0, 1}
        one = stuck[1]
        assert (one.last_step, one.seconds_without_progress, one.pid) == (4, 61.0, proc.pid)
        assert one.stacks.startswith("Timeout (") and one.stacks.count("Timeout (") == 1
        assert "in stuck_in_collective" in one.stacks and "(most recent call first)" in one.stacks
        assert stuck[0].last_step is None and stuck[0].stacks is None
        assert "no stacks (process stopped?)" in stuck[0].describe()
    finally:
        proc.kill()
        proc.wait()


def test_no_stacks_while_beating_and_a_dump_is_cleared_by_the_next_beat(tmp_path):
    code = """
        import os, sys, time
        from slurmft.checkpoint.heartbeat import Heartbeat
        hb = Heartbeat(sys.argv[1], 0, dump_after=0.4)
        end = time.monotonic() + 1.0
        step = 0
        while time.monotonic() < end:          # beats every 10 ms: never a dump
            hb.beat(step); step += 1; time.sleep(0.01)
        size = lambda: os.path.getsize(hb.stacks_path)
        print(size())
        time.sleep(0.7)                        # a stall: dumped within 0.4 s
        print(size() > 0)
        hb.beat(step)                          # progress again: the old dump goes
        print(size())
        hb.close()
    """
    cp = run_child(code, str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["0", "True", "0"]


def test_a_failing_heartbeat_write_never_stops_the_training(tmp_path, monkeypatch, caplog):
    import errno

    from slurmft.checkpoint import heartbeat as hb_mod

    hb = Heartbeat(tmp_path, 0, dump_after=5.0)
    hb.beat(1)

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hb_mod.os, "pwrite", full)
    hb.beat(2)                               # no exception reaches the training loop
    hb.beat(3)
    hb.close()
    assert [r.getMessage() for r in caplog.records if "heartbeat of rank 0 stops" in
            r.getMessage()] == ["heartbeat of rank 0 stops: [Errno 28] No space left on device "
                                "(hang detection is off for it)"]
