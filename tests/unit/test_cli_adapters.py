"""cli/adapters.py: the one place that builds clients; --backend reaches the local cluster for
every command that names one (inject included); Slurm of a local cluster runs through its
exec_argv with its env."""

from __future__ import annotations

import json
import os
import sys

import pytest
from click.testing import CliRunner

from slurmft.cli import adapters, cli
from slurmft.core.config import load_config
from slurmft.core.errors import ClusterError, ExitCode

RECORDER = """
import json, os, sys
with open(os.environ["REC_FILE"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "cluster": os.environ.get("IN_CLUSTER")}) + "\\n")
print(json.dumps({"jobs": []}))
"""


class RecordingCluster:
    """Runs commands 'in the cluster' through a script that records argv and env."""

    name = "c1"

    def __init__(self, rec_file, up: bool = True, state_dir: str = "/srv/c1/slurmft") -> None:
        self.rec_file, self.up, self.state_dir = str(rec_file), up, state_dir

    def env(self, base=None):
        return {**os.environ, "IN_CLUSTER": self.name, "REC_FILE": self.rec_file,
                "SLURMFT_RESCHEDULE_STATE_DIR": self.state_dir}

    def exec_argv(self, argv):
        return [sys.executable, "-c", RECORDER, *argv]

    def is_up(self) -> bool:
        return self.up


def test_cluster_slurm_client_runs_slurm_inside_the_cluster(tmp_path):
    rec = tmp_path / "rec.jsonl"
    client = adapters.cluster_slurm_client(RecordingCluster(rec), load_config(None))
    assert client.jobs() == []
    [call] = [json.loads(line) for line in rec.read_text().splitlines()]
    assert call["argv"][0] == "squeue" and call["cluster"] == "c1"


def test_cluster_state_dir_is_the_clusters_own(tmp_path):
    assert adapters.cluster_state_dir(RecordingCluster(tmp_path / "r")) == "/srv/c1/slurmft"
    with pytest.raises(ClusterError, match="give --state-dir"):
        adapters.cluster_state_dir(RecordingCluster(tmp_path / "r", state_dir=""))


@pytest.mark.parametrize("argv", [
    ["inject", "kill-slurmd", "--job", "5", "--cluster", "c1", "--backend", "docker"],
    ["cluster", "fault", "node1", "link-down", "--name", "c1", "--backend", "docker"],
    ["cluster", "status", "--name", "c1", "--backend", "docker"],
])
def test_every_cluster_command_honours_backend(monkeypatch, tmp_path, argv):
    asked = []

    class Refusing(RecordingCluster):
        def fault(self, node, fault):
            raise ClusterError(f"{self.name} refuses {fault} on {node}")

        def status(self):
            raise ClusterError(f"{self.name} has no status")

    def cluster(backend, name):
        asked.append((backend, name))
        return Refusing(tmp_path / "rec", up=False)

    monkeypatch.setattr(adapters, "cluster", cluster)
    monkeypatch.setenv("SLURMFT_RESCHEDULE_STATE_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli, argv)
    assert asked == [("docker", "c1")]
    assert res.exit_code == ExitCode.FAILED
    assert res.stderr.strip().splitlines()[-1].startswith("slurmft: ")


def test_the_site_slurm_client_follows_the_config(monkeypatch):
    monkeypatch.setenv("SLURMFT_SLURM_BIN_DIR", "/opt/slurm/bin")
    client = adapters.slurm_client(load_config(None))
    assert client.bin_dir == "/opt/slurm/bin"
