"""A real Prometheus server scrapes a real `slurmft exporter` during a real recovery.

Everything the site kit says is used as rendered by `slurmft render deploy`: Prometheus reads
the kit's prometheus.yml (scrape targets localhost:9464 and localhost:9100 as an operator gets
them; --scrape-interval 1 so the test needs no minutes) and its slurmft.rules.yml; the
exporter runs the ExecStart line of the kit's slurmft-exporter.service with the kit's
slurmft.env. Both run inside the test cluster's controller network namespace (its own
loopback: nothing listens on the host, no port can clash with anything else on the machine),
started by pid like the cluster's daemons (slurmft.testbed.procs) and stopped by pid.

The recovery is real: `slurmft watch` notices a 4-node job's node lose its link, requeues the
job onto the other 3 and audits `recovered` once its training step runs again; Prometheus's
query API must then return slurmft_reschedules_total > 0 and the recovery histogram.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from slurmft.render.deploy import env_assignments, unit_environment
from slurmft.testbed import procs
from tests.integration.jobs import PY, LoopJob, running_on, show_job, slurmft
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
#: Prometheus's listen address, inside the cluster's controller netns (loopback only).
PROM = "127.0.0.1:9090"
#: Probe by ping (what a link-down breaks), as in test_reschedule.py.
PROBE_ENV = {"SLURMFT_PROBE_SSH": "false", "SLURMFT_PROBE_TIMEOUT": "1"}
#: Fetch one URL from inside the controller netns (where Prometheus listens).
FETCH = ("import sys, urllib.request\n"
         "with urllib.request.urlopen(sys.argv[1], timeout=5) as r:\n"
         "    sys.stdout.write(r.read().decode())\n")


def render_kit(out: Path, *flags: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURMFT_", "SLURM_"))}
    cp = subprocess.run([PY, "-m", "slurmft", "render", "deploy", "--out", str(out), *flags],
                        env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr


class PromAPI:
    """Prometheus's HTTP API, called from inside the cluster's controller netns."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    def get(self, path: str, **params: str) -> dict | str | None:
        url = f"http://{PROM}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        cp = subprocess.run(self.cluster.exec_argv([PY, "-c", FETCH, url]),
                            env=self.cluster.env(), capture_output=True, text=True, timeout=30)
        if cp.returncode != 0:
            return None
        if not path.startswith("/api/"):
            return cp.stdout
        doc = json.loads(cp.stdout)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant vector of ``expr``: {series label text: value}."""
        data = self.get("/api/v1/query", query=expr) or {"result": []}
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                for r in data["result"]}

    def rules(self) -> list[dict]:
        data = self.get("/api/v1/rules") or {"groups": []}
        return [r for g in data["groups"] for r in g["rules"]]


def stop(proc: procs.Proc | None) -> None:
    """SIGTERM the process we started (checked by its start time), SIGKILL if it lingers."""
    if proc is None:
        return
    procs.signal_proc(proc, signal.SIGTERM)
    if procs.wait_gone([proc], 15):
        procs.signal_proc(proc, signal.SIGKILL)
        procs.wait_gone([proc], 5)


@pytest.fixture
def site(cluster, tmp_path):
    """The rendered kit, a fresh slurmft state dir (job ids restart with every cluster) and
    a checkpoint dir, both on the cluster's shared storage."""
    shared = Path(cluster.shared_dir)
    state = shared / f"prom-state-{os.getpid()}"
    ckpt = shared / f"prom-ckpt-{os.getpid()}"
    for d in (state, ckpt):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    out = tmp_path / "site"
    render_kit(out, "--scrape-interval", "1", "--state-dir", str(state),
               "--checkpoint-dir", str(ckpt), "--etc-dir", str(tmp_path / "etc"),
               "--log-dir", str(tmp_path / "log"))
    try:
        yield out, state, ckpt
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)


@pytest.fixture
def services(cluster, site, tmp_path):
    """The kit's exporter (its unit's ExecStart and environment) and a Prometheus server on
    the kit's prometheus.yml, both in the controller netns; stopped by pid afterwards."""
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: `make apt` installs Debian's prometheus package")
    out, state, _ckpt = site
    unit = (out / "slurmft-exporter.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ExecStart="))
    env = {**cluster.env(), **env_assignments((out / "slurmft.env").read_text()),
           **unit_environment(unit)}
    env["SLURMFT_LOG_FILE"] = str(tmp_path / "exporter.log")   # not the unit's /var/log/...
    assert env["SLURMFT_RESCHEDULE_STATE_DIR"] == str(state)
    started: list[procs.Proc] = []
    try:
        started.append(procs.spawn(cluster.exec_argv(shlex.split(exec_start)),
                                   tmp_path / "exporter.out", env=env))
        started.append(procs.spawn(cluster.exec_argv([
            PROMETHEUS, f"--config.file={out / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={PROM}",
            "--storage.tsdb.retention.time=1h"]), tmp_path / "prometheus.log",
            env=cluster.env()))
        api = PromAPI(cluster)
        wait_for(lambda: "Ready" in (api.get("/-/ready") or ""), 30, "Prometheus ready",
                 show=lambda: procs.tail(tmp_path / "prometheus.log", 5))
        yield api, started
    finally:
        for proc in reversed(started):
            stop(proc)
        for proc in started:
            assert not procs.alive(proc)


