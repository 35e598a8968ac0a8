"""`slurmft watch` as a non-root service user, probing over SSH as that user, recovers a job.

The site kit's route "run the watcher as SlurmUser" (PRIVILEGES.md): a cluster of its own
whose slurm.conf has SlurmUser=slurmft-op (slurmctld drops to it), so that user may drain
nodes and requeue anyone's job; nobody else but root may. (The other route, a Slurm operator
made with `sacctmgr ... adminlevel=operator`, needs slurmdbd, which the test cluster does not
run.) Everything comes from the rendered kit: the state dir is a setgid folder of the
service user's group, the probe's identity is made by the kit's probe-ssh-setup.sh and its
`restrict` line goes into the nodes' authorized keys, and the watcher runs the ExecStart
line of slurmft-watch.service as its User= with its EnvironmentFile (slurmft.env:
reschedule.operator on, the probe's user, key and known_hosts).

A root job loses a node's link; Slurm's side must show it running on the other 3 nodes with
the lost one drained by slurmft, and the nodes' sshd logs show the probe logged in as the
service user, never as root.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slurmft.render.deploy import env_assignments, unit_environment
from slurmft.testbed import Cluster, procs
from tests.integration.jobs import PY, LoopJob, node_line, running_on, show_job
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.integration

OP_USER = "slurmft-op"
SITE_ROOT = Path("/var/lib/slurmft")


def render_kit(out: Path, *flags: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURMFT_", "SLURM_"))}
    cp = subprocess.run([PY, "-m", "slurmft", "render", "deploy", "--out", str(out), *flags],
                        env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])         # real uid
    except OSError:
        return None
    return None


@pytest.fixture(scope="module")
def op_user():
    """The service user (created for the test if missing, with a shell: sshd runs the probe's
    command through it; password '*', no login by password but not locked: sshd without PAM
    refuses every login, key or not, to a locked account ('!')), removed afterwards if the
    test created it."""
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    created = False
    try:
        pwd.getpwnam(OP_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                        "/bin/sh", "--password", "*", OP_USER], check=True, capture_output=True)
        created = True
    pw = pwd.getpwnam(OP_USER)
    assert pw.pw_uid != 0
    yield pw
    if created:
        subprocess.run(["userdel", OP_USER], capture_output=True)


@pytest.fixture(scope="module")
def op_site(op_user):
    """(cluster, site dir, state dir): SlurmUser=slurmft-op, the kit rendered for that user,
    its probe identity installed on the nodes."""
    site = SITE_ROOT / f"op-site-{os.getpid()}"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    c = Cluster(f"sft-op{os.getpid() % 100000}")
    c.down()
    try:
        c.up(nodes=4, slurm_user=OP_USER)
        yield from _site(c, site, op_user)
    finally:
        c.down()
        shutil.rmtree(site, ignore_errors=True)


def _site(c: Cluster, site: Path, pw: pwd.struct_passwd):
    uid, gid = pw.pw_uid, pw.pw_gid
    # The shared state dir, as docs/deploy.md sets it up: the service user's group, setgid.
    state = Path(c.shared_dir) / "slurmft-op-state"
    state.mkdir()
    os.chown(state, uid, gid)
    os.chmod(state, 0o2775)
    for d in (site / "log", site / "home"):
        d.mkdir()
        os.chown(d, uid, gid)
    render_kit(site, "--user", OP_USER, "--slurm-user", OP_USER, "--etc-dir", str(site),
               "--state-dir", str(state), "--log-dir", str(site / "log"),
               "--probe-key", str(site / "ssh" / "id_ed25519"),
               "--known-hosts", str(site / "ssh" / "known_hosts"), "--watch-interval", "0.5")
    # The kit's probe identity: key owned by the service user, the nodes' host keys; its
    # `restrict ...` line goes into the user's authorized keys on every node (the test
    # nodes' sshd reads one AuthorizedKeysFile for every user).
    cp = subprocess.run(c.exec_argv(["sh", str(site / "probe-ssh-setup.sh"), "node[1-4]"]),
                        env=c.env(), capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    line = cp.stdout.strip().splitlines()[-1]
    assert line.startswith("restrict ssh-ed25519 "), cp.stdout
    key = site / "ssh" / "id_ed25519"
    assert (key.stat().st_uid, oct(key.stat().st_mode & 0o777)) == (uid, "0o640")
    with open(c.layout.authorized_keys, "a") as keys:
        keys.write(line + "\n")
    yield c, site, state


def watcher_argv_env(c: Cluster, site: Path) -> tuple[list[str], dict[str, str]]:
    """slurmft-watch.service's ExecStart, as its User=, with its EnvironmentFile= and
    Environment= (the log file moved into the site dir)."""
    unit = (site / "slurmft-watch.service").read_text()
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line
                  and not line.startswith("#"))
    assert fields["User"] == OP_USER and fields["Group"] == OP_USER
    base = c.env()
    env = {"PATH": base["PATH"], "SLURM_CONF": base["SLURM_CONF"],
           "HOME": str(site / "home"), "LANG": "C.UTF-8",
           **env_assignments((site / "slurmft.env").read_text()), **unit_environment(unit)}
    env["SLURMFT_LOG_FILE"] = str(site / "log" / "watch.log")
    argv = ["setpriv", f"--reuid={OP_USER}", f"--regid={OP_USER}", "--init-groups",
            *shlex.split(fields["ExecStart"])]
    return argv, env


def test_nonroot_watcher_recovers_a_root_job(op_site, op_user):
    c, site, state = op_site
    jobs = LoopJob(c, "op")
    argv, env = watcher_argv_env(c, site)
    assert env["SLURMFT_RESCHEDULE_OPERATOR"] == "true"
    assert env["SLURMFT_PROBE_SSH_USER"] == OP_USER
    assert "SLURMFT_PROBE_SSH" not in env             # SSH probing on, as a site has it
    watch = None
    t_start = time.monotonic()
    try:
        jid = jobs.submit(4)
        assert show_job(jobs.run, jid)["UserId"].startswith("root(")
        watch = procs.spawn(c.exec_argv(argv), site / "log" / "watch.out", env=env)
        # nsenter, unshare, sh and setpriv exec in turn: the pid becomes the watcher's
        wait_for(lambda: uid_of(watch.pid) == op_user.pw_uid, 5, "the watcher as slurmft-op",
                 show=lambda: (uid_of(watch.pid), procs.cmdline(watch.pid)))
        # The probe logs in over SSH as the service user on every node before any fault.
        wait_for(lambda: all(f"Accepted publickey for {OP_USER}" in
                             c.log_path(f"sshd-{n}").read_text() for n in c.nodes), 20,
                 "SSH probes as slurmft-op on every node",
                 show=lambda: procs.tail(site / "log" / "watch.log", 5))
        t0 = time.monotonic()
        jobs.link_down("node3")
        nodes = wait_for(lambda: running_on(jobs.run, jid, 3), 40, "RUNNING on 3 nodes",
                         show=lambda: (show_job(jobs.run, jid),
                                       procs.tail(site / "log" / "watch.log", 8),
                                       procs.tail(site / "log" / "watch.out", 8)))
        took = time.monotonic() - t0
        assert "node3" not in nodes
        j = show_job(jobs.run, jid)
        assert j["Restarts"] == "1" and j["ExcNodeList"] == "node3"
        state_s, reason = node_line(jobs.run, "node3")
        assert state_s.startswith("drain") and "slurmft" in reason and str(jid) in reason
        assert procs.alive(watch) and uid_of(watch.pid) == op_user.pw_uid
    finally:
        if watch is not None:
            procs.signal_proc(watch, signal.SIGTERM)
            if procs.wait_gone([watch], 20):
                procs.signal_proc(watch, signal.SIGKILL)
        jobs.cleanup()

    # What it wrote into the shared state dir belongs to the service user's group and stays
    # writable by the group (the epilog, as SlurmUser, takes the same lock).
    audit = state / "audit.jsonl"
    assert audit.stat().st_uid == op_user.pw_uid and audit.stat().st_gid == op_user.pw_gid
    decided = [r for r in map(json.loads, audit.read_text().splitlines())
               if r.get("job_id") == jid and r.get("event") == "decision"]
    assert [d["outcome"] for d in decided] == ["requeue"]
    lock = state / "jobs" / f"{jid}.lock"
    st = lock.stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o664, op_user.pw_gid)
    assert not any(f"Accepted publickey for root" in c.log_path(f"sshd-{n}").read_text()
                   for n in c.nodes)
    log = (site / "log" / "watch.log").read_text() + (site / "log" / "watch.out").read_text()
    assert "Traceback" not in log
    print(f"non-root watcher ({OP_USER}, uid {op_user.pw_uid}): fault -> RUNNING on "
          f"{','.join(nodes)} in {took:.1f}s; node3 {state_s} ({reason}); "
          f"test {time.monotonic() - t_start:.1f}s")
