"""Local cache + async upload to a mounted path and to host:path (real rsync, fake ssh);
uploads that fail and heal, and a mount that vanishes (faults injected into the destination)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading

import numpy as np
import pytest

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import DATA, Store, step_name
from slurmft.checkpoint.destinations import MARKER, MountedDestination, parse_remote
from slurmft.checkpoint.upload import STATUS_FILE, RetrySchedule, read_upload_status
from slurmft.core.errors import CheckpointError, DestinationLostError, HostNameError

# Retries without waiting; the timer never fires within a test (cycles run at save/close).
FAST = RetrySchedule(attempts=2, backoff_initial=0, backoff_max=0, cycle_interval=3600)


def state(step, n=1000):
    return {"w": np.full(n, step, np.float32), "step": step}


def policy(**kw):
    kw.setdefault("interval", 0)
    kw.setdefault("step_interval", 0)
    return CheckpointPolicy(**kw)


def test_parse_remote():
    r = parse_remote("alice@node-1.cluster:/ckpt/job 1")
    assert (r.user, r.host, r.path, r.target) == ("alice", "node-1.cluster", "/ckpt/job 1",
                                                  "alice@node-1.cluster")
    assert parse_remote("/shared/ckpt") is None
    assert parse_remote("./rel:dir") is None
    with pytest.raises(HostNameError):
        parse_remote("-oProxyCommand=x:/p")
    with pytest.raises(HostNameError):
        parse_remote("bad_host:/p")


def test_cache_then_upload_verified(tmp_path):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    events, backlog_seen = [], []
    def on_event(name, fields):
        events.append(name)
        if name == "backlog":
            backlog_seen.append(fields["count"])
    with CheckpointManager(shared, policy(keep_last=2), local_cache=cache, on_event=on_event) as mgr:
        for step in range(1, 5):
            mgr.save(state(step), step)
        mgr.wait(30)
        assert mgr.backlog == 0
        assert mgr.latest().step == 4
    assert max(backlog_seen) >= 1 and backlog_seen[-1] == 0
    assert events.count("upload") == 4
    assert Store(shared).latest_name() == step_name(4)
    assert [i.step for i in Store(shared).list()] == [4, 3]
    Store(shared).verify(step_name(4))
    assert [i.step for i in Store(cache).list()] == [4, 3]


def test_upload_is_async_and_backlog_observable(tmp_path):
    gate = threading.Event()
    class SlowDest(MountedDestination):
        def upload(self, src, info):
            gate.wait(10)
            super().upload(src, info)
    mgr = CheckpointManager(tmp_path / "shared", policy(), local_cache=tmp_path / "cache")
    mgr._dest = SlowDest(tmp_path / "shared")
    mgr._uploader.destination = mgr._dest
    handles = [mgr.save(state(s), s) for s in (1, 2)]
    handles[1].future.exception(0.01) if handles[1].done() else None
    assert not handles[1].done()          # training returned before the upload
    assert mgr.backlog == 2
    gate.set()
    mgr.close(30)
    assert mgr.backlog == 0 and all(h.done() for h in handles)


def test_upload_failure_reported_at_close(tmp_path):
    shared = tmp_path / "shared"
    shared.write_text("a file, not a directory")
    mgr = CheckpointManager(shared, policy(), local_cache=tmp_path / "cache", upload_retry=FAST)
    h = mgr.save(state(1), 1)
    with pytest.raises(CheckpointError):
        h.result(30)
    with pytest.raises(CheckpointError, match="upload of step_000000000001 .* failed"):
        mgr.close(30)


def test_corruption_on_arrival_detected(tmp_path):
    class Corrupting(MountedDestination):
        def upload(self, src, info):
            real = shutil.copyfile
            def bad_copy(a, b, **kw):
                r = real(a, b, **kw)
                if str(b).endswith(DATA):
                    with open(b, "r+b") as f:
                        f.seek(5)
                        f.write(b"\xff")
                return r
            shutil.copyfile = bad_copy
            try:
                super().upload(src, info)
            finally:
                shutil.copyfile = real
    mgr = CheckpointManager(tmp_path / "shared", policy(), local_cache=tmp_path / "cache",
                            upload_retry=FAST)
    mgr._dest = Corrupting(tmp_path / "shared")
    mgr._uploader.destination = mgr._dest
    h = mgr.save(state(1), 1)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        h.result(30)
    assert Store(tmp_path / "shared").latest_name() is None     # never became latest
    with pytest.raises(CheckpointError):
        mgr.close(30)


def test_load_prefers_newest_valid_across_cache_and_shared(tmp_path):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    with CheckpointManager(shared, policy(), local_cache=cache) as mgr:
        mgr.save(state(1), 1)
        mgr.save(state(2), 2)
    # a node restarted elsewhere has no cache: loads from shared
    with CheckpointManager(shared, policy(), local_cache=tmp_path / "new-cache") as mgr:
        assert mgr.load()["step"] == 2


@pytest.fixture
def fake_ssh(tmp_path):
    """A remote shell that runs the command locally (rsync's protocol still runs for real)."""
    script = tmp_path / "fake-ssh"
    script.write_text('#!/bin/sh\n# fake-ssh HOST CMD...: run CMD here, like ssh would remotely\n'
                      'shift\nexec sh -c "$*"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
def test_rsync_destination_round_trip(tmp_path, fake_ssh):
    remote_dir = tmp_path / "remote dir"          # a space: quoting must hold
    spec = f"node1:{remote_dir}"
    with CheckpointManager(spec, policy(full_interval=1000), local_cache=tmp_path / "cache",
                           rsh=(fake_ssh,)) as mgr:
        mgr.save(state(1), 1)
        mgr.save(state(2), 2)
    assert Store(remote_dir).latest_name() == step_name(2)
    Store(remote_dir).verify(step_name(2))        # the diff and its base both arrived
    assert not [n for n in os.listdir(remote_dir) if n.startswith(".tmp-")]
    # resume on a fresh node: fetch latest (+ its base) from the remote
    with CheckpointManager(spec, policy(), local_cache=tmp_path / "cache2", rsh=(fake_ssh,)) as mgr:
        loaded = mgr.load()
    assert loaded["step"] == 2 and np.array_equal(loaded["w"], np.full(1000, 2, np.float32))


def test_atexit_awaits_pending_upload(tmp_path):
    """A script that never calls close(): the interpreter's exit still waits for the upload."""
    import subprocess
    import sys
    script = tmp_path / "s.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy\n"
        "from slurmft.checkpoint.destinations import MountedDestination\n"
        "class Slow(MountedDestination):\n"
        "    def upload(self, src, info):\n"
        "        time.sleep(0.5)\n"
        "        super().upload(src, info)\n"
        "m = CheckpointManager(sys.argv[1], CheckpointPolicy(), local_cache=sys.argv[2])\n"
        "m._dest = Slow(sys.argv[1]); m._uploader.destination = m._dest\n"
        "m.save({'w': np.ones(10)}, 3)\n"
        "print('backlog', m.backlog, flush=True)\n")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "shared"), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "backlog 1" in out.stdout
    assert Store(tmp_path / "shared").latest_name() == step_name(3)