def test_prometheus_sees_a_real_recovery_and_loads_the_alert_rules(cluster, site, services,
                                                                   tmp_path):
    out, state, _ckpt = site
    api, (exporter, prometheus) = services
    t_start = time.monotonic()

    # The kit's scrape config reaches the exporter where its unit listens.
    up = wait_for(lambda: api.query('up{job="slurmft-exporter"} == 1'), 15,
                  "the exporter scraped (up == 1)",
                  show=lambda: api.get("/api/v1/targets"))
    assert [json.loads(k)["instance"] for k in up] == ["localhost:9464"]

    # Every rule of the kit loaded and evaluates.
    want = {r["alert"] for g in yaml.safe_load((out / "slurmft.rules.yml").read_text())["groups"]
            for r in g["rules"]}
    rules = wait_for(lambda: (rs := api.rules()) and all(r["health"] == "ok" for r in rs)
                     and rs, 15, "every rule evaluated with health ok", show=api.rules)
    assert {r["name"] for r in rules} == want and len(rules) == len(want)
    assert all(r["type"] == "alerting" and not r.get("lastError") for r in rules)
    # nothing rescheduled or recovered yet in this state dir (the histogram exists, empty)
    assert api.query("slurmft_reschedules_total") == {}
    assert list(api.query("slurmft_recovery_seconds_count").values()) == [0.0]

    jobs = LoopJob(cluster, "prom")
    watch = None
    try:
        jid = jobs.submit(4)
        watch = procs.spawn(cluster.exec_argv(slurmft("watch", "--job", str(jid),
                                                      "--interval", "0.5")),
                            tmp_path / "watch.log",
                            env={**cluster.env(), **PROBE_ENV,
                                 "SLURMFT_RESCHEDULE_STATE_DIR": str(state)})
        time.sleep(1.5)                      # a few healthy cycles first
        t0 = time.monotonic()
        jobs.link_down("node2")
        nodes = wait_for(lambda: running_on(jobs.run, jid, 3), 30, "RUNNING on 3 nodes",
                         show=lambda: (show_job(jobs.run, jid),
                                       procs.tail(tmp_path / "watch.log", 5)))
        assert "node2" not in nodes
        fault_to_running = time.monotonic() - t0

        def recovered_in_prometheus():
            resched = api.query("slurmft_reschedules_total > 0")
            count = api.query("slurmft_recovery_seconds_count > 0")
            return resched and count and (resched, count)

        resched, count = wait_for(recovered_in_prometheus, 40,
                                  "slurmft_reschedules_total > 0 and the recovery histogram",
                                  step=0.5, show=lambda: (
                                      procs.tail(state / "audit.jsonl", 3),
                                      procs.tail(tmp_path / "watch.log", 5),
                                      show_job(jobs.run, jid),
                                      jobs.run(["squeue", "--steps", "--jobs", str(jid)]).stdout))
        fault_to_prometheus = time.monotonic() - t0
    finally:
        stop(watch)
        jobs.cleanup()

    assert {json.loads(k)["outcome"]: v for k, v in resched.items()} == {"requeue": 1.0}
    assert list(count.values()) == [1.0]
    recovery_s = api.query("slurmft_recovery_seconds_sum")
    assert 0 < next(iter(recovery_s.values())) < 60
    buckets = api.query('slurmft_recovery_seconds_bucket{le="+Inf"}')
    assert list(buckets.values()) == [1.0]
    assert api.query("slurmft_detection_seconds_count") and api.query(
        'slurmft_node_health{state="unreachable"} == 1')
    # The rules see the real data: the node the reschedule found unreachable makes
    # SlurmftNodeUnhealthy pending (it fires after --node-unhealthy-for, 30 minutes).
    pending = wait_for(lambda: {r["name"]: r["state"] for r in api.rules()
                                if r["state"] != "inactive"}.get("SlurmftNodeUnhealthy"), 10,
                       "SlurmftNodeUnhealthy pending", show=api.rules)
    assert pending == "pending"
    assert procs.alive(exporter) and procs.alive(prometheus)
    print(f"fault -> RUNNING on 3 nodes {fault_to_running:.1f}s; -> in Prometheus "
          f"{fault_to_prometheus:.1f}s; recovery_seconds {next(iter(recovery_s.values())):.1f}; "
          f"test {time.monotonic() - t_start:.1f}s")
