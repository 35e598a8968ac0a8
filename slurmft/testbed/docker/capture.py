"""Capture what a real Slurm release prints, from a docker test cluster, into
``tests/data/slurm-<release>/`` (the unit tests run every parser over every release's files).

    slurmft cluster up --backend docker --slurm 24.11 --nodes 4 --name rel2411
    python -m slurmft.testbed.docker.capture --name rel2411 [--out tests/data]
    slurmft cluster down --backend docker --name rel2411

On a cluster of at least 4 idle nodes it makes a known state (a requeueable job running one
step on node[1-2], a held job, a job pending with --begin and --exclude, a completed and a
failed job; node3 drained, node4 down with its slurmd killed, each with a reason), then
writes:

- ``version.txt``: ``sinfo --version``
- ``squeue.json``, ``sinfo.json``: ``squeue --all --states=all --json``, ``sinfo --json --Node``;
  ``sinfo_two_reasons.json``: the same with node3 and node4 drained for different reasons
- ``show_job.txt``: ``scontrol show job -o`` of every job; ``show_node.txt``: ``scontrol show
  node -o``
- ``steps.txt``, ``allocation.txt``: the argv of ``slurm.commands`` for every job's steps and
  for the running job's nodes
- ``errors.json``: {case: {argv, returncode, stdout, stderr}} of the scontrol/scancel/sbatch
  commands slurmft runs, on bad ids, bad nodes and jobs in the wrong state
- ``capture.json``: the job ids and nodes of each role (what the tests expect), the release

Afterwards it cancels its jobs and resumes the nodes. It runs commands only in the cluster's
controller container (``DockerCluster.run``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from slurmft.core.errors import SlurmFTError, UsageError
from slurmft.slurm import commands as scli
from slurmft.slurm.version import parse_version
from slurmft.testbed.docker.cluster import DockerCluster

BAD_JOB = 4_000_000          # a job id no test cluster reaches
BAD_NODE = "node99"
REASON_DRAIN = "slurmft capture: drained"
REASON_DOWN = "slurmft capture: down"
TWO_REASONS = {"node3": "slurmft capture: reason A", "node4": "slurmft capture: reason B"}


class Capture:
    def __init__(self, cluster: DockerCluster) -> None:
        self.c = cluster

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0):
        cp = self.c.run(list(argv), timeout=timeout)
        if check and cp.returncode != 0:
            raise SlurmFTError(f"{' '.join(argv)} failed (rc={cp.returncode}): "
                               f"{cp.stderr.strip()[-300:]}")
        return cp

    def sbatch(self, *args: str) -> int:
        out = self.run("sbatch", "--parsable", "-o", "/dev/null", *args).stdout
        return int(out.strip().split(";")[0])

    def field(self, job: int, key: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", str(job)).stdout
        for word in out.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
        return ""

    def wait(self, what: str, pred, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.5)
        raise SlurmFTError(f"capture: timed out waiting for {what}")

    def error_case(self, argv: list[str]) -> dict:
        cp = self.run(*argv, check=False)
        return {"argv": argv, "returncode": cp.returncode, "stdout": cp.stdout,
                "stderr": cp.stderr}

    def make_state(self) -> dict:
        nodes = self.c.nodes
        if len(nodes) < 4:
            raise UsageError("capture needs a cluster of at least 4 nodes (--nodes 4)")
        running = self.sbatch("--requeue", "-N2", "-w", "node[1-2]", "-J", "cap-running",
                              "--wrap", "srun sleep 600")
        self.wait(f"job {running} running with step 0",
                  lambda: self.field(running, "JobState") == "RUNNING"
                  and f"{running}.0" in self.run("squeue", "--all", "--steps", "--noheader",
                                                  "--format", "%i").stdout.split())
        # On node3 only: a job's messages from node4 would bring it back from DOWN.
        completed = self.sbatch("-N1", "-w", "node3", "-J", "cap-completed", "--wrap", "true")
        failed = self.sbatch("-N1", "-w", "node3", "-J", "cap-failed", "--wrap", "exit 3")
        self.wait("the short jobs ended",
                  lambda: self.field(completed, "JobState") == "COMPLETED"
                  and self.field(failed, "JobState") == "FAILED")
        held = self.sbatch("--hold", "-N1", "-J", "cap-held", "--wrap", "true")
        begin = self.sbatch("-N2", "--exclude=node1", "--begin=now+3600", "-J", "cap-begin",
                            "--requeue", "--wrap", "true")
        self.run("scontrol", "update", "NodeName=node3", "State=DRAIN", f"Reason={REASON_DRAIN}")
        # slurmd stopped first: with ReturnToService=2 a live slurmd would bring node4 back.
        self.c.fault("node4", "kill-slurmd")
        self.run("scontrol", "update", "NodeName=node4", "State=DOWN", f"Reason={REASON_DOWN}")
        return {"running": running, "completed": completed, "failed": failed, "held": held,
                "begin": begin}

    def errors(self, jobs: dict) -> dict:
        cases = {
            "show_job_invalid": scli.build_show_job_argv(BAD_JOB),
            "requeue_invalid": scli.build_job_action_argv("requeue", BAD_JOB),
            "hold_invalid": scli.build_job_action_argv("hold", BAD_JOB),
            "scancel_invalid": scli.build_cancel_argv(BAD_JOB),
            "update_invalid": scli.build_update_job_argv(BAD_JOB, start_now=True),
            "update_running_exclude": scli.build_update_job_argv(jobs["running"],
                                                                  exclude=["node3"]),
            "update_finished": scli.build_update_job_argv(jobs["completed"],
                                                          exclude=["node3"]),
            "requeue_pending": scli.build_job_action_argv("requeue", jobs["held"]),
            "update_minnodes": ["scontrol", "update", f"JobId={jobs['held']}", "MinNodes=1"],
            "update_begintime": ["scontrol", "update", f"JobId={jobs['held']}",
                                 "BeginTime=now"],
            "node_invalid": scli.build_node_update_argv([BAD_NODE], "DRAIN", "x"),
            "node_no_reason": scli.build_node_update_argv(["node2"], "DRAIN", None),
            "node_resume_allocated": ["scontrol", "update", "NodeName=node2", "State=RESUME"],
            "sbatch_unsatisfiable": ["sbatch", "--parsable", "-N4", "--exclude=node4",
                                     "--wrap", "true"],
            "signal_steps_invalid": scli.build_signal_steps_argv(BAD_JOB, [0], "KILL"),
            "kill_job_invalid": scli.build_kill_batch_argv(BAD_JOB),
            "signal_batch_invalid": scli.build_signal_batch_argv(BAD_JOB, "USR1"),
            "release_invalid": scli.build_job_action_argv("release", BAD_JOB),
            "requeuehold_invalid": scli.build_job_action_argv("requeuehold", BAD_JOB),
            "allocation_invalid": scli.build_allocation_argv(BAD_JOB),
            "steps_invalid": scli.build_steps_argv(BAD_JOB),
        }
        return {name: self.error_case(argv) for name, argv in cases.items()}

    def restore(self, jobs: dict) -> None:
        for job in jobs.values():
            self.run("scancel", str(job), check=False)
        self.c.fault("node4", "restart-slurmd")
        for node in ("node3", "node4"):
            self.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        self.wait("every node idle again",
                  lambda: set(self.c.slurm_view().values()) == {"idle"}, 60)


def capture(name: str, out_root: Path) -> Path:
    c = DockerCluster(name)
    if not c.is_up():
        raise UsageError(f"docker cluster {name} is not up: slurmft cluster up --backend "
                         f"docker --slurm RELEASE --nodes 4 --name {name}")
    cap = Capture(c)
    version_text = cap.run("sinfo", "--version").stdout
    version = parse_version(version_text)
    out = out_root / f"slurm-{version.release}"
    out.mkdir(parents=True, exist_ok=True)
    jobs = cap.make_state()
    try:
        files = {
            "version.txt": version_text,
            "squeue.json": cap.run(*scli.build_squeue_argv()).stdout,
            "sinfo.json": cap.run(*scli.build_sinfo_argv()).stdout,
            "show_job.txt": "".join(cap.run(*scli.build_show_job_argv(j)).stdout
                                    for j in jobs.values()),
            "show_node.txt": cap.run("scontrol", "show", "node", "-o").stdout,
            "steps.txt": cap.run(*scli.build_all_steps_argv()).stdout,
            "steps_running.txt": cap.run(*scli.build_steps_argv(jobs["running"])).stdout,
            "allocation.txt": cap.run(*scli.build_allocation_argv(jobs["running"])).stdout,
        }
        errors = cap.errors(jobs)
    finally:
        cap.restore(jobs)
    # Two nodes in one state with different reasons (24.11 groups them without --Node).
    for node, reason in TWO_REASONS.items():
        cap.run("scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")
    try:
        files["sinfo_two_reasons.json"] = cap.run(*scli.build_sinfo_argv()).stdout
    finally:
        for node in TWO_REASONS:
            cap.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
    for fname, text in files.items():
        if fname.endswith(".json"):
            text = json.dumps(json.loads(text), indent=1) + "\n"   # diff-friendly, same data
        (out / fname).write_text(text)
    (out / "errors.json").write_text(json.dumps(errors, indent=1) + "\n")
    (out / "capture.json").write_text(json.dumps({
        "version": str(version), "release": version.release,
        "jobs": jobs, "running_nodes": ["node1", "node2"],
        "drained": {"node": "node3", "reason": REASON_DRAIN},
        "down": {"node": "node4", "reason": REASON_DOWN},
        "nodes": c.nodes, "bad_job": BAD_JOB, "bad_node": BAD_NODE,
        "two_reasons": TWO_REASONS,
    }, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slurmft.testbed.docker.capture",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the docker test cluster (4+ nodes, idle)")
    ap.add_argument("--out", default="tests/data", type=Path,
                    help="folder for slurm-<release>/ (default tests/data)")
    args = ap.parse_args(argv)
    try:
        out = capture(args.name, args.out)
    except SlurmFTError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 1
    print(f"captured into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
