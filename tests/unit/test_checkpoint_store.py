"""Atomic saves, manifests, verification, fallback, rotation, differential saves."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import DATA, MANIFEST, META, Store, step_name
from slurmft.core.errors import CheckpointError, CorruptCheckpointError


def make_state(step: int, n: int = 256) -> dict:
    return {
        "step": step,
        "w": np.full(n, step, dtype=np.float32),
        "layers": [np.arange(n, dtype=np.int64) * step, {"b": np.float64(step)}],
        "frozen": np.ones(n, dtype=np.float16),     # never changes: a diff skips it
        "name": "model",
    }


def check_state(state: dict, step: int) -> None:
    assert state["step"] == step
    assert np.array_equal(state["w"], np.full(256, step, dtype=np.float32))
    assert np.array_equal(state["layers"][0], np.arange(256, dtype=np.int64) * step)
    assert state["layers"][1]["b"] == step
    assert state["name"] == "model"


def manager(path, clock=None, **policy) -> CheckpointManager:
    policy.setdefault("interval", 0)
    policy.setdefault("step_interval", 0)
    return CheckpointManager(path, CheckpointPolicy(**policy),
                             clock=clock or (lambda: 0.0))


def test_round_trip_and_manifest(tmp_path):
    with manager(tmp_path) as mgr:
        info = mgr.save(make_state(7), 7, wait=True).result()
        assert info.verified and info.kind == "full"
        assert mgr.latest().name == step_name(7)
        check_state(mgr.load(), 7)
    doc = json.loads((tmp_path / step_name(7) / MANIFEST).read_text())
    assert doc["step"] == 7 and doc["world_size"] == 1
    assert {f["name"] for f in doc["files"]} == {DATA, META}
    assert all(f["checksum"].startswith("xxh3:") for f in doc["files"])
    assert doc["files"][0]["size"] == (tmp_path / step_name(7) / DATA).stat().st_size


def test_sha256_selectable(tmp_path):
    with manager(tmp_path, checksum="sha256") as mgr:
        info = mgr.save(make_state(1), 1, wait=True).result()
    assert all(f.checksum.startswith("sha256:") for f in info.files)
    Store(tmp_path).verify(info.name)   # the manifest says which algorithm to use


def test_load_empty_is_none(tmp_path):
    with manager(tmp_path / "nothing") as mgr:
        assert mgr.load() is None and mgr.latest() is None and mgr.list() == []


def _flip_byte(path: Path, pos: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _remove(path: Path) -> None:
    path.unlink()


def _break_manifest(path: Path) -> None:
    path.write_text(path.read_text()[:-20])


def _edit_manifest(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["step"] = doc["step"]              # same step, but change a size:
    doc["files"][0]["size"] += 1
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage,target,reason", [
    (_flip_byte, DATA, "checksum mismatch"),
    (_flip_byte, META, "checksum mismatch"),
    (_truncate, DATA, "truncated"),
    (_remove, DATA, "file missing"),
    (_remove, MANIFEST, "manifest missing"),
    (_break_manifest, MANIFEST, "not valid JSON"),
    (_edit_manifest, MANIFEST, "manifest checksum mismatch"),
])
def test_corruption_falls_back(tmp_path, caplog, damage, target, reason):
    events = []
    with CheckpointManager(tmp_path, CheckpointPolicy(), on_event=lambda e, f: events.append((e, f))) as mgr:
        for step in (1, 2, 3):
            mgr.save(make_state(step), step, wait=True)
    damage(tmp_path / step_name(3) / target)
    with pytest.raises(CorruptCheckpointError, match=reason):
        Store(tmp_path).verify(step_name(3))
    with CheckpointManager(tmp_path, CheckpointPolicy(), on_event=lambda e, f: events.append((e, f))) as mgr:
        with caplog.at_level("WARNING", logger="slurmft"):
            state = mgr.load()
        check_state(state, 2)
    assert "falling back to checkpoint step_000000000002" in caplog.text
    assert reason in caplog.text
    assert ("fallback", {"name": step_name(2), "step": 2}) in events
    assert any(e == "verify_failed" for e, _ in events)


def test_all_corrupt_raises(tmp_path):
    with manager(tmp_path) as mgr:
        mgr.save(make_state(1), 1, wait=True)
    _flip_byte(tmp_path / step_name(1) / DATA)
    with manager(tmp_path) as mgr, pytest.raises(CorruptCheckpointError, match="no valid checkpoint"):
        mgr.load()


def test_rotation_keeps_last_and_latest(tmp_path):
    with manager(tmp_path, keep_last=2) as mgr:
        for step in range(1, 6):
            mgr.save(make_state(step), step, wait=True)
        assert [i.step for i in mgr.list()] == [5, 4]
        assert mgr.latest().step == 5
    # prune never removes the checkpoint 'latest' names, even if newer (unverified) ones exist
    store = Store(tmp_path)
    store.set_latest(step_name(4))
    assert store.prune(1) == []
    assert [i.step for i in store.list()] == [5, 4]


def test_rotation_keeps_base_of_kept_diff(tmp_path):
    with manager(tmp_path, keep_last=2, full_interval=1000) as mgr:
        for step in range(1, 6):
            mgr.save(make_state(step), step, wait=True)
        infos = mgr.list()
    assert [(i.step, i.kind) for i in infos] == [(5, "diff"), (4, "diff"), (1, "full")]
    assert infos[0].base == step_name(1)


def test_differential_round_trip(tmp_path):
    clock = [0.0]
    with manager(tmp_path, clock=lambda: clock[0], full_interval=60) as mgr:
        full = mgr.save(make_state(1), 1, wait=True).result()
        clock[0] += 15 * 60
        diff = mgr.save(make_state(2), 2, wait=True).result()
        clock[0] += 50 * 60                  # 65 min since the full one: full again
        full2 = mgr.save(make_state(3), 3, wait=True).result()
    assert (full.kind, diff.kind, full2.kind) == ("full", "diff", "full")
    frozen = make_state(0)["frozen"].nbytes
    assert diff.bytes_written < full.bytes_written
    assert diff.bytes_written <= full.bytes_written - frozen
    assert diff.arrays["/frozen"].source == step_name(1)
    assert diff.bytes_total == full.bytes_total
    store = Store(tmp_path)
    state = store.read_state(store.verify(step_name(2)))
    check_state(state, 2)
    assert np.array_equal(state["frozen"], np.ones(256, np.float16))


def test_diff_with_corrupt_base_is_invalid(tmp_path):
    with manager(tmp_path, full_interval=1000) as mgr:
        mgr.save(make_state(1), 1, wait=True)
        mgr.save(make_state(2), 2, wait=True)
    _flip_byte(tmp_path / step_name(1) / DATA, 100)
    with pytest.raises(CorruptCheckpointError, match="its base is invalid"):
        Store(tmp_path).verify(step_name(2))


def test_leftovers_cleaned_and_ignored(tmp_path):
    with manager(tmp_path) as mgr:
        mgr.save(make_state(1), 1, wait=True)
    junk = tmp_path / ".tmp-step_000000000002-999-abc"
    junk.mkdir()
    (junk / DATA).write_bytes(b"half")
    assert [i.step for i in Store(tmp_path).list()] == [1]
    with manager(tmp_path) as mgr:
        assert not junk.exists()
        check_state(mgr.load(), 1)


def test_on_event_save(tmp_path):
    events = []
    with CheckpointManager(tmp_path, CheckpointPolicy(),
                           on_event=lambda e, f: events.append((e, f))) as mgr:
        mgr.save(make_state(4), 4, wait=True)
    saves = [f for e, f in events if e == "save"]
    assert saves and saves[0]["step"] == 4 and saves[0]["bytes_written"] > 0


def test_failed_save_reported_at_close(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    mgr = manager(target)
    handle = mgr.save(make_state(1), 1)
    with pytest.raises(CheckpointError):
        handle.result(10)
    with pytest.raises(CheckpointError, match="checkpoint of step 1 failed"):
        mgr.close()


# ---- crash atomicity -------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
    root, crash_at, diff = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def hook(label):
        if label == crash_at:
            os._exit(9)
    pol = CheckpointPolicy(keep_last=3, interval=0, step_interval=0,
                           full_interval=1000 if diff else 0)
    mgr = CheckpointManager(root, pol, clock=lambda: 0.0, fault_hook=hook)
    start = mgr.latest().step + 1 if mgr.latest() else 1
    print("ready", flush=True)
    for step in range(start, start + 100000):
        n = 64 + (step % 5) * 1000
        state = {"step": step, "w": np.full(n, step, np.float64),
                 "b": np.arange(n, dtype=np.int32) + step, "c": np.zeros(500)}
        mgr.save(state, step, wait=True)
""")

