"""The rendered EpilogSlurmctld wrapper recovers a job that lost a node, with no watcher.

A cluster of its own (the session cluster's tests break nodes and act themselves; an epilog
there would act on every one of their jobs too) whose slurm.conf names the wrapper that
`slurmft render deploy` wrote, installed as the kit says: the wrapper at --epilog-path, the
kit's slurmft.env at --etc-dir, the config it points to. Nothing else runs slurmft: Slurm
notices the dead node itself (SlurmdTimeout=10), requeues the job and runs the wrapper as
SlurmUser; the wrapper hands the job to a detached `slurmft reschedule`. The recovery is
read from Slurm: the batch script runs again on the 3 healthy nodes, the job excludes the
lost one, and that node is drained with slurmft's reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from slurmft.testbed import Cluster
from tests.integration.jobs import PY, LoopJob, node_line, running_on, show_job
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration

#: Under /var/lib (not /tmp): slurmctld runs the wrapper in the cluster's mount namespace.
KIT_ROOT = Path("/var/lib/slurmft")
CONFIG = """\
# slurmft config of the test site: probe by ping (what a link-down breaks; the cluster's SSH
# identity is root's, the kit's probe user has none here)
probe:
  ssh: false
  timeout: 2
log:
  level: INFO
"""


def render_kit(out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURMFT_", "SLURM_"))}
    return subprocess.run([PY, "-m", "slurmft", "render", "deploy", "--out", str(out), *flags],
                          env=env, capture_output=True, text=True, timeout=60)


def conf_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def epilog_site():
    """(cluster, kit dir): a 4-node cluster whose EpilogSlurmctld is the rendered wrapper."""
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    kit = KIT_ROOT / f"epilog-wrapper-{os.getpid()}"
    shutil.rmtree(kit, ignore_errors=True)
    kit.mkdir(parents=True)
    wrapper = kit / "slurmft-epilog"
    c = Cluster(f"sft-ew{os.getpid() % 100000}")
    c.down()
    try:
        yield from _site(c, kit, wrapper)
    finally:
        c.down()
        shutil.rmtree(kit, ignore_errors=True)


def _site(c: Cluster, kit: Path, wrapper: Path):
    # Rendered before the cluster starts: slurmctld checks EpilogSlurmctld when it reads
    # slurm.conf and ignores a missing script ("Invalid EpilogSlurmctld") until restarted.
    state_dir = c.state_dir / "shared" / "slurmft"
    (kit / "slurmft.yaml").write_text(CONFIG)
    res = render_kit(kit, "--config", str(kit / "slurmft.yaml"), "--etc-dir", str(kit),
                     "--epilog-path", str(wrapper), "--slurm-user", "root",
                     "--state-dir", str(state_dir), "--log-dir", str(kit / "log"))
    assert res.returncode == 0, res.stderr
    c.up(nodes=4, epilog=str(wrapper))
    assert c.layout.slurmft_state_dir == state_dir
    # The site's slurm.conf sits where Slurm's commands look by default; the testbed's
    # does not, and slurmctld gives EpilogSlurmctld no SLURM_CONF (measured on 22.05:
    # only SLURM_* job variables): the operator's one line in the env file.
    with open(kit / "slurmft.env", "a") as env_file:
        env_file.write(f"# testbed: slurm.conf is not at /etc/slurm/slurm.conf\n"
                       f"SLURM_CONF={c.slurm_conf_path}\n")
    yield c, kit


def test_the_cluster_runs_the_rendered_wrapper(epilog_site):
    c, kit = epilog_site
    slurm_conf = conf_lines(c.slurm_conf_path.read_text())
    snippet = conf_lines((kit / "slurm.conf.slurmft").read_text())
    assert snippet == [f"EpilogSlurmctld={kit / 'slurmft-epilog'}", "JobRequeue=1",
                       "SchedulerParameters=permit_job_expansion"]
    # SchedulerParameters merged into the line a site has (the test cluster adds its own)
    have = {p for line in slurm_conf if line.startswith("SchedulerParameters=")
            for p in line.split("=", 1)[1].split(",")}
    assert all(line in slurm_conf or (line.startswith("SchedulerParameters=") and set(
        line.split("=", 1)[1].split(",")) <= have) for line in snippet), (snippet, slurm_conf)
    wrapper = (kit / "slurmft-epilog").read_text()
    assert wrapper.startswith("#!/bin/sh\n# EpilogSlurmctld wrapper for slurmft")
    assert f". {kit / 'slurmft.env'}" in wrapper
    assert os.stat(kit / "slurmft-epilog").st_mode & 0o777 == 0o755
    assert "Invalid EpilogSlurmctld" not in c.log_path("slurmctld").read_text()


def test_epilog_wrapper_recovers_a_job_that_lost_a_node_without_a_watcher(epilog_site):
    c, kit = epilog_site
    jobs = LoopJob(c, "ewrap")
    state_dir = Path(c.layout.slurmft_state_dir)
    try:
        jid = jobs.submit(4)
        assert not (state_dir / "epilog.log").exists()
        t0 = time.monotonic()
        jobs.link_down("node2")
        nodes = wait_for(lambda: running_on(jobs.run, jid, 3), 90,
                         "the job RUNNING again on 3 nodes through EpilogSlurmctld",
                         show=lambda: (show_job(jobs.run, jid),
                                       _tail(state_dir / "epilog.log")))
        took = time.monotonic() - t0
        assert "node2" not in nodes
        # Slurm's side: the batch script ran again (a second start line, Restarts), the job
        # excludes the lost node, and the node is drained with slurmft's reason.
        j = show_job(jobs.run, jid)
        assert int(j["Restarts"]) >= 1 and j["ExcNodeList"] == "node2"
        starts = wait_for(lambda: [line for line in jobs.output(jid).splitlines()
                                   if line.startswith("start ")][1:] or None, 15,
                          "the batch script's second start", show=lambda: jobs.output(jid))
        assert "nodes=node[1,3-4]" in starts[-1] and "restarts=0" not in starts[-1]
        state, reason = wait_for(lambda: (line := node_line(jobs.run, "node2"))[0]
                                 .startswith("drain") and line, 15, "node2 drained",
                                 show=lambda: node_line(jobs.run, "node2"))
        assert "slurmft" in reason and str(jid) in reason, reason
        # What did it: the wrapper's log (the detached reschedule's report), no watcher.
        log = (state_dir / "epilog.log").read_text()
        assert f"job {jid}" in log and "ExcNodeList=node2" in log, log
        assert "Traceback" not in log
        print(f"rendered epilog wrapper: fault -> RUNNING on {','.join(nodes)} in {took:.1f}s; "
              f"node2 {state} ({reason})")
    finally:
        jobs.cleanup()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "-"
