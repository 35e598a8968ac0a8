"""`slurmft probe` against the real local cluster, with real faults injected and restored.

Runs the CLI inside the controller namespace (``cluster.exec_argv`` + ``cluster.env()``), so
ping and SSH reach the nodes' own sshd over the cluster bridge only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXIT_UNHEALTHY = 10


def probe(cluster, *args: str, timeout: float = 60) -> tuple[int, dict, float]:
    argv = cluster.exec_argv([sys.executable, "-m", "slurmft", "probe", *args, "--json"])
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=cluster.env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    wall = time.monotonic() - t0
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, {h["host"]: h for h in doc.get("hosts", [])}, wall


@contextmanager
def fault(cluster, node: str, action: str, undo: str):
    cluster.fault(node, action)
    try:
        yield
    finally:
        cluster.fault(node, undo)


def wait_healthy(cluster, node: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rc, res, _ = probe(cluster, node, "--timeout", "2")
        if rc == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"{node} did not come back healthy: {res}")


def hostlist(cluster) -> str:
    return ",".join(cluster.nodes)


def test_all_healthy(cluster):
    rc, res, _ = probe(cluster, hostlist(cluster), "--timeout", "5")
    assert rc == 0, res
    assert set(res) == set(cluster.nodes)
    for r in res.values():
        assert r["state"] == "HEALTHY" and r["checks"] == {"command": "ok"}


def test_link_down_is_unreachable(cluster):
    node = cluster.nodes[-1]
    with fault(cluster, node, "link-down", "link-up"):
        rc, res, _ = probe(cluster, hostlist(cluster), "--timeout", "2")
    wait_healthy(cluster, node)
    assert rc == EXIT_UNHEALTHY
    assert res[node]["state"] == "UNREACHABLE" and "no ping reply" in res[node]["reason"]
    assert all(r["state"] == "HEALTHY" for h, r in res.items() if h != node), res


def test_stopped_sshd_is_unresponsive(cluster):
    node = cluster.nodes[0]
    with fault(cluster, node, "stop-sshd", "start-sshd"):
        rc, res, _ = probe(cluster, node, "--timeout", "2")
    wait_healthy(cluster, node)
    assert rc == EXIT_UNHEALTHY
    assert res[node]["state"] == "UNRESPONSIVE" and "refused" in res[node]["reason"]


def test_frozen_sshd_is_unresponsive_within_timeout(cluster):
    node = cluster.nodes[0]
    timeout = 1.5
    with fault(cluster, node, "freeze-sshd", "thaw-sshd"):
        rc, res, wall = probe(cluster, node, "--timeout", str(timeout))
    wait_healthy(cluster, node)
    assert rc == EXIT_UNHEALTHY
    assert res[node]["state"] == "UNRESPONSIVE", res
    assert res[node]["reason"].startswith("ssh:") or "timed out" in res[node]["reason"]
    # The host's own deadline holds (plus the fan-out grace), whatever the frozen sshd does.
    assert res[node]["latency_s"] <= timeout + max(0.2, 0.25 * timeout) + 0.1


def test_failing_health_command_is_degraded(cluster):
    bad = cluster.nodes[1]
    rc, res, _ = probe(cluster, hostlist(cluster), "--timeout", "5",
                       "--command", f'test "$(hostname)" != {bad} || {{ echo sick >&2; exit 3; }}')
    assert rc == EXIT_UNHEALTHY
    assert res[bad]["state"] == "DEGRADED"
    assert res[bad]["reason"] == "health command exited 3: sick"
    assert all(r["state"] == "HEALTHY" for h, r in res.items() if h != bad)


def test_hanging_command_is_unresponsive(cluster):
    node = cluster.nodes[0]
    rc, res, _ = probe(cluster, node, "--timeout", "1.5", "--command", "sleep 30")
    assert rc == EXIT_UNHEALTHY
    assert res[node]["state"] == "UNRESPONSIVE" and "timed out" in res[node]["reason"]


def test_bad_host_name_runs_nothing(cluster):
    argv = cluster.exec_argv([sys.executable, "-m", "slurmft", "probe", "node1;touch /tmp/x"])
    proc = subprocess.run(argv, env=cluster.env(), capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("slurmft: invalid hostlist") and "Traceback" not in proc.stderr


def test_probe_job_nodes(cluster, tmp_path):
    from slurmft.slurm.client import CommandSlurmClient
    from slurmft.slurm.runner import SubprocessRunner

    runner = SubprocessRunner(prefix=cluster.exec_argv(["true"])[:-1], env=cluster.env())
    client = CommandSlurmClient(runner=runner, timeout=30)
    script = Path(cluster.shared_dir) / "probe-test-job.sh"
    script.write_text("#!/bin/sh\nsleep 120\n")
    script.chmod(0o755)
    n = min(2, len(cluster.nodes))
    job_id = client.submit(str(script), [f"-N{n}", f"--chdir={cluster.shared_dir}",
                                         "--output=/dev/null", "-J", "probe-test"])
    try:
        deadline = time.monotonic() + 30
        while client.job(job_id).state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.3)
        job = client.job(job_id)
        assert job.state == "RUNNING" and len(job.nodes) == n
        rc, res, _ = probe(cluster, "--job", str(job_id), "--timeout", "5")
        assert rc == 0 and list(res) == list(job.nodes)
    finally:
        client.cancel(job_id)