LABELS = ["data", "data-written", "meta", "manifest", "rename", "renamed", "latest", "latest-set"]


def _check_consistent(root: Path) -> int:
    store = Store(root)
    latest = store.latest_name()
    if latest is not None:
        info = store.verify(latest)        # latest only ever names a verified checkpoint
        assert info.name == latest
    with manager(root) as mgr:
        assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]
        for name in store.names():            # nothing half-written under a final name
            store.verify(name)
        state = mgr.load()
    if state is None:
        assert latest is None
        return 0
    step = state["step"]
    n = 64 + (step % 5) * 1000
    assert np.array_equal(state["w"], np.full(n, step, np.float64))
    assert np.array_equal(state["b"], np.arange(n, dtype=np.int32) + step)
    if latest is not None:
        assert step >= store.read_manifest(latest).step
    return step


def _run_child(root: Path, crash_at: str, diff: bool, kill_after: float | None) -> None:
    script = root.parent / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(root), crash_at, "1" if diff else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is not None:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("diff", [False, True])
def test_crash_at_every_point_of_a_save(tmp_path, diff):
    root = tmp_path / "ckpt"
    steps = []
    for label in LABELS:
        for _ in range(2):                 # crash twice at this point: second run resumes
            _run_child(root, label, diff, kill_after=None)
            steps.append(_check_consistent(root))
    assert steps == sorted(steps)          # progress is never lost


