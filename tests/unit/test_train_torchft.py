"""The pure parts of slurmft/examples/train_torchft.py: the environment contract, the batch
plan, where checkpoints and records go, and bad input as one line with exit 2."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from slurmft.core.errors import ConfigError  # noqa: E402
from slurmft.examples import train_torchft as tt  # noqa: E402
from slurmft.examples.data import batch_indices  # noqa: E402

BASE = {"TORCHFT_LIGHTHOUSE": "http://head:29510", "REPLICA_GROUP_ID": "1",
        "NUM_REPLICA_GROUPS": "3", "MASTER_ADDR": "node-2", "MASTER_PORT": "29601"}


def test_group_rank_prefers_rank_then_srun_then_single():
    assert tt.group_rank_from_env({"RANK": "1", "WORLD_SIZE": "2",
                                   "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == (1, 2)
    assert tt.group_rank_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == (3, 4)
    assert tt.group_rank_from_env({}) == (0, 1)
    with pytest.raises(ConfigError, match="not a rank"):
        tt.group_rank_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="WORLD_SIZE is not set"):
        tt.group_rank_from_env({"RANK": "0"})


def test_replica_env_reads_the_contract():
    env = tt.ReplicaEnv.from_environ({**BASE, "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
                                     hostname="node-2")
    assert (env.replica_id, env.num_replicas, env.rank, env.world_size) == (1, 3, 1, 2)
    assert (env.master_addr, env.master_port, env.manager_host) == ("node-2", 29601, "node-2")
    assert env.global_rank == 3              # heartbeat files unique over all groups
    advertised = tt.ReplicaEnv.from_environ({**BASE, "TORCHFT_MANAGER_HOST": "10.0.0.7"})
    assert advertised.manager_host == "10.0.0.7"


@pytest.mark.parametrize("change, message", [
    ({"TORCHFT_LIGHTHOUSE": ""}, "TORCHFT_LIGHTHOUSE"),
    ({"TORCHFT_LIGHTHOUSE": "head:29510"}, "http://HOST:PORT"),
    ({"REPLICA_GROUP_ID": "3"}, "not a group of NUM_REPLICA_GROUPS=3"),
    ({"REPLICA_GROUP_ID": "-1"}, "integer"),
    ({"NUM_REPLICA_GROUPS": "0"}, ">= 1"),
    ({"MASTER_PORT": "70000"}, "not a TCP port"),
    ({"MASTER_ADDR": "node;rm -rf /"}, "MASTER_ADDR"),
    ({"TORCHFT_MANAGER_HOST": "a b"}, "TORCHFT_MANAGER_HOST"),
])
def test_replica_env_rejects_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        tt.ReplicaEnv.from_environ({**BASE, **change})


def test_batch_plan_shares_train_py_global_batch():
    plan = tt.BatchPlan(global_batch=48, num_replicas=3, group_size=2, dataset_size=480, seed=7)
    assert (plan.per_replica, plan.per_rank) == (16, 8)
    full = batch_indices(5, 48, 480, 7)
    parts = [plan.indices(5, slot, rank) for slot in range(3) for rank in range(2)]
    # All groups present: exactly train.py's global batch, each sample once.
    assert torch.equal(torch.cat(parts), full)
    # Two of three groups take the first two shares (slots = ranks in the quorum).
    assert torch.equal(torch.cat(parts[:4]), full[:32])
    with pytest.raises(ValueError):
        plan.indices(5, 3, 0)


def test_batch_plan_needs_a_divisible_global_batch():
    with pytest.raises(ConfigError, match="multiple of 6"):
        tt.BatchPlan(global_batch=16, num_replicas=3, group_size=2, dataset_size=480, seed=7)


def test_checkpoint_dir_stream_writer_and_token():
    assert tt.replica_checkpoint_dir("/ck", 2) == "/ck/replica-2"
    assert tt.is_stream_writer(0, 0)
    assert not tt.is_stream_writer(0, 1)      # another group leads the quorum
    assert not tt.is_stream_writer(1, 0)      # not the group's rank 0
    assert not tt.is_stream_writer(0, None)   # healing: not in the step's participants
    token = tt.run_token(4)
    assert " replica 4 " in token and token != tt.run_token(4)


def test_progress_log_tags_records_with_the_group(tmp_path):
    path = tmp_path / "logs" / "progress.jsonl"
    log = tt.ProgressLog(str(path), True, replica_id=2)
    log.write("step", step=3, loss=0.5)
    log.close()
    silent = tt.ProgressLog(str(path), False, replica_id=1)   # not group rank 0
    silent.write("step", step=4)
    silent.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["replica"] == 2 and records[0]["event"] == "step"
    assert records[0]["attempt"] == log.attempt


def test_parse_args_defaults_and_errors(capsys):
    args = tt.parse_args(["--checkpoint-dir", "/ck"])
    assert (args.timeout, args.quorum_timeout, args.min_replicas) == (10.0, 30.0, 1)
    for bad in (["--timeout", "0"], ["--steps", "0"], ["--sample-time", "-1"],
                ["--global-batch", "9000"]):
        with pytest.raises(SystemExit) as exc:
            tt.parse_args(["--checkpoint-dir", "/ck", *bad])
        assert exc.value.code == 2
    capsys.readouterr()


def test_main_bad_environment_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    for name in list(BASE) + ["RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHFT_LIGHTHOUSE", "http://head:29510")
    assert tt.main(["--checkpoint-dir", str(tmp_path)]) == tt.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "NUM_REPLICA_GROUPS is not set" in err
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    assert tt.main(["--checkpoint-dir", str(tmp_path), "--global-batch", "50"]) == tt.EXIT_USAGE
    assert "multiple of 3" in capsys.readouterr().err
    assert tt.main(["--checkpoint-dir", str(tmp_path), "--min-replicas", "4"]) == tt.EXIT_USAGE
    assert "--min-replicas 4" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())      # nothing started, nothing written
