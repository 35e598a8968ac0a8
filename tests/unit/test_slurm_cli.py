"""Pure argv builders and parsers of slurmft.slurm.commands: golden argv, captured + variant JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from slurmft.core.errors import (
    ControllerUnreachableError,
    HostNameError,
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    JobPendingError,
    NodeStateError,
    RequeueDisabledError,
    SlurmCommandError,
    SlurmParseError,
    UnsatisfiableRequestError,
    UsageError,
)
from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse

DATA = Path(__file__).resolve().parent.parent / "data"
SQUEUE = json.loads((DATA / "squeue.json").read_text())
SINFO = json.loads((DATA / "sinfo.json").read_text())


# ------------------------------------------------------------------ argv (golden)

def test_read_argv():
    assert scli.build_squeue_argv() == ["squeue", "--all", "--states=all", "--json"]
    assert scli.build_sinfo_argv("/opt/slurm/bin/") == ["/opt/slurm/bin/sinfo", "--json", "--Node"]
    assert scli.build_version_argv() == ["sinfo", "--version"]
    assert scli.build_show_job_argv(42) == ["scontrol", "show", "job", "-o", "42"]


def test_job_action_argv():
    assert scli.build_job_action_argv("requeuehold", "7") == ["scontrol", "requeuehold", "7"]
    assert scli.build_job_action_argv("release", 7) == ["scontrol", "release", "7"]
    with pytest.raises(ValueError):
        scli.build_job_action_argv("cancel", 7)


@pytest.mark.parametrize("bad", [0, -1, "1;rm -rf /", "abc", True, 1.5, None])
def test_bad_job_ids_rejected(bad):
    with pytest.raises(UsageError):
        scli.build_job_action_argv("hold", bad)


def test_node_update_argv_folds_and_keeps_reason_one_element():
    argv = scli.build_node_update_argv(["node3", "node1", "node2"], "drain", "link down; rm -rf")
    assert argv == ["scontrol", "update", "NodeName=node[1-3]", "State=DRAIN",
                    "Reason=link down; rm -rf"]
    assert scli.build_node_update_argv("node4", "RESUME") == [
        "scontrol", "update", "NodeName=node4", "State=RESUME"]


def test_node_update_rejects_bad_names_and_reasons():
    with pytest.raises(HostNameError):
        scli.build_node_update_argv(["node1;rm"], "DRAIN", "x")
    with pytest.raises(UsageError):
        scli.build_node_update_argv(["node1"], "DRAIN", "   ")
    with pytest.raises(UsageError):
        scli.build_node_update_argv(["node1"], "DRAIN", "two\nlines")
    with pytest.raises(UsageError):
        scli.build_node_update_argv([], "DOWN", "x")


def test_update_job_argv_uses_numnodes_never_minnodes():
    argv = scli.build_update_job_argv(5, exclude=["node3"], num_nodes=(3, 3))
    assert argv == ["scontrol", "update", "JobId=5", "ExcNodeList=node3", "NumNodes=3-3"]
    assert not any(a.startswith("MinNodes") for a in argv)
    assert scli.build_update_job_argv(5, start_now=True) == [
        "scontrol", "update", "JobId=5", "StartTime=now"]
    assert scli.build_update_job_argv(5, exclude=[]) == [
        "scontrol", "update", "JobId=5", "ExcNodeList="]


@pytest.mark.parametrize("kwargs", [{}, {"num_nodes": (0, 1)}, {"num_nodes": (3, 2)},
                                    {"exclude": ["a b"]}, {"comment": "x\ny"}])
def test_update_job_argv_rejects(kwargs):
    with pytest.raises(UsageError):
        scli.build_update_job_argv(5, **kwargs)


def test_sbatch_argv():
    assert scli.build_sbatch_argv("/srv/job.sh", ["-N4", "--exclude=node4"]) == [
        "sbatch", "--parsable", "-N4", "--exclude=node4", "/srv/job.sh"]
    with pytest.raises(TypeError):
        scli.build_sbatch_argv("/srv/job.sh", "-N4 --exclude=node4")


# ------------------------------------------------------------------ error mapping

@pytest.mark.parametrize("stderr,cls", [
    ("slurm_load_jobs error: Invalid job id specified", InvalidJobError),
    ("slurm_update error: Job is no longer pending execution", JobNotPendingError),
    ("slurm_update error: Job has already finished", JobNotPendingError),
    ("Job is pending execution for job 5", JobPendingError),
    ("Requested operation is presently disabled for job 5", RequeueDisabledError),
    ("slurm_update error: Invalid node name specified", InvalidNodeError),
    ("slurm_update error: Invalid node state specified", NodeStateError),
    ("You must specify a reason when DOWNING or DRAINING a node. Request denied", NodeStateError),
    ("Update of this parameter is not supported: MinNodes=3\nRequest aborted",
     UnsatisfiableRequestError),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not "
     "available", UnsatisfiableRequestError),
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
     ControllerUnreachableError),
    ("something new", SlurmCommandError),
])
def test_error_mapping_keeps_slurm_message(stderr, cls):
    err = sparse.error_for(["scontrol", "x"], 1, stderr + "\n")
    assert type(err) is cls
    assert err.slurm_message == " ".join(stderr.split("\n"))
    assert "\n" not in str(err) and err.returncode == 1


# ------------------------------------------------------------------ squeue parsing

def test_parse_captured_squeue():
    [job] = sparse.parse_squeue_json(json.dumps(SQUEUE))
    assert job.job_id == 1 and job.name == "j1" and job.state == "RUNNING"
    assert job.nodes == ("node1", "node2", "node3", "node4")
    assert job.node_count == 4 and job.requeue and job.restart_count == 0
    assert job.user == "root" and job.user_id == 0 and job.batch_host == "node1"
    assert job.work_dir == "/srv/sft/jobs" and job.excluded_nodes == ()
    assert job.is_running and not job.has_ended


def _newer_job() -> dict:
    """A hand-made job in the newer schema (v0.0.40+ style)."""
    doc = copy.deepcopy(SQUEUE["jobs"][0])
    doc["job_state"] = ["PENDING", "REQUEUED"]
    doc["node_count"] = {"set": True, "infinite": False, "number": 3}
    doc["restart_cnt"] = {"set": True, "number": 2}
    doc["exit_code"] = {"status": ["SUCCESS"], "return_code": {"set": True, "number": 0}}
    doc["submit_time"] = {"set": True, "number": 1795621138}
    doc["start_time"] = {"set": False, "number": 0}
    doc["user_id"] = {"set": True, "number": 1000}
    del doc["job_resources"]["allocated_nodes"]
    doc["job_resources"]["nodes"] = {"count": 2, "allocation": [{"name": "node7"},
                                                                {"name": "node8"}]}
    doc["excluded_nodes"] = "node[3-4]"
    return doc


def test_parse_newer_squeue_schema():
    [job] = sparse.parse_squeue_json(json.dumps({"jobs": [_newer_job()]}))
    assert job.state == "PENDING" and job.node_count == 3 and job.restart_count == 2
    assert job.exit_code == 0 and job.submit_time == 1795621138 and job.start_time is None
    assert job.user_id == 1000 and job.nodes == ("node7", "node8")
    assert job.excluded_nodes == ("node3", "node4")


def test_nodes_fall_back_to_hostlist():
    doc = copy.deepcopy(SQUEUE["jobs"][0])
    doc["job_resources"] = {}
    doc["nodes"] = "gpu[01-02],cpu5"
    [job] = sparse.parse_squeue_json(json.dumps({"jobs": [doc]}))
    assert job.nodes == ("gpu01", "gpu02", "cpu5")


@pytest.mark.parametrize("text", ["not json", "[]", '{"jobs": 3}', '{"jobs": [{"name": "x"}]}',
                                  '{"errors": [{"error": "boom"}], "jobs": []}'])
def test_bad_squeue_output(text):
    with pytest.raises(SlurmParseError):
        sparse.parse_squeue_json(text)


# ------------------------------------------------------------------ sinfo parsing

def test_parse_captured_sinfo():
    nodes = sparse.parse_sinfo_json(json.dumps(SINFO))
    assert [n.name for n in nodes] == ["node1", "node2", "node3", "node4"]
    n1 = nodes[0]
    assert n1.state == "mixed" and n1.address == "10.99.0.11" and n1.cpus == 2
    assert n1.partitions == ("main",) and not n1.is_drained and not n1.is_down


def test_parse_sinfo_flags_and_list_states():
    doc = copy.deepcopy(SINFO)
    doc["nodes"][0].update(state="idle", state_flags=["DRAIN"], reason="bad link")
    doc["nodes"][1].update(state=["DOWN", "NOT_RESPONDING"])
    doc["nodes"][1].pop("state_flags")
    doc["nodes"][2]["cpus"] = {"set": True, "number": 8}
    nodes = sparse.parse_sinfo_json(json.dumps(doc))
    assert nodes[0].is_drained and nodes[0].reason == "bad link"
    assert nodes[1].is_down and nodes[1].flags == ("NOT_RESPONDING",)
    assert nodes[2].cpus == 8


def test_parse_newer_sinfo_groups():
    doc = {"sinfo": [
        {"nodes": {"nodes": ["node[1-2]"]}, "node": {"state": ["IDLE", "DRAIN"]},
         "reason": {"description": "maint"}, "partition": {"name": "main"},
         "cpus": {"total": 4}},
        {"nodes": {"nodes": ["node3"]}, "node": {"state": ["ALLOCATED"]},
         "partition": {"name": "main"}},
    ]}
    nodes = {n.name: n for n in sparse.parse_sinfo_json(json.dumps(doc))}
    assert nodes["node2"].is_drained and nodes["node2"].reason == "maint"
    assert nodes["node3"].state == "allocated" and nodes["node3"].partitions == ("main",)


# ------------------------------------------------------------------ scontrol show job -o

SHOW_LINE = (
    "JobId=12 JobName=train big UserId=alice(1001) GroupId=alice(1001) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=NODE_FAIL Reason=NodeDown "
    "Dependency=(null) Requeue=0 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:00:19 TimeLimit=UNLIMITED SubmitTime=2026-11-25T16:18:58 "
    "StartTime=2026-11-25T16:19:00 Partition=main NodeList=node[1-4] BatchHost=node1 "
    "NumNodes=4-4 NumCPUs=4 TRES=cpu=4,mem=4000M,node=4,billing=4 ExcNodeList=node9 "
    "Command=/srv/sft/jobs/job1.sh WorkDir=/srv/sft/jobs StdOut=/srv/sft/jobs/j-12.out"
)


def test_parse_key_values_keeps_values_with_equals_and_spaces():
    kv = sparse.parse_key_values(SHOW_LINE)
    assert kv["JobName"] == "train big"
    assert kv["TRES"] == "cpu=4,mem=4000M,node=4,billing=4"
    assert kv["StdOut"] == "/srv/sft/jobs/j-12.out"


def test_parse_show_job():
    [job] = sparse.parse_show_job(SHOW_LINE + "\n")
    assert job.job_id == 12 and job.state == "NODE_FAIL" and job.reason == "NodeDown"
    assert job.user == "alice" and job.user_id == 1001 and not job.requeue
    assert job.restart_count == 1 and job.nodes == ("node1", "node2", "node3", "node4")
    assert job.node_count == 4 and job.excluded_nodes == ("node9",) and job.has_ended
    assert job.exit_code == 0 and job.submit_time is not None


def test_parse_show_job_null_fields():
    [job] = sparse.parse_show_job("JobId=3 JobName=x JobState=PENDING NodeList=(null) "
                                "ExcNodeList=(null) BatchHost=(null) NumNodes=2")
    assert job.nodes == () and job.excluded_nodes == () and job.batch_host == ""
    assert job.node_count == 2
    with pytest.raises(SlurmParseError):
        sparse.parse_show_job("")


def test_parse_sbatch():
    assert sparse.parse_sbatch_parsable("42\n") == 42
    assert sparse.parse_sbatch_parsable("42;cluster\n") == 42
    with pytest.raises(SlurmParseError):
        sparse.parse_sbatch_parsable("Submitted batch job 42")


def test_update_job_argv_with_task_and_cpu_counts():
    from slurmft.slurm.commands import build_update_job_argv
    argv = build_update_job_argv(7, exclude=["node4"], num_nodes=(3, 3), num_tasks=3, num_cpus=3)
    assert argv[1:] == ["update", "JobId=7", "ExcNodeList=node4", "NumNodes=3-3",
                        "NumTasks=3", "NumCPUs=3"]
    assert not any(a.startswith("MinNodes") for a in argv)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_update_job_rejects_bad_task_counts(bad):
    from slurmft.core.errors import UsageError
    from slurmft.slurm.commands import build_update_job_argv
    with pytest.raises(UsageError):
        build_update_job_argv(7, num_tasks=bad)


def test_show_job_line_gives_tasks_per_node():
    from slurmft.slurm.parse import parse_show_job
    line = ("JobId=5 JobName=t UserId=root(0) JobState=RUNNING Reason=None Requeue=1 Restarts=0 "
            "NodeList=node[1-4] NumNodes=4 NumCPUs=4 NumTasks=4 CPUs/Task=1 "
            "NtasksPerN:B:S:C=1:0:*:* ExcNodeList=(null)")
    job = parse_show_job(line)[0]
    assert (job.tasks, job.tasks_per_node, job.cpus_per_task) == (4, 1, 1)


def test_steps_argv_and_parse_keep_only_the_jobs_numbered_steps():
    assert scli.build_steps_argv(7, "/opt/slurm/bin") == [
        "/opt/slurm/bin/squeue", "--steps", "--noheader", "--jobs", "7", "--format", "%i"]
    # what 22.05 printed for a wrapper job with mpirun on a peer (step 0) and its daemons (1)
    out = "7.0\n7.1\n7.batch\n7.extern\n17.3\n7.x\n"
    assert sparse.parse_step_ids(out, 7) == [0, 1]
    assert sparse.parse_step_ids("", 7) == []
    with pytest.raises(UsageError):
        scli.build_steps_argv(-1)


def test_update_job_argv_replaces_or_clears_the_required_nodes():
    argv = scli.build_update_job_argv(7, exclude=["node1"], required=["node2", "node3"])
    assert argv[3:] == ["ExcNodeList=node1", "ReqNodeList=node[2-3]"]
    assert scli.build_update_job_argv(7, required=[])[3:] == ["ReqNodeList="]


def test_required_nodes_are_parsed_from_squeue_and_scontrol():
    doc = {"job_id": 7, "name": "t", "job_state": "PENDING", "required_nodes": "node[1-3]"}
    assert sparse.job_from_json(doc).required_nodes == ("node1", "node2", "node3")
    [job] = sparse.parse_show_job("JobId=7 JobName=t JobState=PENDING ReqNodeList=node[2-3] "
                                "ExcNodeList=(null)\n")
    assert job.required_nodes == ("node2", "node3") and job.excluded_nodes == ()


def test_signal_steps_argv_names_each_step_and_refuses_other_signals():
    # --ctld: slurmctld signals the nodes; scancel does not wait on a cut-off node's slurmd
    assert scli.build_signal_steps_argv(7, [0, 2]) == ["scancel", "--ctld", "--signal=KILL",
                                                       "7.0", "7.2"]
    assert scli.build_signal_steps_argv(7, [1], "SIGUSR1")[2] == "--signal=USR1"
    with pytest.raises(UsageError):
        scli.build_signal_steps_argv(7, [0], "HUP;rm")
    for bad in ([], [-1], [True], ["0"]):
        with pytest.raises(ValueError):
            scli.build_signal_steps_argv(7, bad)


def test_allocation_argv_and_parse():
    assert scli.build_allocation_argv(7) == ["squeue", "--noheader", "--jobs", "7", "--format",
                                             "%N"]
    assert sparse.parse_allocation("node[1-2,4]\n") == ["node1", "node2", "node4"]
    assert sparse.parse_allocation("") == [] and sparse.parse_allocation("(null)\n") == []
    with pytest.raises(HostNameError):
        sparse.parse_allocation("node1;rm\n")