def test_pipelined_save_round_trip(tmp_path):
    mgr = CheckpointManager(tmp_path, policy(full_interval=1000), pipeline=True)
    big = {"a": np.arange(300_000, dtype=np.float64), "b": [np.ones((50, 50))], "n": 1}
    mgr.reserve(big)
    mgr.save(big, 1, wait=True)
    big["a"][:10] = -1
    info = mgr.save(big, 2, wait=True).result()
    mgr.close()
    assert info.kind == "diff" and info.bytes_written < 300_000 * 8 + 64
    st = Store(tmp_path)
    loaded = st.read_state(st.verify(step_name(2)))
    assert np.array_equal(loaded["a"], big["a"]) and loaded["n"] == 1


def test_interrupted_upload_ignored_and_cleaned(tmp_path):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    with CheckpointManager(shared, policy(), local_cache=cache) as mgr:
        mgr.save(state(1), 1)
    half = shared / ".tmp-up-step_000000000002-abcd1234"      # a crash during a copy
    shutil.copytree(cache / step_name(1), half)
    (half / DATA).write_bytes(b"partial")
    assert [i.step for i in Store(shared).list()] == [1]
    with CheckpointManager(shared, policy(), local_cache=tmp_path / "other") as mgr:
        assert not half.exists()
        assert mgr.load()["step"] == 1


