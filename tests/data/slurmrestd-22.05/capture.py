"""Capture real slurmrestd (22.05, OpenAPI v0.0.38) answers into this directory.

Run as root against an idle local cluster started with ``--rest`` (2 or more nodes)::

    .venv/bin/python -m slurmft cluster up --name rest1 --nodes 2 --rest
    .venv/bin/python tests/data/slurmrestd-22.05/capture.py --name rest1

Each file is one exchange: ``{"request": {method, path, body}, "status", "content_type",
"body"}`` with ``body`` the raw text slurmrestd sent. ``tests/unit/test_slurm_rest.py`` serves
them again from a fake HTTP server on a unix socket (only bytes the real daemon sent).
Job ids, times and paths are the capture run's own.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
API = "/slurm/v0.0.38"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parents[2]))
    from slurmft.testbed import Cluster

    cluster = Cluster(args.name)
    rest = cluster.status()["rest"]
    if not rest:
        raise SystemExit(f"cluster {args.name} runs no slurmrestd: cluster up --rest")
    sock = rest["url"].removeprefix("unix:")
    token = Path(rest["token_file"]).read_text().strip()
    shared = str(cluster.shared_dir)
    nodes = cluster.nodes

    def call(name: str | None, method: str, path: str, body=None, *, user="root",
             tok: str | None = token) -> dict:
        conn = UnixConnection(sock)
        headers = {"X-SLURM-USER-NAME": user}
        if tok is not None:
            headers["X-SLURM-USER-TOKEN"] = tok
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        rec = {"request": {"method": method, "path": path, "body": body},
               "status": resp.status, "content_type": resp.getheader("Content-Type", ""),
               "body": text}
        if name:
            (HERE / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
            print(f"{name}: {method} {path} -> {resp.status}")
        return rec

    def job_id(rec: dict) -> int:
        return json.loads(rec["body"])["job_id"]

    def job_state(jid: int) -> str:
        return json.loads(call(None, "GET", f"{API}/job/{jid}")["body"])["jobs"][0]["job_state"]

    def wait_state(jid: int, want: str) -> None:
        for _ in range(100):
            if job_state(jid) == want:
                return
            time.sleep(0.2)
        raise SystemExit(f"job {jid} never reached {want}")

    env = {"PATH": "/usr/bin:/bin"}
    call("ping", "GET", f"{API}/ping")
    call("nodes", "GET", f"{API}/nodes")
    call("node", "GET", f"{API}/node/{nodes[0]}")
    call("node_unknown", "GET", f"{API}/node/nosuchnode")
    a = job_id(call("submit", "POST", f"{API}/job/submit", {
        "script": "#!/bin/bash\nsleep 300\n",
        "job": {"name": "rest-a", "nodes": str(len(nodes)), "requeue": True,
                "current_working_directory": shared, "environment": env,
                "standard_output": f"{shared}/rest-a-%j.out"}}))
    wait_state(a, "RUNNING")
    b = job_id(call(None, "POST", f"{API}/job/submit", {
        "script": "#!/bin/bash\nsleep 300\n",
        "job": {"name": "rest-b", "nodes": "1", "tasks_per_node": 2, "comment": "pending one",
                "current_working_directory": shared, "environment": env}}))
    call("submit_unsatisfiable", "POST", f"{API}/job/submit", {
        "script": "#!/bin/bash\ntrue\n",
        "job": {"name": "rest-c", "nodes": str(len(nodes) + 5),
                "current_working_directory": shared, "environment": env}})
    call("submit_no_environment", "POST", f"{API}/job/submit", {
        "script": "#!/bin/bash\ntrue\n", "job": {"name": "rest-d",
                                                "current_working_directory": shared}})
    call("update_hold", "POST", f"{API}/job/{b}", {"hold": True})
    call("job_held", "GET", f"{API}/job/{b}")
    call("update_pending", "POST", f"{API}/job/{b}", {
        "exclude_nodes": nodes[-1], "nodes": "1-1", "tasks": 2, "cpus_per_task": 1,
        "begin_time": "now", "comment": "updated by capture"})
    call("update_release", "POST", f"{API}/job/{b}", {"hold": False})
    call("job_pending", "GET", f"{API}/job/{b}")
    call("job_running", "GET", f"{API}/job/{a}")
    call("jobs", "GET", f"{API}/jobs")
    call("update_not_pending", "POST", f"{API}/job/{a}", {"exclude_nodes": nodes[-1]})
    call("update_unknown_job", "POST", f"{API}/job/999999", {"comment": "x"})
    call("update_unknown_key", "POST", f"{API}/job/{b}", {"no_such_key": 1})
    call("job_unknown", "GET", f"{API}/job/999999")
    call("delete_kill", "DELETE", f"{API}/job/{a}?signal=KILL")
    wait_state(a, "CANCELLED")
    call("job_cancelled", "GET", f"{API}/job/{a}")
    call("delete_unknown", "DELETE", f"{API}/job/999999?signal=KILL")
    call("auth_bad_token", "GET", f"{API}/jobs", tok="not-a-token")
    call("auth_no_token", "GET", f"{API}/jobs", tok=None)
    call("not_found", "GET", "/slurm/v0.0.99/jobs")
    call(None, "DELETE", f"{API}/job/{b}?signal=KILL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
