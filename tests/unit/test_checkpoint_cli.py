"""slurmft checkpoint list|verify|prune."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.cli import cli


def populate(path, steps=(1, 2, 3)):
    with CheckpointManager(path, CheckpointPolicy(keep_last=10)) as mgr:
        for s in steps:
            mgr.save({"w": np.full(100, s, np.float32), "step": s}, s, wait=True)


def run(*args):
    return CliRunner().invoke(cli, ["checkpoint", *args])


def test_list_table_and_json(tmp_path):
    populate(tmp_path)
    r = run("list", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "step_000000000003 *" in r.output and "step_000000000001" in r.output
    r = run("list", str(tmp_path), "--json")
    doc = json.loads(r.output)
    assert doc["latest"] == "step_000000000003"
    assert [c["step"] for c in doc["checkpoints"]] == [3, 2, 1]


def test_verify_ok_and_corrupt(tmp_path):
    populate(tmp_path)
    r = run("verify", str(tmp_path))
    assert r.exit_code == 0 and r.output.count(" ok") == 3
    data = tmp_path / "step_000000000002" / "data.bin"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    r = run("verify", str(tmp_path))
    assert r.exit_code == 1
    assert "CORRUPT" in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("slurmft: 1 of 3 checkpoint(s) corrupt:")
    assert "step_000000000002/data.bin: checksum mismatch" in last
    assert "Traceback" not in r.output
    r = run("verify", str(tmp_path), "step_000000000003", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["valid"] is True


def test_prune(tmp_path):
    populate(tmp_path, steps=(1, 2, 3, 4))
    (tmp_path / ".tmp-step_000000000005-1-x").mkdir()
    r = run("prune", str(tmp_path), "--keep-last", "2", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["deleted"] == ["step_000000000002", "step_000000000001"]
    assert doc["kept"] == ["step_000000000004", "step_000000000003"]
    assert doc["leftovers_removed"] == [".tmp-step_000000000005-1-x"]


def test_bad_input(tmp_path):
    r = run("list", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "is not a checkpoint directory" in r.output
    r = run("prune", str(tmp_path), "--keep-last", "0")
    assert r.exit_code == 2 and "'--keep-last': 0 is not in the range 1<=x" in r.output
    r = run("verify", str(tmp_path), "nonsense")
    assert r.exit_code == 2 and "not a checkpoint name" in r.output


def test_verify_and_prune_of_a_parent_folder_say_there_are_no_checkpoints(tmp_path):
    populate(tmp_path / "job42")                      # a folder of job folders
    for args in (("verify", str(tmp_path)), ("prune", str(tmp_path), "--keep-last", "1")):
        r = run(*args)
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().startswith(f"slurmft: no checkpoints in {tmp_path}")
    assert len(list((tmp_path / "job42").glob("step_*"))) == 3


def test_verify_of_a_missing_checkpoint_says_no_such_checkpoint(tmp_path):
    populate(tmp_path)
    r = run("verify", str(tmp_path), "step_000000000099")
    assert r.exit_code == 1
    assert "no such checkpoint step_000000000099" in r.stderr and "CORRUPT" not in r.output


def test_an_unreadable_checkpoint_file_is_one_line(tmp_path, monkeypatch):
    from slurmft.checkpoint.store import Store

    populate(tmp_path)

    def unreadable(self, name, *a, **k):
        raise PermissionError(13, "Permission denied", str(self.root / name / "data.bin"))

    monkeypatch.setattr(Store, "verify", unreadable)
    r = run("verify", str(tmp_path))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1].endswith("data.bin: Permission denied")


def test_prune_that_cannot_delete_everything_reports_both_and_exits_1(tmp_path, monkeypatch):
    from slurmft.checkpoint.store import Store
    from slurmft.core.errors import PruneError

    populate(tmp_path)

    def partial(self, keep_last, *a, **k):
        raise PruneError("1 checkpoint could not be deleted", deleted=["step_000000000001"],
                         failed={"step_000000000002": "Operation not permitted"})

    monkeypatch.setattr(Store, "prune", partial)
    r = run("prune", str(tmp_path), "--keep-last", "1")
    assert r.exit_code == 1
    assert "deleted 1 checkpoint(s): step_000000000001" in r.stdout
    assert "not deleted: step_000000000002: Operation not permitted" in r.stdout
    assert r.stderr.strip() == "slurmft: 1 checkpoint could not be deleted"
    r = run("prune", str(tmp_path), "--keep-last", "1", "--json")
    doc = json.loads(r.stdout)
    assert doc["deleted"] == ["step_000000000001"] and "step_000000000002" in doc["failed"]


def test_list_counts_every_byte_on_disk(tmp_path):
    """The MB column is what the checkpoint occupies, tensors included, not only data.bin's
    share of the last save (issue 19: a torch state showed 0.0 MB)."""
    with CheckpointManager(tmp_path, CheckpointPolicy(keep_last=10)) as mgr:
        mgr.save({"w": np.ones(500_000, np.float32)}, 1, wait=True)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "step_000000000001").iterdir()
                  if f.name != "manifest.json")
    r = run("list", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert f"{on_disk / 1e6:.1f}" in r.output and on_disk > 1_900_000


def test_prune_dry_run_deletes_nothing_and_says_what_it_would(tmp_path):
    populate(tmp_path, steps=(1, 2, 3, 4))
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("prune", str(tmp_path), "--keep-last", "2", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["would_delete"] == ["step_000000000002", "step_000000000001"]
    assert doc["would_keep"] == ["step_000000000004", "step_000000000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    r = run("prune", str(tmp_path), "--keep-last", "2", "--dry-run")
    assert r.output.startswith("would delete 2 checkpoint(s): step_000000000002")