def test_non_writer_cannot_save(tmp_path):
    mgr = CheckpointManager(tmp_path, policy(), writer=False)
    with pytest.raises(CheckpointError, match="does not write"):
        mgr.save(state(1), 1)
    mgr.close()


# ---- uploads that fail, retry and heal -------------------------------------------------

class FlakyDestination(MountedDestination):
    """Every upload attempt fails while ``down`` is set (an unreachable file server)."""

    def __init__(self, root):
        super().__init__(root)
        self.down = True
        self.attempts = 0

    def upload(self, src, info):
        self.attempts += 1
        if self.down:
            raise OSError(5, "Input/output error (injected)")
        super().upload(src, info)


def flaky_manager(tmp_path, **kw):
    shared = tmp_path / "shared"
    mgr = CheckpointManager(shared, policy(**kw), local_cache=tmp_path / "cache",
                            upload_retry=FAST)
    dest = FlakyDestination(shared)
    mgr._dest = mgr._uploader.destination = dest
    return mgr, dest, shared


def upload_errors(caplog):
    return [r for r in caplog.records
            if r.name == "slurmft.checkpoint.upload" and r.levelno >= logging.ERROR]


def test_failed_uploads_retry_and_drain_when_the_destination_returns(tmp_path, caplog):
    mgr, dest, shared = flaky_manager(tmp_path)
    handles = [mgr.save(state(s), s) for s in (1, 2, 3)]
    for h in handles:
        with pytest.raises(CheckpointError, match="Input/output error"):
            h.result(30)
    assert dest.attempts >= 2                       # retried within the cycle (backoff)
    assert mgr.backlog == 3 and Store(shared).latest_name() is None
    status = read_upload_status(tmp_path / "cache")
    assert status.state == "failing" and status.backlog == 3 and status.failures_total >= 2
    assert "Input/output error" in status.last_error and status.backlog_bytes > 0
    assert len(upload_errors(caplog)) == 1           # one line for healthy -> failing
    assert mgr.failures and "Input/output error" in mgr.failures[-1]

    dest.down = False                                # the file server is back
    h4 = mgr.save(state(4), 4)
    assert h4.result(30).step == 4
    mgr.close(30)                                    # nothing left to raise
    assert mgr.backlog == 0
    assert [i.step for i in Store(shared).list()] == [4, 3, 2, 1]   # the backlog drained
    assert Store(shared).latest_name() == step_name(4)
    status = read_upload_status(tmp_path / "cache")
    assert (status.state, status.backlog, status.newest_uploaded) == ("healthy", 0, True)
    assert status.last_success_time is not None
    assert mgr.failures == []                        # the error cleared
    assert len(upload_errors(caplog)) == 1           # recovery is not another error
    assert any("work again" in r.getMessage() for r in caplog.records)


def test_wait_retries_the_backlog_once_more(tmp_path):
    mgr, dest, shared = flaky_manager(tmp_path)
    with pytest.raises(CheckpointError):
        mgr.save(state(1), 1).result(30)
    dest.down = False
    mgr.wait(30)                                     # no new save: wait() runs the cycle
    assert Store(shared).latest_name() == step_name(1) and mgr.backlog == 0
    mgr.close()


