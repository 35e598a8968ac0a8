"""Fencing: a run left behind by a requeue cannot publish into the directory a newer run owns."""

from __future__ import annotations

import numpy as np
import pytest

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import Store, step_name
from slurmft.core.errors import CheckpointError, FencedError


def state(step):
    return {"w": np.full(16, step, dtype=np.float32), "step": step}


def test_the_newer_run_fences_off_the_older_one(tmp_path):
    old = CheckpointManager(tmp_path, CheckpointPolicy(), owner="job 7.0 node1")
    old.save(state(10), 10, wait=True)
    assert Store(tmp_path).owner() == "job 7.0 node1"
    new = CheckpointManager(tmp_path, CheckpointPolicy(), owner="job 7.1 node2")
    assert Store(tmp_path).owner() == "job 7.1 node2"
    handle = old.save(state(20), 20)               # the old run does not know yet
    with pytest.raises(FencedError, match="job 7.1 node2"):
        handle.result()
    assert Store(tmp_path).latest_name() == step_name(10)   # latest did not move
    assert "took over" in old.fenced
    with pytest.raises(FencedError):                 # and every later save refuses at once
        old.save(state(30), 30)
    new.save(state(11), 11, wait=True)
    assert Store(tmp_path).latest_name() == step_name(11)
    new.close()
    with pytest.raises(CheckpointError, match="took over"):   # close reports it too
        old.close()


def test_without_an_owner_nothing_is_claimed(tmp_path):
    mgr = CheckpointManager(tmp_path, CheckpointPolicy())
    mgr.save(state(1), 1, wait=True)
    assert Store(tmp_path).owner() is None and not mgr.fenced
    mgr.close()


def test_a_reader_claims_nothing(tmp_path):
    CheckpointManager(tmp_path, CheckpointPolicy(), owner="writer").close()
    CheckpointManager(tmp_path, CheckpointPolicy(), owner="reader", writer=False).close()
    assert Store(tmp_path).owner() == "writer"


def test_fencing_lives_at_the_mounted_destination_with_a_local_cache(tmp_path):
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    old = CheckpointManager(shared, CheckpointPolicy(), local_cache=cache / "a", owner="old")
    CheckpointManager(shared, CheckpointPolicy(), local_cache=cache / "b", owner="new")
    assert Store(shared).owner() == "new"
    with pytest.raises(FencedError):
        old.save(state(5), 5).result()
    with pytest.raises(CheckpointError):
        old.close()


def test_a_vanished_directory_is_named_as_such_not_as_a_newer_run(tmp_path):
    """A removed checkpoint directory (what a lost mount looks like) is no 'newer run
    (unknown) took over': the error says the directory is gone or lost its owner file."""
    import shutil

    root = tmp_path / "ckpt"
    mgr = CheckpointManager(root, CheckpointPolicy(), owner="job 7.0 node1")
    mgr.save(state(1), 1, wait=True)
    shutil.rmtree(root)
    with pytest.raises(CheckpointError) as err:
        mgr.save(state(2), 2, wait=True).result()
    assert "took over" not in str(err.value)
    assert "gone" in str(err.value) or "owner file" in str(err.value)
