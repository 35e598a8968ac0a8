"""Lineage: a run that fell back (or went back by choice) owns `latest`, an abandoned branch
is never resumed and goes first, a name never stands for two different data, and load and
verify agree (issue 19, defect 1)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from slurmft.checkpoint.lineage import trace
from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import DATA, MANIFEST, CheckpointInfo, Store, parse_name, step_name
from slurmft.core.errors import CorruptCheckpointError

N = 4096


def state(step: int, run: int = 1) -> dict:
    """A big array that changes every save, a frozen one a diff skips, and the run."""
    return {"step": step, "run": run,
            "big": np.full(N, step * 10 + run, dtype=np.float64),
            "frozen": np.ones(N, dtype=np.float32)}


def manager(path, **policy) -> CheckpointManager:
    policy.setdefault("interval", 0)
    policy.setdefault("step_interval", 0)
    policy.setdefault("keep_last", 10)
    return CheckpointManager(path, CheckpointPolicy(**policy), clock=lambda: 0.0)


def save(mgr: CheckpointManager, step: int, run: int, full: bool) -> CheckpointInfo:
    return mgr.save(state(step, run), step, full=full, wait=True).result()


def flip(path, pos: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))


def run1(root) -> dict[int, CheckpointInfo]:
    """Run 1: full 10, diffs 20 and 30, full 40, diffs 50 and 60."""
    with manager(root, full_interval=1000) as mgr:
        return {step: save(mgr, step, 1, full=step in (10, 40))
                for step in (10, 20, 30, 40, 50, 60)}


def verify_all(store: Store) -> dict[str, str]:
    out = {}
    for name in store.names():
        try:
            store.verify(name)
            out[name] = "ok"
        except CorruptCheckpointError as exc:
            out[name] = str(exc)
    return out


def no_rotation(monkeypatch):
    """Run 2 is killed right after it published (before its rotation): run 1's abandoned
    branch is still on disk when run 3 starts."""
    monkeypatch.setattr(CheckpointManager, "_rotate", lambda self, info: None)


def test_issue19_run3_resumes_run2_not_run1s_abandoned_branch(tmp_path, caplog, monkeypatch):
    root = tmp_path / "ckpt"
    infos = run1(root)
    assert [infos[s].kind for s in (10, 20, 30, 40, 50, 60)] == \
        ["full", "diff", "diff", "full", "diff", "diff"]
    assert infos[60].base == step_name(40) and infos[30].base == step_name(10)
    flip(root / step_name(40) / DATA)

    # Run 2 falls back to 30 (40 is corrupt, 50 and 60 build on it) and saves a new full 40.
    no_rotation(monkeypatch)
    with manager(root, full_interval=1000) as mgr:
        with caplog.at_level(logging.WARNING, logger="slurmft"):
            loaded = mgr.load()
        assert loaded["step"] == 30 and loaded["run"] == 1
        assert "falling back to checkpoint step_000000000030" in caplog.text
        new40 = save(mgr, 40, 2, full=True)
        run2 = mgr.run_id
    assert new40.name != step_name(40)             # the corrupt run-1 name is not reused
    assert parse_name(new40.name) == 40
    assert new40.run == run2 and new40.parent == step_name(30)
    assert new40.parent_run == infos[30].run and new40.parent_step == 30
    store = Store(root)
    assert store.latest_name() == new40.name        # run 2 owns latest from its first save

    # Run 3 loads run 2's data: never run 1's 60 (nor anything else of that branch).
    monkeypatch.undo()
    with manager(root) as mgr:
        got = mgr.load()
        assert (got["step"], got["run"]) == (40, 2)
        assert np.array_equal(got["big"], np.full(N, 402, np.float64))
        assert mgr.latest_loaded.name == new40.name
        lin = store.lineage()
        assert lin.head.name == new40.name
        assert {i.name for i in lin.abandoned} == {step_name(s) for s in (40, 50, 60)}
        assert [i.step for i in lin.branch] == [40, 30, 20, 10]
        # verify agrees with load: run 1's 40/50/60 are corrupt, all load may use is ok.
        status = verify_all(store)
        assert status[new40.name] == "ok"
        assert all(status[step_name(s)] == "ok" for s in (10, 20, 30))
        assert all(status[step_name(s)] != "ok" for s in (40, 50, 60))
        assert store.find_valid().name == new40.name
        # Run 3's first save rotates: the abandoned branch goes first, all of it.
        save(mgr, 50, 3, full=True)
    assert not {step_name(s) for s in (40, 50, 60)} & set(store.names())
    assert all(v == "ok" for v in verify_all(store).values())


def test_identical_data_after_fallback_still_never_resumes_the_abandoned_branch(tmp_path, monkeypatch):
    """Had run 2's arrays been identical, run 3 must still not resume run 1's 60."""
    root = tmp_path / "ckpt"
    run1(root)
    flip(root / step_name(40) / DATA)
    no_rotation(monkeypatch)
    with manager(root, full_interval=1000) as mgr:
        assert mgr.load()["step"] == 30
        mgr.save(state(40, 1), 40, full=True, wait=True)       # the same bytes as run 1's
    # Repair run 1's 40: its 50 and 60 verify again, but they are on an abandoned branch.
    flip(root / step_name(40) / DATA)
    assert Store(root).is_valid(step_name(60))
    with manager(root) as mgr:
        assert mgr.load()["step"] == 40
        assert mgr.latest_loaded.name != step_name(40)


def test_going_back_by_choice_owns_latest(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    with manager(root) as mgr:
        for s in (1, 2, 3):
            save(mgr, s, 1, full=True)
    no_rotation(monkeypatch)
    with manager(root) as mgr:
        mgr.load(step_name(1))                      # the user picks an older one
        info = save(mgr, 2, 2, full=True)
    assert Store(root).latest_name() == info.name and info.parent == step_name(1)
    assert Store(root).is_valid(step_name(3))       # run 1's 3 verifies, but is abandoned
    with manager(root) as mgr:
        got = mgr.load()
    assert (got["step"], got["run"]) == (2, 2)


def test_a_name_is_never_replaced(tmp_path):
    root = tmp_path / "ckpt"
    with manager(root) as mgr:
        first = save(mgr, 5, 1, full=True)
        second = save(mgr, 5, 2, full=True)          # the same step saved again
        third = save(mgr, 5, 3, full=True)
    assert len({first.name, second.name, third.name}) == 3
    store = Store(root)
    for info, run in ((first, 1), (second, 2), (third, 3)):
        assert store.read_state(store.verify(info.name))["run"] == run


def test_a_diff_refuses_a_base_rewritten_under_its_name(tmp_path):
    """Even if a base were rewritten under the same name (an old slurmft, a copy by hand),
    its diffs name the base by manifest checksum: verify and load refuse them alike."""
    root = tmp_path / "ckpt"
    with manager(root, full_interval=1000) as mgr:
        save(mgr, 1, 1, full=True)
        save(mgr, 2, 1, full=False)
    other = tmp_path / "other"
    with manager(other) as mgr:
        save(mgr, 1, 9, full=True)
    for f in (DATA, "meta.pkl", MANIFEST):
        (root / step_name(1) / f).write_bytes((other / step_name(1) / f).read_bytes())
    store = Store(root)
    store.verify(step_name(1))
    with pytest.raises(CorruptCheckpointError, match="not the checkpoint it was written against"):
        store.verify(step_name(2))
    # load refuses it too; the foreign step 1 is another run's branch, so nothing is left
    with manager(root) as mgr, pytest.raises(CorruptCheckpointError, match="no valid checkpoint"):
        mgr.load()


def test_array_digest_mismatch_falls_back_and_verify_agrees(tmp_path, caplog):
    """An array whose bytes do not match its digest while the file checksums do (a writer
    bug, or data altered with its manifest): verify says corrupt and load falls back."""
    root = tmp_path / "ckpt"
    with manager(root, full_interval=1000) as mgr:
        save(mgr, 1, 1, full=True)
        save(mgr, 2, 1, full=True)
    name = step_name(2)
    mpath = root / name / MANIFEST
    doc = json.loads(mpath.read_text())
    doc["arrays"]["/big"]["digest"] = "xxh3:" + "0" * 32
    from slurmft.checkpoint import manifest
    doc["manifest_checksum"] = manifest.manifest_checksum(doc)
    mpath.write_text(json.dumps(doc))
    with pytest.raises(CorruptCheckpointError, match="array /big does not match its digest"):
        Store(root).verify(name)
    with manager(root) as mgr, caplog.at_level(logging.WARNING, logger="slurmft"):
        assert mgr.load()["step"] == 1
    assert "falling back to checkpoint step_000000000001" in caplog.text


def test_read_failure_after_verify_falls_back(tmp_path, monkeypatch):
    """Whatever read_state finds wrong, load goes on to the next checkpoint."""
    root = tmp_path / "ckpt"
    with manager(root) as mgr:
        save(mgr, 1, 1, full=True)
        save(mgr, 2, 1, full=True)
    real = Store.read_state

    def flaky(self, info):
        if info.step == 2:
            raise CorruptCheckpointError(f"{info.path}: array /big does not match its digest")
        return real(self, info)

    monkeypatch.setattr(Store, "read_state", flaky)
    with manager(root) as mgr:
        assert mgr.load()["step"] == 1


def test_load_after_save_starts_a_new_branch(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    no_rotation(monkeypatch)
    with manager(root) as mgr:
        a = save(mgr, 1, 1, full=True)
        save(mgr, 2, 1, full=True)
        mgr.load(a.name)
        c = save(mgr, 2, 2, full=True)
    assert c.run != a.run and c.parent == a.name
    lin = Store(root).lineage()
    assert [i.name for i in lin.abandoned] == [step_name(2)]


def test_trace_without_latest_uses_the_newest_written():
    def info(name, run, time, parent="", parent_run="", parent_step=-1):
        return CheckpointInfo(name=name, path="", step=parse_name(name), time=time, run=run,
                              parent=parent, parent_run=parent_run, parent_step=parent_step)
    infos = [info(step_name(10), "a", 1), info(step_name(20), "a", 2), info(step_name(30), "a", 3),
             info(step_name(20) + ".b", "b", 4, step_name(10), "a", 10)]
    lin = trace(infos)
    assert lin.head.run == "b"
    assert [i.name for i in lin.branch] == [step_name(20) + ".b", step_name(10)]
    assert {i.name for i in lin.abandoned} == {step_name(20), step_name(30)}
    # latest wins over write time
    lin = trace(infos, [step_name(30)])
    assert lin.head.name == step_name(30)
    assert [i.name for i in lin.abandoned] == [step_name(20) + ".b"]


def test_old_checkpoints_without_lineage_are_one_run(tmp_path):
    root = tmp_path / "ckpt"
    with manager(root) as mgr:
        for s in (1, 2):
            save(mgr, s, 1, full=True)
    from slurmft.checkpoint import manifest
    for s in (1, 2):                      # strip the lineage fields, as an old slurmft wrote
        mpath = root / step_name(s) / MANIFEST
        doc = json.loads(mpath.read_text())
        for k in ("run", "parent", "parent_run", "parent_step", "base_checksum"):
            doc.pop(k)
        doc["manifest_checksum"] = manifest.manifest_checksum(doc)
        mpath.write_text(json.dumps(doc))
    with manager(root) as mgr:
        assert mgr.load()["step"] == 2
        info = save(mgr, 3, 2, full=True)
    assert info.parent == step_name(2) and info.parent_run == ""
    assert [i.step for i in Store(root).lineage().branch] == [3, 2, 1]


def test_abandoned_branch_is_rotated_out_first(tmp_path):
    root = tmp_path / "ckpt"
    run1(root)
    flip(root / step_name(40) / DATA)
    with manager(root, full_interval=1000, keep_last=2) as mgr:
        assert mgr.load()["step"] == 30
        new40 = save(mgr, 40, 2, full=True)
    names = set(Store(root).names())
    # abandoned 40/50/60 gone; kept: new 40, 30 and the base 10 that diff 30 needs
    assert names == {new40.name, step_name(30), step_name(10)}


def test_a_run_killed_before_it_published_latest_still_continues_the_branch():
    """Run b resumed from run a's latest and wrote 30 but died before moving latest: 30 is
    the newest of the branch, not abandoned (else rotation would delete verified work)."""
    def info(name, run, time, parent="", parent_run="", parent_step=-1):
        return CheckpointInfo(name=name, path="", step=parse_name(name), time=time, run=run,
                              parent=parent, parent_run=parent_run, parent_step=parent_step)
    infos = [info(step_name(10), "a", 1), info(step_name(20), "a", 2),
             info(step_name(30), "b", 3, step_name(20), "a", 20),
             info(step_name(15) + ".c", "c", 4, step_name(10), "a", 10)]   # went back: no
    lin = trace(infos, [step_name(20)])
    assert lin.head.name == step_name(30)
    assert [i.step for i in lin.branch] == [30, 20, 10]
    assert [i.name for i in lin.abandoned] == [step_name(15) + ".c"]


def test_a_broken_chain_keeps_everything_below_the_break():
    """At a destination, run b's checkpoints were never uploaded: run c resumed from b's 25,
    so a's 10 and 20 (older than 25) may be its ancestors and are not abandoned."""
    def info(name, run, time, parent="", parent_run="", parent_step=-1):
        return CheckpointInfo(name=name, path="", step=parse_name(name), time=time, run=run,
                              parent=parent, parent_run=parent_run, parent_step=parent_step)
    infos = [info(step_name(10), "a", 1), info(step_name(20), "a", 2),
             info(step_name(30), "c", 5, step_name(25), "b", 25)]
    lin = trace(infos, [step_name(30)])
    assert [i.step for i in lin.branch] == [30, 20, 10] and not lin.abandoned


def test_a_fresh_start_in_a_used_directory_deletes_none_of_the_old_history(tmp_path):
    """A run that resumes nothing, pointed at a directory that already holds another run's
    checkpoints, leaves them alone: they are another history (Lineage.foreign), not a branch
    this run abandoned. Its own rotation still keeps only its keep_last newest."""
    root = tmp_path / "ckpt"
    old = run1(root)
    with manager(root, keep_last=2) as mgr:            # loads nothing: a fresh start
        for step in (1, 2, 3, 4):
            save(mgr, step, 2, full=True)
    names = set(Store(root).names())
    assert {i.name for i in old.values()} <= names
    assert step_name(4) in names and step_name(3) in names
    assert step_name(1) not in names and step_name(2) not in names
    lin = trace(Store(root).list(), [Store(root).latest_name()])
    assert lin.head.step == 4
    assert {i.name for i in lin.foreign} == {i.name for i in old.values()}
    with manager(root) as mgr:                          # a resume continues the new run
        loaded = mgr.load()
    assert loaded["step"] == 4 and loaded["run"] == 2