def test_random_sigkill_never_leaves_torn_latest(tmp_path):
    rng = random.Random(1234)
    root = tmp_path / "ckpt"
    last = 0
    for trial in range(50):
        _run_child(root, "never", diff=trial % 2 == 1, kill_after=rng.uniform(0.0, 0.08))
        step = _check_consistent(root)
        assert step >= last
        last = step
    assert last > 0


# ---- retention: never the last good checkpoint; all or nothing (issue 13) -----------------

def _valid_names(root: Path) -> list[str]:
    store = Store(root)
    return [n for n in store.names() if store.is_valid(n)]


def test_prune_keeps_the_only_valid_checkpoint(tmp_path):
    """Issue 13 defect 1: newest truncated, middle manifest broken, prune --keep-last 1."""
    with manager(tmp_path, keep_last=10) as mgr:
        for step in (1, 2, 3):
            mgr.save(make_state(step), step, wait=True)
    with open(tmp_path / step_name(3) / DATA, "r+b") as f:
        f.truncate(100)
    _break_manifest(tmp_path / step_name(2) / MANIFEST)
    store = Store(tmp_path)
    assert store.latest_name() == step_name(3)          # latest names the corrupt one
    assert store.prune(1) == []                          # corrupt ones do not count
    assert _valid_names(tmp_path) == [step_name(1)]
    with manager(tmp_path) as mgr:
        check_state(mgr.load(), 1)


def test_keep_last_counts_checkpoints_that_verify(tmp_path):
    with manager(tmp_path, keep_last=10) as mgr:
        for step in range(1, 6):
            mgr.save(make_state(step), step, wait=True)
    _flip_byte(tmp_path / step_name(5) / DATA)
    _truncate(tmp_path / step_name(4) / DATA)
    deleted = Store(tmp_path).prune(2)
    # 3 and 2 are the two newest that verify; the corrupt 5 and 4 are newer, so they stay
    # (a read error is never the reason to delete); 1 is older than both good ones: it goes.
    assert deleted == [step_name(1)]
    assert _valid_names(tmp_path) == [step_name(3), step_name(2)]


