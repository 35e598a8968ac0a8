"""The recording runner: reads pass through, writes are recorded (and in a dry run not run)."""

from __future__ import annotations

from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.runner import CommandResult, RecordingRunner
from tests.fakes.fake_slurm import FakeSlurm


class Counting:
    def __init__(self) -> None:
        self.ran: list[list[str]] = []

    def run(self, argv, timeout):
        self.ran.append(list(argv))
        return CommandResult(tuple(argv), 0, "ok", "")


def test_is_write_tells_reads_from_changes():
    assert not scli.is_write(scli.build_squeue_argv())
    assert not scli.is_write(scli.build_sinfo_argv("/opt/slurm/bin"))
    assert not scli.is_write(scli.build_show_job_argv(7))
    assert scli.is_write(scli.build_job_action_argv("requeuehold", 7))
    assert scli.is_write(scli.build_node_update_argv(["n1"], "DRAIN", "r"))
    assert scli.is_write(scli.build_sbatch_argv("job.sh"))
    assert scli.is_write(["mystery"]) and scli.is_write([])


def test_dry_run_records_writes_and_runs_only_reads():
    inner = Counting()
    rec = RecordingRunner(inner, scli.is_write, dry_run=True, reply=scli.dry_run_reply)
    assert rec.run(["squeue", "--all", "--json"], 1).stdout == "ok"
    res = rec.run(["sbatch", "--parsable", "x.sh"], 1)
    assert res.returncode == 0 and sparse.parse_sbatch_parsable(res.stdout) == 0
    rec.run(["scontrol", "hold", "7"], 1)
    assert inner.ran == [["squeue", "--all", "--json"]]
    assert rec.writes == [["sbatch", "--parsable", "x.sh"], ["scontrol", "hold", "7"]]


def test_live_recording_runs_writes_and_keeps_their_argv():
    inner = Counting()
    rec = RecordingRunner(inner, scli.is_write, dry_run=False)
    rec.run(["scontrol", "show", "job", "-o", "7"], 1)
    rec.run(["scontrol", "release", "7"], 1)
    assert inner.ran == [["scontrol", "show", "job", "-o", "7"], ["scontrol", "release", "7"]]
    assert rec.writes == [["scontrol", "release", "7"]]


def test_recording_client_changes_nothing_in_a_dry_run():
    fake = FakeSlurm()
    fake.jobs.clear()
    jid = fake.add_job("RUNNING", ["node1", "node2"])
    client, rec = CommandSlurmClient(runner=fake, bin_dir="/usr/bin").recording(dry_run=True)
    client.requeue_hold(jid)
    client.drain(["node2"], "test")
    assert client.submit("restart.sh") == 0
    assert client.job(jid).state == "RUNNING"            # the read went through, nothing changed
    assert rec.writes[0] == ["/usr/bin/scontrol", "requeuehold", str(jid)]
    assert rec.writes[1][:3] == ["/usr/bin/scontrol", "update", "NodeName=node2"]
    assert len(rec.writes) == 3
