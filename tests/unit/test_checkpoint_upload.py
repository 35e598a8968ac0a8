"""Local cache + async upload to a mounted path and to host:path (real rsync, fake ssh)."""

from __future__ import annotations

import os
import shutil
import stat
import threading

import numpy as np
import pytest

from slurmft.checkpoint.api import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import DATA, Store, step_name
from slurmft.checkpoint.upload import MountedDestination, parse_remote
from slurmft.errors import CheckpointError, HostNameError


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
    mgr = CheckpointManager(shared, policy(), local_cache=tmp_path / "cache")
    h = mgr.save(state(1), 1)
    with pytest.raises(CheckpointError):
        h.result(30)
    with pytest.raises(CheckpointError, match="upload of step_000000000001 failed"):
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
    mgr = CheckpointManager(tmp_path / "shared", policy(), local_cache=tmp_path / "cache")
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
        "from slurmft.checkpoint.api import CheckpointManager, CheckpointPolicy\n"
        "from slurmft.checkpoint.upload import MountedDestination\n"
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