def test_rotation_after_a_save_never_removes_the_last_good_one(tmp_path):
    with manager(tmp_path, keep_last=1) as mgr:
        mgr.save(make_state(1), 1, wait=True)
    with manager(tmp_path, keep_last=10) as mgr:
        mgr.load()
        mgr.save(make_state(2), 2, wait=True)
    _truncate(tmp_path / step_name(2) / DATA)         # the newest (latest) is corrupt now
    Store(tmp_path).prune(1)
    assert _valid_names(tmp_path) == [step_name(1)]
    with manager(tmp_path, keep_last=1) as mgr:       # falls back to 1, saves a new 2
        check_state(mgr.load(), 1)
        info = mgr.save(make_state(2), 2, wait=True).result()
    assert info.name != step_name(2)                   # the corrupt name is not reused
    # the new 2 verifies: now the old 1 and the abandoned corrupt 2 may go
    assert Store(tmp_path).names() == [info.name]


def test_prune_is_all_or_nothing_and_reports_what_failed(tmp_path, monkeypatch):
    """Issue 13 defect 2: one checkpoint cannot be removed. Prune still tries every other
    one, leaves no half-deleted checkpoint under a real name, and raises PruneError."""
    from slurmft.checkpoint import retention
    from slurmft.core.errors import PruneError

    with manager(tmp_path, keep_last=10) as mgr:
        for step in range(1, 6):
            mgr.save(make_state(step), step, wait=True)
    real = retention.remove_tree

    def stuck(path):
        if f"del-{step_name(2)}-" in path.name:
            (path / META).unlink()                       # half done, then it fails
            raise PermissionError(1, "Operation not permitted")
        real(path)

    monkeypatch.setattr(retention, "remove_tree", stuck)
    with pytest.raises(PruneError) as err:
        Store(tmp_path).prune(2)
    exc = err.value
    assert sorted(exc.deleted) == [step_name(1), step_name(3)]
    assert list(exc.failed) == [step_name(2)] and "Operation not permitted" in exc.failed[step_name(2)]
    assert step_name(2) in str(exc) and "prune` again" in str(exc)
    store = Store(tmp_path)
    assert store.names() == [step_name(5), step_name(4)]
    for name in store.names():                           # nothing partial under a real name
        store.verify(name)
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-del-")]
    assert len(leftovers) == 1                           # hidden, never read
    monkeypatch.undo()
    assert store.cleanup() == leftovers


def test_prune_keeps_a_base_whose_diff_could_not_be_deleted(tmp_path, monkeypatch):
    from slurmft.core.errors import PruneError

    with manager(tmp_path, keep_last=10, full_interval=1000) as mgr:
        for step in range(1, 4):
            mgr.save(make_state(step), step, wait=True)
        mgr.save(make_state(4), 4, full=True, wait=True)
        mgr.save(make_state(5), 5, wait=True)
    real_rename = os.rename

    def refuse(src, dst):
        if Path(src).name == step_name(2):
            raise PermissionError(1, "Operation not permitted")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PruneError) as err:
        Store(tmp_path).prune(2)
    monkeypatch.undo()
    assert err.value.deleted == [step_name(3)]
    assert set(err.value.failed) == {step_name(2), step_name(1)}
    assert "could not be deleted" in err.value.failed[step_name(1)]
    store = Store(tmp_path)
    assert store.names() == [step_name(5), step_name(4), step_name(2), step_name(1)]
    store.verify(step_name(2))                            # still complete, with its base


def test_mounted_destination_prune_keeps_the_only_valid(tmp_path):
    from slurmft.checkpoint.destinations import MountedDestination

    with manager(tmp_path, keep_last=10) as mgr:
        for step in (1, 2, 3):
            mgr.save(make_state(step), step, wait=True)
    _truncate(tmp_path / step_name(3) / DATA)
    _flip_byte(tmp_path / step_name(2) / DATA)
    assert MountedDestination(tmp_path).prune(1) == []
    assert _valid_names(tmp_path) == [step_name(1)]
