"""slurmft checkpoint list|verify|prune."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from slurmft.checkpoint.api import CheckpointManager, CheckpointPolicy
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
