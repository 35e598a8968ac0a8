"""A stateful fake Slurm 22.05 behind the runner interface (argv -> CommandResult).

Fed with the JSON captured from the real cluster (``tests/data/``), it keeps job and node state
across calls and answers with Slurm 22.05's own error texts (CLUSTER_NOTES.md), so client and
rescheduler tests run the same code paths as against the real cluster, with no process.

    fake = FakeSlurm()
    client = CommandSlurmClient(runner=fake)
    client.requeue_hold(1); client.down(["node3"], "dead"); ...
    assert fake.job(1)["job_state"] == "PENDING"; assert fake.calls[-1][1] == "update"
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hostlist

from slurmft.slurm.runner import CommandResult

DATA = Path(__file__).resolve().parent.parent / "data"
NOW = 1795621200

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "OUT_OF_MEMORY"}


def _expand(expr: str) -> list[str]:
    return hostlist.expand_hostlist(expr) if expr else []


def _fold(names: Sequence[str]) -> str:
    return hostlist.collect_hostlist(list(names)) if names else ""


class FakeSlurm:
    """State: ``jobs`` (squeue JSON dicts by id) and ``nodes`` (sinfo JSON dicts by name).

    ``calls`` records every argv; ``controller_up = False`` makes every command fail like an
    unreachable slurmctld; ``fail_next(stderr, rc)`` scripts one failure.
    """

    def __init__(self, squeue: str | os.PathLike = DATA / "squeue.json",
                 sinfo: str | os.PathLike = DATA / "sinfo.json") -> None:
        sq = json.loads(Path(squeue).read_text())
        si = json.loads(Path(sinfo).read_text())
        self._meta = sq.get("meta", {})
        self._job_template = copy.deepcopy(sq["jobs"][0]) if sq["jobs"] else {}
        self.jobs: dict[int, dict[str, Any]] = {j["job_id"]: j for j in sq["jobs"]}
        self.nodes: dict[str, dict[str, Any]] = {n["name"]: n for n in si["nodes"]}
        self.forgotten: set[int] = set()  # ended jobs squeue no longer lists (scontrol still does)
        self.calls: list[tuple[str, ...]] = []
        self.timeouts: list[float] = []
        self.controller_up = True
        self.no_kill: set[int] = set()              # jobs submitted with --no-kill
        self.signals: list[tuple[int, str, bool]] = []  # (job, signal, --batch) sent by scancel
        self.steps: dict[int, list[int]] = {}       # job -> its numbered steps (start_step)
        self.step_signals: list[tuple[int, int, str]] = []  # (job, step, signal): scancel J.S
        self._scripted: list[tuple[int, str, str]] = []
        self.next_job_id = max(self.jobs, default=0) + 1
        self._next_step: dict[int, int] = {}

    # ------------------------------------------------------------------ test helpers
    def job(self, job_id: int) -> dict[str, Any]:
        return self.jobs[job_id]

    def node(self, name: str) -> dict[str, Any]:
        return self.nodes[name]

    def add_job(self, state: str = "RUNNING", nodes: Sequence[str] = ("node1",), *,
                job_id: int | None = None, requeue: bool = True, name: str = "job",
                reason: str = "None", comment: str = "", no_kill: bool = False,
                required: Sequence[str] = ()) -> int:
        """``no_kill``: sbatch --no-kill (squeue --json does not show it; the fake keeps it
        aside): a downed node is removed from the running job instead of failing it."""
        job_id = job_id or self.next_job_id
        self.next_job_id = max(self.next_job_id, job_id + 1)
        doc = copy.deepcopy(self._job_template)
        doc.update(job_id=job_id, name=name, job_state=state, requeue=requeue,
                   state_reason=reason, restart_cnt=0, excluded_nodes="", priority=1000,
                   comment=comment, required_nodes=_fold(list(required)))
        if no_kill:
            self.no_kill.add(job_id)
        self._place(doc, list(nodes) if state in ("RUNNING", "COMPLETING") or state in ENDED
                    else [], node_count=len(nodes))
        self.jobs[job_id] = doc
        return job_id

    def start_step(self, job_id: int) -> int:
        """A new step (srun, mpirun's daemons) in a running job: its id, as Slurm numbers them."""
        ids = self.steps.setdefault(job_id, [])
        ids.append(self._next_step.get(job_id, 0))
        self._next_step[job_id] = ids[-1] + 1
        return ids[-1]

    def end_steps(self, job_id: int) -> None:
        """The job's steps are over (killed, or the job left the nodes)."""
        self.steps.pop(job_id, None)

    def set_job_state(self, job_id: int, state: str, reason: str = "None") -> None:
        self.jobs[job_id].update(job_state=state, state_reason=reason)

    def forget(self, job_id: int) -> None:
        """squeue stops listing the job (it ended long ago); scontrol show job still knows it."""
        self.forgotten.add(job_id)

    def fail_next(self, stderr: str, returncode: int = 1) -> None:
        self._scripted.append((returncode, "", stderr))

    def start_pending(self, job_id: int) -> None:
        """Schedule a pending, released job on free nodes not excluded (what slurmctld does)."""
        j = self.jobs[job_id]
        excluded = set(_expand(j.get("excluded_nodes", "")))
        usable = [n for n, d in self.nodes.items() if n not in excluded
                  and d["state"] not in ("down", "drained") and "DRAIN" not in d["state_flags"]]
        required = _expand(j.get("required_nodes", ""))
        if any(n not in usable for n in required):     # pinned to a node it may not use
            j.update(state_reason="BadConstraints")
            return
        usable = required + [n for n in usable if n not in required]
        count = j["node_count"]
        self._place(j, usable[:count], node_count=count)
        j.update(job_state="RUNNING", state_reason="None", start_time=NOW)

    @staticmethod
    def _place(doc: dict[str, Any], names: list[str], node_count: int) -> None:
        doc["nodes"] = _fold(names)
        doc["node_count"] = node_count
        doc["batch_host"] = names[0] if names else ""
        doc["job_resources"] = ({"nodes": _fold(names), "allocated_hosts": len(names),
                                 "allocated_nodes": [{"nodename": n} for n in names]}
                                if names else {})

    # ------------------------------------------------------------------ runner interface
    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        if isinstance(argv, str):
            raise TypeError("argv must be a list")
        argv = tuple(str(a) for a in argv)
        self.calls.append(argv)
        self.timeouts.append(timeout)
        idx = next((i for i, a in enumerate(argv)
                    if os.path.basename(a) in ("squeue", "sinfo", "scontrol", "sbatch", "scancel")),
                   None)
        if idx is None:
            return CommandResult(argv, 127, "", f"{argv[0] if argv else ''}: command not found\n")
        cmd, args = os.path.basename(argv[idx]), list(argv[idx + 1:])
        if self._scripted:
            rc, out, err = self._scripted.pop(0)
            return CommandResult(argv, rc, out, err)
        if not self.controller_up:
            return self._err(argv, f"{self._ctx(cmd)}: Unable to contact slurm controller "
                                   "(connect failure)")
        handler = getattr(self, f"_cmd_{cmd}")
        rc, out, err = handler(args)
        return CommandResult(argv, rc, out, err)

    @staticmethod
    def _ctx(cmd: str) -> str:
        return {"squeue": "slurm_load_jobs error", "sinfo": "slurm_load_node error",
                "scontrol": "slurm_update error", "sbatch": "sbatch: error",
                "scancel": "scancel: error"}[cmd]

    @staticmethod
    def _err(argv: tuple[str, ...], text: str, rc: int = 1) -> CommandResult:
        return CommandResult(argv, rc, "", text + "\n")

    # ------------------------------------------------------------------ squeue / sinfo
    def _cmd_squeue(self, args: list[str]) -> tuple[int, str, str]:
        if "--steps" in args:
            if "--jobs" not in args:                # every job's steps
                listed = [i for i in sorted(self.jobs) if i not in self.forgotten]
                return 0, "".join(self._step_lines(i) for i in listed), ""
            job_id = int(args[args.index("--jobs") + 1])
            j = self.jobs.get(job_id)
            if j is None or job_id in self.forgotten:
                return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
            return 0, self._step_lines(job_id), ""
        if "--json" not in args:
            return 1, "", "squeue: fake supports --json only\n"
        jobs = [j for i, j in sorted(self.jobs.items()) if i not in self.forgotten]
        return 0, json.dumps({"meta": self._meta, "errors": [], "jobs": jobs}), ""

    def _step_lines(self, job_id: int) -> str:
        lines = [f"{job_id}.{s}" for s in self.steps.get(job_id, [])]
        if self.jobs[job_id]["job_state"] == "RUNNING":
            lines.append(f"{job_id}.batch")
        return "".join(f"{ln}\n" for ln in lines)

    def _cmd_sinfo(self, args: list[str]) -> tuple[int, str, str]:
        if "--json" not in args:
            return 1, "", "sinfo: fake supports --json only\n"
        return 0, json.dumps({"meta": self._meta, "errors": [],
                              "nodes": list(self.nodes.values())}), ""

    # ------------------------------------------------------------------ sbatch
    def _cmd_sbatch(self, args: list[str]) -> tuple[int, str, str]:
        if "--parsable" not in args:
            return 1, "", "sbatch: fake supports --parsable only\n"
        opts = [a for a in args if a != "--parsable"]
        script = opts.pop() if opts else ""
        if not script:
            return 1, "", "sbatch: error: Batch job submission failed: script missing\n"
        n, exclude, requeue, name = 1, [], True, os.path.basename(script)
        required: list[str] = []
        it = iter(opts)
        for opt in it:
            key, _, val = opt.partition("=")
            if key in ("-N", "--nodes") and not val:
                val = next(it, "")
            elif key.startswith("-N") and len(key) > 2:
                key, val = "-N", key[2:]
            if key in ("-N", "--nodes"):
                n = int(val.split("-", 1)[0])
            elif key in ("-x", "--exclude"):
                exclude = _expand(val or next(it, ""))
            elif key == "--no-requeue":
                requeue = False
            elif key in ("-J", "--job-name"):
                name = val or next(it, "")
            elif key in ("-w", "--nodelist"):
                required = _expand(val or next(it, ""))
        usable = [x for x in self.nodes if x not in exclude]
        if n > len(usable):
            return 1, "", ("sbatch: error: Batch job submission failed: Requested node "
                           "configuration is not available\n")
        job_id = self.add_job("PENDING", usable[:n], requeue=requeue, name=name,
                              required=required)
        self.jobs[job_id].update(excluded_nodes=_fold(exclude), node_count=n,
                                 command=script, state_reason="None")
        return 0, f"{job_id}\n", ""

    # ------------------------------------------------------------------ scancel
    def _cmd_scancel(self, args: list[str]) -> tuple[int, str, str]:
        """22.05 scancel is silent (rc 0) for unknown and already finished jobs."""
        ids = [a for a in args if not a.startswith("-")]
        signal = next((a.split("=", 1)[1] for a in args if a.startswith("--signal=")), "")
        if signal and ids and all(re.fullmatch(r"\d+\.\d+", i) for i in ids):
            # JOB.STEP ...: those steps only (recorded per step, never the batch script)
            for i in ids:
                jid, step = map(int, i.split("."))
                if step not in self.steps.get(jid, []):
                    return 1, "", (f"scancel: error: Kill job error on job id {i}: "
                                   "Invalid job id specified\n")
                self.step_signals.append((jid, step, signal))
            return 0, "", ""
        if not ids or not ids[0].isdigit():
            return 1, "", f"scancel: error: Invalid job id {ids[0] if ids else ''}\n"
        j = self.jobs.get(int(ids[0]))
        if signal:
            if j is None or j["job_state"] in ENDED:
                return 1, "", (f"scancel: error: Kill job error on job id {ids[0]}: "
                               "Job/step already completing or completed\n")
            self.signals.append((int(ids[0]), signal, "--batch" in args or "--full" in args))
            return 0, "", ""
        if j is not None and j["job_state"] not in ENDED:
            j.update(job_state="CANCELLED", state_reason="None")
        return 0, "", ""

    # ------------------------------------------------------------------ scontrol
    def _cmd_scontrol(self, args: list[str]) -> tuple[int, str, str]:
        if not args:
            return 1, "", "scontrol: no command\n"
        verb, rest = args[0].lower(), args[1:]
        if verb == "show" and rest[:1] == ["job"]:
            return self._show_job([a for a in rest[1:] if a not in ("-o", "--oneliner")])
        if verb == "update":
            keys = {a.split("=", 1)[0].lower(): a for a in rest}
            if "jobid" in keys or "job" in keys:
                return self._update_job(rest)
            if "nodename" in keys:
                return self._update_node(rest)
            return 1, "", "No valid entity in update command\n"
        if verb in ("hold", "release", "requeue", "requeuehold"):
            return self._job_action(verb, rest)
        return 1, "", f"invalid keyword: {verb}\n"

    def _show_job(self, rest: list[str]) -> tuple[int, str, str]:
        ids = [int(r) for r in rest if r.isdigit()] or sorted(self.jobs)
        if any(i not in self.jobs for i in ids):
            return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
        return 0, "".join(self._one_line(self.jobs[i]) + "\n" for i in ids), ""

    @staticmethod
    def _one_line(j: dict[str, Any]) -> str:
        """The job as 22.05's ``scontrol show job -o`` prints it (the fields slurmft reads, in
        Slurm's order; times in local time like scontrol; Comment only when set)."""
        def when(ts: Any) -> str:
            return (datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")
                    if isinstance(ts, int) and ts > 0 else "Unknown")

        nodes = j.get("nodes") or "(null)"
        comment = [("Comment", j["comment"])] if j.get("comment") else []
        fields = [
            ("JobId", j["job_id"]), ("JobName", j.get("name", "")),
            ("UserId", f"{j.get('user_name', 'root')}({j.get('user_id', 0)})"),
            ("GroupId", "root(0)"), ("Priority", j.get("priority", 1)),
            ("JobState", j["job_state"]), ("Reason", j.get("state_reason", "None")),
            ("Requeue", 1 if j.get("requeue") else 0), ("Restarts", j.get("restart_cnt", 0)),
            ("ExitCode", f"{j.get('exit_code', 0)}:0"),
            ("SubmitTime", when(j.get("submit_time"))),
            ("StartTime", when(j.get("start_time"))), ("Partition", j.get("partition", "main")),
            ("ReqNodeList", j.get("required_nodes") or "(null)"),
            ("ExcNodeList", j.get("excluded_nodes") or "(null)"),
            ("NodeList", nodes), ("BatchHost", j.get("batch_host") or "(null)"),
            ("NumNodes", j.get("node_count", 0)), ("NumCPUs", j.get("cpus", 1)),
            ("NumTasks", j.get("tasks") or "N/A"), ("CPUs/Task", j.get("cpus_per_task") or 1),
            ("TRES", "cpu=4,mem=4000M,node=4,billing=4"),
            ("NtasksPerN:B:S:C", f"{j.get('tasks_per_node') or 0}:0:*:*"),
            ("Command", j.get("command", "")), ("WorkDir", j.get("current_working_directory", "")),
            *comment,
            ("StdOut", j.get("standard_output", "")),
        ]
        return " ".join(f"{k}={v}" for k, v in fields)

    def _update_job(self, rest: list[str]) -> tuple[int, str, str]:
        pairs = [a.split("=", 1) if "=" in a else [a, ""] for a in rest]
        # scontrol itself refuses unknown fields first and drops the whole request.
        for key, val in pairs:
            if key.lower() in ("minnodes", "begintime"):
                return 1, "", (f"Update of this parameter is not supported: {key}={val}\n"
                               "Request aborted\n")
        job_key = next(v for k, v in pairs if k.lower() in ("jobid", "job"))
        if not job_key.isdigit() or int(job_key) not in self.jobs:
            return 1, "", "slurm_update error: Invalid job id specified\n"
        j = self.jobs[int(job_key)]
        state = j["job_state"]
        changes: dict[str, Any] = {}
        for key, val in pairs:
            k = key.lower()
            if k in ("jobid", "job"):
                continue
            if k == "comment":
                changes["comment"] = val
                continue
            if state in ENDED:
                return 1, "", "slurm_update error: Job has already finished\n"
            if k == "numnodes":
                lo, _, hi = val.partition("-")
                if state == "RUNNING":
                    if int(lo) > j["node_count"]:
                        return 1, "", "slurm_update error: Job is no longer pending execution\n"
                    keep = _expand(j["nodes"])[: int(lo)]
                    changes["_place"] = keep
                else:
                    changes["node_count"] = int(lo)
                    changes["max_nodes"] = int(hi or 0)
            elif k in ("numtasks", "numcpus"):
                if state != "PENDING":
                    return 1, "", "slurm_update error: Job is no longer pending execution\n"
                changes["tasks" if k == "numtasks" else "cpus"] = int(val)
            elif k == "excnodelist":
                if state != "PENDING":
                    return 1, "", "slurm_update error: Job is no longer pending execution\n"
                unknown = [n for n in _expand(val) if n not in self.nodes]
                if unknown:
                    return 1, "", "slurm_update error: Invalid node name specified\n"
                changes["excluded_nodes"] = val
            elif k == "reqnodelist":
                if state != "PENDING":
                    return 1, "", "slurm_update error: Job is no longer pending execution\n"
                if any(n not in self.nodes for n in _expand(val)):
                    return 1, "", "slurm_update error: Invalid node name specified\n"
                changes["required_nodes"] = val
            elif k == "starttime":
                if state != "PENDING":
                    return 1, "", "slurm_update error: Job is no longer pending execution\n"
                changes["eligible_time"] = NOW
                if j.get("state_reason") == "BeginTime":
                    changes["state_reason"] = "None"
            else:
                return 1, "", (f"Update of this parameter is not supported: {key}={val}\n"
                               "Request aborted\n")
        keep = changes.pop("_place", None)
        if keep is not None:
            self._place(j, keep, node_count=len(keep))
        j.update(changes)
        return 0, "", ""

    def _update_node(self, rest: list[str]) -> tuple[int, str, str]:
        pairs = dict(a.split("=", 1) if "=" in a else (a, "") for a in rest)
        low = {k.lower(): v for k, v in pairs.items()}
        names = _expand(low.get("nodename", ""))
        state = low.get("state", "").upper()
        reason = low.get("reason", "")
        if state in ("DRAIN", "DOWN") and not reason:
            return 1, "", ("You must specify a reason when DOWNING or DRAINING a node. "
                           "Request denied\n")
        if not names or any(n not in self.nodes for n in names):
            return 1, "", "slurm_update error: Invalid node name specified\n"
        for n in names:
            node = self.nodes[n]
            flags = [f for f in node.get("state_flags", []) if f != "DRAIN"]
            if state == "DRAIN":
                node.update(state_flags=flags + ["DRAIN"], reason=reason)
            elif state == "DOWN":
                node.update(state="down", state_flags=flags, reason=reason)
                for j in self.jobs.values():  # the job on a downed node is killed + requeued
                    if j["job_state"] == "RUNNING" and n in _expand(j.get("nodes", "")):
                        if j["job_id"] in self.no_kill and n != j.get("batch_host"):
                            # --no-kill: the node leaves the job, which keeps running
                            keep = [x for x in _expand(j["nodes"]) if x != n]
                            self._place(j, keep, node_count=len(keep))
                        else:
                            self._node_fail(j)
            elif state in ("RESUME", "UNDRAIN"):
                drained = "DRAIN" in node.get("state_flags", [])
                if not drained and node["state"] != "down":
                    return 1, "", "slurm_update error: Invalid node state specified\n"
                node.update(state="idle" if node["state"] == "down" else node["state"],
                            state_flags=flags, reason="")
            elif state:
                return 1, "", "slurm_update error: Invalid node state specified\n"
        return 0, "", ""

    def _node_fail(self, j: dict[str, Any]) -> None:
        self._restart_steps(j["job_id"])
        if j.get("requeue"):
            j.update(job_state="PENDING", state_reason="BeginTime",
                     restart_cnt=j.get("restart_cnt", 0) + 1)
            self._place(j, [], node_count=j["node_count"])
        else:
            j.update(job_state="NODE_FAIL", state_reason="NodeDown")

    def _job_action(self, verb: str, rest: list[str]) -> tuple[int, str, str]:
        if not rest or not rest[0].isdigit() or int(rest[0]) not in self.jobs:
            return 1, "", f"Invalid job id specified for job {rest[0] if rest else ''}\n"
        job_id = int(rest[0])
        j = self.jobs[job_id]
        state = j["job_state"]
        if verb == "hold":
            if state != "PENDING":
                return 1, "", f"Job is no longer pending execution for job {job_id}\n"
            j.update(priority=0, state_reason="JobHeldUser")
        elif verb == "release":
            if state != "PENDING":
                return 1, "", f"Job is no longer pending execution for job {job_id}\n"
            if j.get("priority", 1) == 0:
                j.update(priority=1000, state_reason="None")
        else:  # requeue / requeuehold
            if state == "PENDING":
                return 1, "", f"Job is pending execution for job {job_id}\n"
            if not j.get("requeue") and state == "NODE_FAIL":
                return 1, "", f"Requested operation is presently disabled for job {job_id}\n"
            self._restart_steps(job_id)
            j.update(job_state="PENDING", restart_cnt=j.get("restart_cnt", 0) + 1,
                     state_reason="JobHeldUser" if verb == "requeuehold" else "BeginTime",
                     priority=0 if verb == "requeuehold" else j.get("priority", 1000))
            self._place(j, [], node_count=j["node_count"])
        return 0, "", ""

    def _restart_steps(self, job_id: int) -> None:
        self.end_steps(job_id)
        self._next_step.pop(job_id, None)