def test_an_upload_that_stays_failed_is_visible_and_close_raises(tmp_path, caplog):
    mgr, dest, shared = flaky_manager(tmp_path)
    for s in (1, 2, 3):
        with pytest.raises(CheckpointError):
            mgr.save(state(s), s).result(30)
    with pytest.raises(CheckpointError, match="newest checkpoint step_000000000003 not uploaded"):
        mgr.close(30)
    assert len(upload_errors(caplog)) == 1           # not one per attempt or per save
    doc = json.loads((tmp_path / "cache" / STATUS_FILE).read_text())
    assert doc["state"] == "failing" and doc["backlog"] == 3 and not doc["newest_uploaded"]
    assert doc["failures_total"] >= 3 * FAST.attempts
    # the checkpoints wait in the local cache, not rotated out
    assert [i.step for i in Store(tmp_path / "cache").list()] == [3, 2, 1]


def test_close_does_not_raise_when_only_an_older_checkpoint_is_missing(tmp_path, caplog):
    mgr, dest, shared = flaky_manager(tmp_path)
    for s in (1, 2):
        with pytest.raises(CheckpointError):
            mgr.save(state(s), s).result(30)
    with open(tmp_path / "cache" / step_name(1) / DATA, "r+b") as f:   # its local copy rots
        f.write(b"\xff\xff")
    dest.down = False
    mgr.close(30)                                    # step 1 cannot be uploaded, step 2 is
    assert Store(shared).names() == [step_name(2)]
    assert any("step_000000000001 will not be uploaded" in r.getMessage() for r in caplog.records)


def test_backlog_is_bounded_by_keep_last_while_failing(tmp_path):
    mgr, dest, shared = flaky_manager(tmp_path, keep_last=2)
    for s in range(1, 6):
        with pytest.raises(CheckpointError):
            mgr.save(state(s), s).result(30)
    assert mgr._uploader.pending_names() == [step_name(4), step_name(5)]
    dest.down = False
    mgr.close(30)
    assert [i.step for i in Store(shared).list()] == [5, 4]


def test_failed_save_is_logged_once_not_again_at_exit(tmp_path, caplog):
    target = tmp_path / "file"
    target.write_text("not a directory")
    mgr = CheckpointManager(target, policy())
    with pytest.raises(CheckpointError):
        mgr.save(state(1), 1).result(30)             # the caller caught it
    mgr._close_at_exit()                             # what the interpreter's exit runs
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "checkpoint of step 1 failed" in errors[0]
    assert not any("at exit" in e for e in errors)


# ---- a mounted destination that vanishes --------------------------------------------------

def test_vanished_destination_is_not_recreated(tmp_path, caplog):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    mgr = CheckpointManager(shared, policy(), local_cache=cache, upload_retry=FAST)
    mgr.save(state(1), 1).result(30)
    assert (shared / MARKER).is_file()               # written at first use
    shutil.rmtree(shared)                            # what a lost mount looks like
    with pytest.raises(DestinationLostError, match="is gone") as err:
        mgr.save(state(2), 2).result(30)
    assert "Mount it again" in str(err.value)
    assert not shared.exists()                       # NOT recreated on the bare mountpoint
    assert read_upload_status(cache).state == "failing"
    with pytest.raises(DestinationLostError, match="not uploaded"):
        mgr.close(30)
    assert not shared.exists()
    assert len(upload_errors(caplog)) == 1


def test_replaced_destination_is_refused_and_a_remount_resumes(tmp_path):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    mgr = CheckpointManager(shared, policy(), local_cache=cache, upload_retry=FAST)
    mgr.save(state(1), 1).result(30)
    token = (shared / MARKER).read_text()
    shutil.rmtree(shared)
    shared.mkdir()                                   # an empty directory in its place
    with pytest.raises(DestinationLostError, match="emptied or replaced"):
        mgr.save(state(2), 2).result(30)
    assert os.listdir(shared) == []                  # nothing written into it
    (shared / MARKER).write_text(token)              # the real file system is back
    mgr.close(30)
    assert Store(shared).latest_name() == step_name(2)
