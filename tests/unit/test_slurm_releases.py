"""Every parser over every Slurm release's REAL output (tests/data/slurm-<release>/).

The samples were captured from docker test clusters of each release (Debian bookworm 22.05,
trixie 24.11, sid 26.05) by ``python -m slurmft.testbed.docker.capture``, which also wrote
``capture.json``: the jobs and nodes it put in a known state. A parser change that breaks one
release fails here for that release. To add a release: bring up its cluster and capture.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

from slurmft.core.errors import (
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    JobPendingError,
    NodeStateError,
    SlurmCommandError,
    SlurmParseError,
    UnsatisfiableRequestError,
)
from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.runner import CommandResult
from slurmft.slurm.version import SlurmVersion, json_schema, parse_version

DATA = Path(__file__).resolve().parent.parent / "data"
RELEASES = sorted(p.name.removeprefix("slurm-") for p in DATA.glob("slurm-*")
                  if (p / "capture.json").is_file())
REQUIRED = {"22.05", "24.11", "26.05"}


@dataclass
class Sample:
    release: str

    @property
    def dir(self) -> Path:
        return DATA / f"slurm-{self.release}"

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def json(self, name: str) -> dict:
        return json.loads(self.text(name))

    @cached_property
    def cap(self) -> dict:
        return self.json("capture.json")

    def job(self, role: str) -> int:
        return self.cap["jobs"][role]


@pytest.fixture(params=RELEASES)
def s(request) -> Sample:
    return Sample(request.param)


def test_every_release_is_captured():
    assert REQUIRED <= set(RELEASES), f"missing samples: {REQUIRED - set(RELEASES)}"


# ------------------------------------------------------------------ what Slurm says it is

def test_sinfo_version_names_the_release(s):
    v = parse_version(s.text("version.txt"))
    assert v.release == s.release and str(v) == s.cap["version"]


@pytest.mark.parametrize("name", ["squeue.json", "sinfo.json"])
def test_json_meta_names_the_schema_and_release(s, name):
    schema = json_schema(s.json(name))
    assert schema.release == parse_version(s.text("version.txt"))
    # 22.05 prints OpenAPI v0.0.38; 24.11 and 26.05 data_parser v0.0.42 / v0.0.45.
    assert (schema.openapi == 38) == (s.release == "22.05")
    assert schema.nested_numbers == (s.release != "22.05")


def test_parse_version_forms():
    assert parse_version("slurm 24.11.5\n") == SlurmVersion(24, 11, 5)
    assert parse_version("slurm-wlm 22.05.8") == SlurmVersion(22, 5, 8)
    assert str(parse_version("slurm 26.05.0-1")) == "26.05.0"
    with pytest.raises(SlurmParseError, match="not a Slurm version"):
        parse_version("sinfo: command not found")


# ------------------------------------------------------------------ squeue --json

def test_squeue_jobs(s):
    jobs = {j.job_id: j for j in sparse.parse_squeue_json(s.text("squeue.json"))}
    assert set(s.cap["jobs"].values()) <= set(jobs)
    run = jobs[s.job("running")]
    assert run.state == "RUNNING" and run.is_running and run.name == "cap-running"
    assert run.nodes == ("node1", "node2") and run.node_count == 2
    assert run.required_nodes == ("node1", "node2") and run.excluded_nodes == ()
    assert run.requeue and run.restart_count == 0 and run.batch_host == "node1"
    assert run.user == "root" and run.user_id == 0 and run.partition == "main"
    assert run.tasks == 2 and run.cpus_per_task == 1 and run.tasks_per_node == 0
    assert isinstance(run.submit_time, int) and isinstance(run.start_time, int)
    assert run.stdout == "/dev/null" and run.work_dir == "/"
    done, failed = jobs[s.job("completed")], jobs[s.job("failed")]
    assert done.state == "COMPLETED" and done.exit_code == 0 and done.has_ended
    assert failed.state == "FAILED" and failed.exit_code == 3 and failed.has_ended
    held = jobs[s.job("held")]
    assert held.is_pending and held.reason == "JobHeldUser"
    begin = jobs[s.job("begin")]
    assert begin.is_pending and begin.reason == "BeginTime"
    assert begin.excluded_nodes == ("node1",) and begin.node_count == 2 and begin.nodes == ()


def test_squeue_reader_follows_meta_not_the_shape(s):
    """The reader is the one the document's meta names: a data_parser document labelled
    v0.0.38 is refused for its sinfo (no guessing), and its job allocation is not read from
    the newer place."""
    sinfo = s.json("sinfo.json")
    other = copy.deepcopy(sinfo)
    if s.release == "22.05":
        other["meta"] = {"plugin": {"data_parser": "data_parser/v0.0.42"},
                         "slurm": {"release": "24.11.5"}}
        with pytest.raises(SlurmParseError, match="no 'sinfo' list"):
            sparse.parse_sinfo_json(json.dumps(other))
    else:
        other["meta"] = {"plugin": {"name": "Slurm OpenAPI v0.0.38"}}
        with pytest.raises(SlurmParseError, match="no 'nodes' list"):
            sparse.parse_sinfo_json(json.dumps(other))


def test_meta_without_a_version_is_refused(s):
    doc = s.json("squeue.json")
    doc["meta"] = {"plugin": {}}
    with pytest.raises(SlurmParseError, match="names no OpenAPI/data_parser version"):
        sparse.parse_squeue_json(json.dumps(doc))


# ------------------------------------------------------------------ sinfo --json --Node

def test_sinfo_nodes(s):
    nodes = {n.name: n for n in sparse.parse_sinfo_json(s.text("sinfo.json"))}
    assert sorted(nodes) == s.cap["nodes"]
    for name in s.cap["running_nodes"]:
        assert nodes[name].state in ("allocated", "mixed") and not nodes[name].is_drained
    drained = nodes[s.cap["drained"]["node"]]
    assert drained.is_drained and drained.reason == s.cap["drained"]["reason"]
    assert "DRAIN" in drained.flags and not drained.is_down
    down = nodes[s.cap["down"]["node"]]
    assert down.is_down and down.reason == s.cap["down"]["reason"]
    assert {n.cpus for n in nodes.values()} == {2}
    assert {n.partitions for n in nodes.values()} == {("main",)}


def test_sinfo_keeps_each_nodes_reason(s):
    """24.11 groups nodes of one state under ONE reason unless --Node is given."""
    assert "--Node" in scli.build_sinfo_argv()
    nodes = {n.name: n for n in sparse.parse_sinfo_json(s.text("sinfo_two_reasons.json"))}
    for node, reason in s.cap["two_reasons"].items():
        assert nodes[node].is_drained and nodes[node].reason == reason


# ------------------------------------------------------------------ scontrol show -o

def test_show_job_agrees_with_squeue(s):
    shown = {j.job_id: j for j in sparse.parse_show_job(s.text("show_job.txt"))}
    listed = {j.job_id: j for j in sparse.parse_squeue_json(s.text("squeue.json"))}
    assert set(shown) == set(s.cap["jobs"].values())
    fields = ("state", "name", "user", "user_id", "nodes", "node_count", "excluded_nodes",
              "required_nodes", "requeue", "restart_count", "exit_code", "partition",
              "work_dir", "stdout", "batch_host", "tasks", "cpus_per_task", "tasks_per_node")
    for job_id, job in shown.items():
        for f in fields:
            assert getattr(job, f) == getattr(listed[job_id], f), (job_id, f)
    assert shown[s.job("failed")].exit_code == 3
    assert shown[s.job("begin")].reason == "BeginTime"


def test_show_node(s):
    nodes = {n.name: n for n in sparse.parse_show_node(s.text("show_node.txt"))}
    listed = {n.name: n for n in sparse.parse_sinfo_json(s.text("sinfo.json"))}
    assert sorted(nodes) == s.cap["nodes"]
    for name, node in nodes.items():
        assert node.state == listed[name].state and node.cpus == 2, name
        assert node.is_drained == listed[name].is_drained and node.reason == listed[name].reason
        assert node.address.startswith("10.") and node.partitions == ("main",)


# ------------------------------------------------------------------ squeue text formats

def test_steps_and_allocation(s):
    run = s.job("running")
    assert sparse.parse_steps_by_job(s.text("steps.txt")) == {run: [0]}
    assert sparse.parse_step_ids(s.text("steps_running.txt"), run) == [0]
    assert sparse.parse_allocation(s.text("allocation.txt")) == ["node1", "node2"]


# ------------------------------------------------------------------ error texts

#: What each captured failure must become. ``None``: the command succeeds silently on all three
#: releases (``scancel <unknown id>`` and ``squeue --steps --jobs <unknown id>`` print nothing
#: and exit 0; tests/fakes/fake_slurm.py answers the latter with an error instead).
EXPECTED_ERRORS: dict[str, type[SlurmCommandError] | None] = {
    "show_job_invalid": InvalidJobError,
    "requeue_invalid": InvalidJobError,
    "hold_invalid": InvalidJobError,
    "scancel_invalid": None,
    "update_invalid": InvalidJobError,
    "update_running_exclude": JobNotPendingError,
    "update_finished": JobNotPendingError,
    "requeue_pending": JobPendingError,
    "update_minnodes": UnsatisfiableRequestError,
    "update_begintime": UnsatisfiableRequestError,
    "node_invalid": InvalidNodeError,
    "node_no_reason": NodeStateError,
    "node_resume_allocated": NodeStateError,   # 26.05: "Invalid node state transition"
    "sbatch_unsatisfiable": UnsatisfiableRequestError,
    "signal_steps_invalid": InvalidJobError,
    "kill_job_invalid": InvalidJobError,
    "signal_batch_invalid": InvalidJobError,
    "release_invalid": InvalidJobError,
    "requeuehold_invalid": InvalidJobError,
    "allocation_invalid": InvalidJobError,
    "steps_invalid": None,
}


def test_error_texts_map_to_typed_errors(s):
    errors = s.json("errors.json")
    assert set(errors) == set(EXPECTED_ERRORS)
    for case, cls in EXPECTED_ERRORS.items():
        e = errors[case]
        if cls is None:
            assert e["returncode"] == 0 and not e["stderr"].strip(), case
            continue
        assert e["returncode"] != 0, case
        err = sparse.error_for(e["argv"], e["returncode"], e["stderr"], e["stdout"])
        assert type(err) is cls, (case, e["stderr"])
        assert err.slurm_message and "\n" not in str(err)


# ------------------------------------------------------------------ the client over replays

class ReplayRunner:
    """Answers the client's argv with what the release printed for it."""

    def __init__(self, s: Sample) -> None:
        self.s = s
        run = s.job("running")
        self.answers = {
            tuple(scli.build_squeue_argv()): s.text("squeue.json"),
            tuple(scli.build_sinfo_argv()): s.text("sinfo.json"),
            tuple(scli.build_all_steps_argv()): s.text("steps.txt"),
            tuple(scli.build_steps_argv(run)): s.text("steps_running.txt"),
            tuple(scli.build_allocation_argv(run)): s.text("allocation.txt"),
            tuple(scli.build_version_argv()): s.text("version.txt"),
        }
        for line in s.text("show_job.txt").splitlines():
            job_id = int(line.split()[0].split("=")[1])
            self.answers[tuple(scli.build_show_job_argv(job_id))] = line + "\n"
        self.failures = {tuple(e["argv"]): e for e in s.json("errors.json").values()}

    def run(self, argv, timeout):
        key = tuple(argv)
        if key in self.answers:
            return CommandResult(list(argv), 0, self.answers[key], "")
        e = self.failures[key]
        return CommandResult(list(argv), e["returncode"], e["stdout"], e["stderr"])


def test_client_over_each_release(s):
    c = CommandSlurmClient(ReplayRunner(s))
    assert c.version().release == s.release
    run = s.job("running")
    assert c.job(run).nodes == ("node1", "node2")
    assert c.read_job(s.job("failed")).exit_code == 3
    assert c.steps(run) == [0] and c.all_steps() == {run: [0]}
    assert c.allocation(run) == ["node1", "node2"]
    assert c.node(s.cap["drained"]["node"]).is_drained
    assert c.node(s.cap["down"]["node"]).is_down
    with pytest.raises(InvalidJobError):
        c.read_job(s.cap["bad_job"])
    with pytest.raises(JobNotPendingError):
        c.update_job(run, exclude=["node3"])
    with pytest.raises(JobPendingError):
        c.requeue(s.job("held"))
    with pytest.raises(InvalidNodeError):
        c.drain([s.cap["bad_node"]], "x")
    # scancel says "Invalid job id" for a job that has ended: nothing left to kill, no error
    assert c.kill_job(s.cap["bad_job"]) is None
    with pytest.raises(InvalidJobError):
        c.allocation(s.cap["bad_job"])
    assert c.steps(s.cap["bad_job"]) == []          # real Slurm: nothing, exit 0
