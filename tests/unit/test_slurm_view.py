"""The watch cycle's cached view of Slurm (slurm/view.py) against the stateful fake Slurm."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from slurmft.core.errors import ControllerUnreachableError, InvalidJobError
from slurmft.recovery.policy import RELAUNCH_MARK
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.parse import parse_steps_by_job
from slurmft.slurm.view import CachedSlurmClient
from tests.fakes.fake_slurm import FakeSlurm
from tests.fakes.scale import slurm_command


@pytest.fixture
def fake():
    f = FakeSlurm()
    f.jobs.clear()
    return f


def commands(fake, since=0):
    return [slurm_command(c) for c in fake.calls[since:]]


def test_a_refresh_lists_the_jobs_once_and_later_reads_cost_nothing(fake):
    a = fake.add_job("RUNNING", ["node1", "node2"])
    b = fake.add_job("PENDING", ["node3"])
    view = CachedSlurmClient(CommandSlurmClient(runner=fake))
    snap = view.refresh()
    assert [j.job_id for j in snap.jobs] == [a, b]
    assert commands(fake) == ["squeue"]
    for _ in range(3):
        assert view.job(a).nodes == ("node1", "node2")
        assert [j.job_id for j in view.jobs()] == [a, b]
    assert commands(fake) == ["squeue"]
    assert view.reads.to_dict() == {"listings": 1, "node_states": 0, "step_listings": 0,
                                    "job_reads": 0}


def test_a_job_acted_on_or_not_listed_is_read_alone_and_never_from_the_cache(fake):
    a = fake.add_job("RUNNING", ["node1", "node2"])
    view = CachedSlurmClient(CommandSlurmClient(runner=fake))
    view.refresh()
    fake.set_job_state(a, "PENDING", "BeginTime")       # Slurm moved on since the listing
    assert view.job(a).state == "RUNNING"               # the cycle's snapshot, as listed
    assert view.fresh_job(a).state == "PENDING"         # the re-read under a lock
    view.changed(a)                                     # someone acted on it
    assert view.job(a).state == "PENDING"
    late = fake.add_job("RUNNING", ["node3"])           # submitted after the listing
    assert view.job(late).state == "RUNNING"
    assert commands(fake) == ["squeue", "show-job", "show-job", "show-job"]
    with pytest.raises(InvalidJobError):
        view.job(9999)
    view.refresh()                                      # a new cycle forgets "changed"
    n = len(fake.calls)
    assert view.job(a).state == "PENDING" and commands(fake, n) == []


def test_read_job_sees_what_the_listing_sees(fake):
    """The re-read (scontrol show job -o) and the listing (squeue --json) give the rescheduler
    the same job: same policy inputs, same retry record key (submit time)."""
    ids = [fake.add_job("RUNNING", ["node1", "node2"], comment=RELAUNCH_MARK, no_kill=True),
           fake.add_job("PENDING", ["node3"], required=["node3"]),
           fake.add_job("FAILED", ["node3", "node4"], requeue=False)]
    fake.job(ids[1])["excluded_nodes"] = "node4"
    client = CommandSlurmClient(runner=fake)
    for jid in ids:
        assert asdict(client.read_job(jid)) == asdict(client.job(jid))
    assert client.read_job(ids[0]).comment == RELAUNCH_MARK


def test_node_states_are_read_at_most_once_per_refresh(fake):
    view = CachedSlurmClient(CommandSlurmClient(runner=fake))
    view.refresh()
    assert [n.name for n in view.nodes(["node3", "nope", "node1"])] == ["node3", "node1"]
    assert len(view.nodes()) == 4 and view.node("node2").name == "node2"
    assert commands(fake) == ["squeue", "sinfo"]
    view.refresh()
    view.nodes()
    assert commands(fake) == ["squeue", "sinfo", "squeue", "sinfo"]


def test_a_failed_read_is_not_retried_within_the_cycle(fake):
    view = CachedSlurmClient(CommandSlurmClient(runner=fake))
    view.refresh()
    fake.controller_up = False
    for _ in range(3):
        with pytest.raises(ControllerUnreachableError):
            view.nodes()
        with pytest.raises(ControllerUnreachableError):
            view.steps(1)
    assert commands(fake) == ["squeue", "sinfo", "squeue-steps"]
    with pytest.raises(ControllerUnreachableError):     # the listing failed: no snapshot
        view.refresh()
    fake.controller_up = True
    assert view.jobs() == [] and commands(fake)[-1] == "squeue"


def test_steps_come_from_one_listing_of_every_job(fake):
    a = fake.add_job("RUNNING", ["node1", "node2"])
    b = fake.add_job("RUNNING", ["node3", "node4"])
    for _ in range(3):
        fake.start_step(a)
    fake.start_step(b)
    view = CachedSlurmClient(CommandSlurmClient(runner=fake))
    view.refresh()
    assert view.steps(a) == [0, 1, 2] and view.steps(b) == [0] and view.steps(77) == []
    assert commands(fake) == ["squeue", "squeue-steps"]
    assert fake.calls[-1] == ("squeue", "--all", "--steps", "--noheader", "--format", "%i")


def test_a_client_without_the_batched_reads_is_asked_per_job(fake):
    """Any SlurmClient works under the view; read_job/all_steps only make it cheaper."""

    class PlainClient:
        def __init__(self, inner):
            self.inner = inner

        def jobs(self):
            return self.inner.jobs()

        def job(self, job_id):
            return self.inner.job(job_id)

        def nodes(self):
            return self.inner.nodes()

        def steps(self, job_id):
            return self.inner.steps(job_id)

    a = fake.add_job("RUNNING", ["node1"])
    fake.start_step(a)
    view = CachedSlurmClient(PlainClient(CommandSlurmClient(runner=fake)))
    view.refresh()
    assert view.steps(a) == [0] and view.fresh_job(a).job_id == a
    assert commands(fake) == ["squeue", "squeue-steps", "squeue"]
    assert view.reads.job_reads == 1 and view.reads.step_listings == 1


def test_parse_steps_by_job_keeps_numbered_steps_only():
    text = "42.0\n42.batch\n42.extern\n42.3\n7.1\n7.interactive\n9.batch\nnoise\n"
    assert parse_steps_by_job(text) == {42: [0, 3], 7: [1]}
    assert parse_steps_by_job("") == {}


def test_allocated_node_names_are_validated_without_being_expanded_one_by_one():
    import copy
    import json

    from slurmft.core.errors import HostNameError
    from slurmft.slurm.parse import job_from_json
    from tests.fakes.fake_slurm import DATA

    doc = json.loads((DATA / "squeue.json").read_text())["jobs"][0]
    assert job_from_json(doc).nodes == ("node1", "node2", "node3", "node4")
    bad = copy.deepcopy(doc)
    bad["job_resources"]["allocated_nodes"][1]["nodename"] = "node2;reboot"
    with pytest.raises(HostNameError):
        job_from_json(bad)
    folded = copy.deepcopy(doc)                 # a hostlist there is still expanded
    folded["job_resources"]["allocated_nodes"] = [{"nodename": "node[1-2]"}, {"nodename": "node1"}]
    assert job_from_json(folded).nodes == ("node1", "node2")
