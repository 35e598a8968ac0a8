"""slurmft inject: argv golden lists, refusals, seeded choices, audit, the remote scripts run
for real against this machine's own processes (a sleep the test starts) and a fake cgroup tree,
and mask-gpu's env file sourced by a rendered job wrapper."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import SlurmFTError, UsageError
from slurmft.recovery.rescheduler import job_context
from slurmft.recovery.state import StateStore
from slurmft.render import render
from slurmft.slurm.client import CommandSlurmClient
from slurmft.testbed import inject as inj
from slurmft.testbed import remote
from slurmft.testbed.inject import (
    ExecNodeRunner, ExecResult, InjectRequest, Injector, kill_argv, kill_slurmd_argv,
    limit_memory_argv, link_down_argv, list_procs_argv, undo_memory_argv,
)

from tests.fakes.fake_slurm import FakeSlurm

NODES = ("node1", "node2", "node3", "node4")


class ScriptedRunner:
    """Answers listing commands with ``procs``; records every (node, argv)."""

    def __init__(self, procs: str = "101 - python train.py\n102 - python train.py\n"
                                     "103 - python train.py\n", rc: int = 0) -> None:
        self.procs, self.rc = procs, rc
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, node, argv, timeout):
        self.calls.append((node, list(argv)))
        if argv[:2] == ["sh", "-c"] and argv[2] == remote.LIST_SH:
            return ExecResult(0, self.procs)
        return ExecResult(self.rc, "", "boom" if self.rc else "")


def make(tmp_path, runner=None, fault=None, nodes=NODES, state="RUNNING"):
    fake = FakeSlurm()
    job = fake.add_job(state, nodes)
    store = StateStore(tmp_path / "state")
    return Injector(slurm=CommandSlurmClient(runner=fake), runner=runner, fault=fault,
                    store=store, cluster_name="sft-x" if fault else ""), job, store


# --- argv (golden) --------------------------------------------------------------------------

def test_argv_golden_lists():
    assert kill_argv(4242) == ["kill", "-s", "KILL", "--", "4242"]
    assert kill_slurmd_argv() == ["sh", "-c", 'exec pkill --ns $$ --nslist net "$@"', "sh",
                                  "-KILL", "-x", "slurmd"]
    assert link_down_argv("eth0", 30) == [
        "setsid", "-f", "sh", "-c",
        'exec </dev/null >/dev/null 2>&1; ip link set dev "$1" down; sleep "$2"; '
        'ip link set dev "$1" up', "sh", "eth0", "30"]
    assert list_procs_argv("a b;rm -rf /") == ["sh", "-c", remote.LIST_SH, "sh", "-f", "--",
                                               "a b;rm -rf /"]
    assert limit_memory_argv(42, 512, "train.py")[3:] == ["sh", "42", str(512 * 2**20), "",
                                                          "-f", "--", "train.py"]
    assert undo_memory_argv(42)[3:] == ["sh", "42", ""]


@pytest.mark.parametrize("iface", ["", "eth0;reboot", "$(id)", "a b", "x" * 16, "-o"])
def test_bad_interfaces_are_refused(iface):
    if iface == "-o":       # matches the character class: harmless as "$1" of ip ... dev
        assert link_down_argv(iface, 5)[-2] == "-o"
        return
    with pytest.raises(UsageError, match="--iface"):
        link_down_argv(iface, 5)


def test_bad_pattern_and_duration_are_refused():
    with pytest.raises(UsageError, match="--match"):
        list_procs_argv("")
    with pytest.raises(UsageError, match="--match"):
        list_procs_argv("a\nb")
    with pytest.raises(UsageError, match="--duration"):
        link_down_argv("eth0", 0)


# --- the injector ----------------------------------------------------------------------------

def test_kill_rank_is_seeded_and_audited(tmp_path):
    picks = []
    for _ in range(2):
        runner = ScriptedRunner()
        injector, job, store = make(tmp_path, runner)
        res = injector.inject(InjectRequest("kill-rank", job, seed=7))
        picks.append((res.node, res.pid))
        assert runner.calls[0] == (res.node, list_procs_argv("train.py"))
        assert runner.calls[1] == (res.node, kill_argv(res.pid))
        assert res.node in NODES and res.pid in (101, 102, 103)
        assert f"killed pid {res.pid} on {res.node}" in res.detail
    assert picks[0] == picks[1]
    lines = [a for a in StateStore(tmp_path / "state").audit_lines() if a["event"] == "inject"]
    assert len(lines) == 2
    assert {k: lines[0][k] for k in ("job", "node", "action", "pid")} == {
        "job": job, "node": picks[0][0], "action": "kill-rank", "pid": picks[0][1]}
    assert "time" in lines[0] and lines[0]["detail"].startswith("killed pid")


def test_kill_rank_on_given_node_and_nothing_to_kill(tmp_path):
    injector, job, _ = make(tmp_path, ScriptedRunner(procs=""))
    with pytest.raises(SlurmFTError, match="no process matching 'train.py' on node3"):
        injector.inject(InjectRequest("kill-rank", job, node="node3"))
    with pytest.raises(UsageError, match="node9 is not a node of job"):
        injector.inject(InjectRequest("kill-rank", job, node="node9"))
    with pytest.raises(UsageError):
        injector.inject(InjectRequest("kill-rank", job, node="bad;name"))


def test_kill_rank_never_picks_another_jobs_process(tmp_path):
    fake = FakeSlurm()
    job = fake.add_job("RUNNING", ("node1",))
    other = job + 1000
    listing = (f"7 {other} python train.py --other\n8 - python train.py --ssh-rank\n"
               f"9 {job} python train.py --mine\n")
    for seed in range(8):       # the job's own process wins over unknown ones
        res = Injector(slurm=CommandSlurmClient(runner=fake), runner=ScriptedRunner(listing)
                       ).inject(InjectRequest("kill-rank", job, seed=seed))
        assert res.pid == 9 and res.extra["command"] == "python train.py --mine"
    assert inj.job_candidates(inj.parse_procs(listing.replace(f"9 {job}", "9 -")), job) == [
        remote.RemoteProcess(8, "-", "python train.py --ssh-rank"), remote.RemoteProcess(9, "-", "python train.py --mine")]
    only_other = ScriptedRunner(f"7 {other} python train.py\n")
    with pytest.raises(SlurmFTError, match=f"only of job\\(s\\) {other}: nothing killed"):
        Injector(slurm=CommandSlurmClient(runner=fake), runner=only_other).inject(
            InjectRequest("kill-rank", job))
    assert len(only_other.calls) == 1            # listed, killed nothing


def test_pending_job_has_no_nodes(tmp_path):
    injector, job, _ = make(tmp_path, ScriptedRunner(), state="PENDING")
    with pytest.raises(UsageError, match="holds no nodes"):
        injector.inject(InjectRequest("kill-rank", job))


def test_dry_run_runs_nothing_and_writes_no_audit(tmp_path):
    runner = ScriptedRunner()
    injector, job, store = make(tmp_path, runner)
    res = injector.inject(InjectRequest("kill-rank", job, dry_run=True, seed=1))
    assert res.dry_run and runner.calls == []
    assert res.commands[0] == list_procs_argv("train.py")
    res = injector.inject(InjectRequest("link-down", job, iface="ib0", duration=9, dry_run=True))
    assert res.commands == [link_down_argv("ib0", 9)] and runner.calls == []
    assert store.audit_lines() == []


def test_ssh_mode_refuses_what_it_could_not_undo(tmp_path):
    runner = ScriptedRunner()
    injector, job, _ = make(tmp_path, runner)
    for action in ("link-up", "stop-sshd", "start-sshd", "freeze-sshd", "thaw-sshd"):
        with pytest.raises(UsageError, match=f"{action} is refused without --cluster"):
            injector.inject(InjectRequest(action, job))
    with pytest.raises(UsageError, match="needs --iface"):
        injector.inject(InjectRequest("link-down", job))
    assert runner.calls == []
    res = injector.inject(InjectRequest("link-down", job, node="node2", iface="eth0",
                                        duration=5))
    assert runner.calls == [("node2", link_down_argv("eth0", 5))]
    assert "down for 5s" in res.detail
    res = injector.inject(InjectRequest("kill-slurmd", job, node="node1"))
    assert runner.calls[-1] == ("node1", kill_slurmd_argv())


def test_ssh_failure_is_one_clear_error(tmp_path):
    class Down:
        def run(self, node, argv, timeout):
            return ExecResult(None, error="ssh: connect timed out after 2s")
    injector, job, _ = make(tmp_path, Down())
    with pytest.raises(SlurmFTError, match="on node1 failed: ssh: connect timed out"):
        injector.inject(InjectRequest("kill-slurmd", job, node="node1"))
    injector, job, _ = make(tmp_path, ScriptedRunner(rc=1))
    with pytest.raises(SlurmFTError, match=r"kill-slurmd on node1 failed \(rc 1\)"):
        injector.inject(InjectRequest("kill-slurmd", job, node="node1"))


def test_cluster_mode_uses_cluster_fault(tmp_path):
    done = []
    injector, job, store = make(tmp_path, ScriptedRunner(),
                                fault=lambda n, a: done.append((n, a)) or f"{a} on {n}")
    for action in inj.CLUSTER_ACTIONS:
        res = injector.inject(InjectRequest(action, job, node="node4"))
        assert res.detail == f"{action} on node4"
    assert done == [("node4", a) for a in inj.CLUSTER_ACTIONS]
    assert [a["action"] for a in store.audit_lines()] == list(inj.CLUSTER_ACTIONS)
    assert all(a["cluster"] == "sft-x" for a in store.audit_lines())


# --- the remote scripts, run for real on this machine ----------------------------------------

@pytest.fixture
def sleeper():
    """A sleep with a unique command line; killed at the end if still there."""
    secs = f"300.{uuid.uuid4().int % 10**9}"
    p = subprocess.Popen(["sleep", secs])
    yield p, f"sleep {secs}"
    if p.poll() is None:
        p.kill()
    p.wait()


def test_kill_rank_end_to_end_locally(tmp_path, sleeper):
    proc, pattern = sleeper
    local = ExecNodeRunner(lambda node, argv: list(argv))     # "the node" is this machine
    injector, job, _ = make(tmp_path, local, nodes=("node1",))
    res = injector.inject(InjectRequest("kill-rank", job, match=pattern, seed=3))
    assert res.pid == proc.pid and res.extra["candidates"] == [proc.pid]
    assert res.extra["command"] == pattern
    assert proc.wait(timeout=10) == -9
    with pytest.raises(SlurmFTError, match="no process matching"):
        injector.inject(InjectRequest("kill-rank", job, match=pattern))


def _fake_cgroup(root: Path, controllers: str, subtree: str) -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text(subtree + "\n")
    (root / "cgroup.procs").write_text("")
    return root


def _own_cgroup_is_root() -> bool:
    return Path("/proc/self/cgroup").read_text().splitlines()[-1] == "0::/"


def test_limit_memory_script_on_a_fake_cgroup_tree(tmp_path, sleeper):
    if not _own_cgroup_is_root():
        pytest.skip("the fake tree mirrors a process in the root cgroup v2 only")
    proc, pattern = sleeper
    cg = _fake_cgroup(tmp_path / "cg", "cpu memory pids", "cpu memory")
    cp = subprocess.run(limit_memory_argv(42, 64, pattern, str(cg)), capture_output=True,
                        text=True, timeout=10)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.split() == ["OK", str(cg / "slurmft-inject-42-1"), str(proc.pid)]
    assert (cg / "slurmft-inject-42-1" / "memory.max").read_text() == f"{64 * 2**20}\n"
    assert (cg / "slurmft-inject-42-1" / "cgroup.procs").read_text() == f"{proc.pid}\n"
    again = subprocess.run(limit_memory_argv(42, 32, pattern, str(cg)), capture_output=True,
                           text=True, timeout=10)
    assert again.stdout.split()[1] == str(cg / "slurmft-inject-42-2")
    # undo: processes back to the parent, the cgroups gone (a fake tree keeps files: rm -rf)
    undo = subprocess.run(undo_memory_argv(42, str(cg)), capture_output=True, text=True,
                          timeout=10)
    assert undo.returncode == 0 and undo.stdout.startswith("OK ")
    assert not list(cg.glob("slurmft-inject-42-*"))
    assert str(proc.pid) in (cg / "cgroup.procs").read_text().split()


@pytest.mark.parametrize("controllers,subtree,why", [
    ("cpu pids", "cpu", "memory controller is not available in cgroup v2: {cg}/cgroup."
                        "controllers lists 'cpu pids'"),
    ("cpu memory", "cpu", "memory is not enabled in {cg}/cgroup.subtree_control"),
])
def test_limit_memory_says_exactly_why_not(tmp_path, sleeper, controllers, subtree, why):
    _, pattern = sleeper
    cg = _fake_cgroup(tmp_path / "cg", controllers, subtree)
    cp = subprocess.run(limit_memory_argv(42, 64, pattern, str(cg)), capture_output=True,
                        text=True, timeout=10)
    assert cp.returncode == 3
    assert why.format(cg=cg) in cp.stdout
    assert not list(cg.glob("slurmft-inject-*"))


def test_limit_memory_error_reaches_the_user_in_one_line(tmp_path):
    class Refusing:
        def run(self, node, argv, timeout):
            return ExecResult(3, "ERR memory is not enabled in /sys/fs/cgroup/cgroup."
                                 "subtree_control")
    injector, job, _ = make(tmp_path, Refusing())
    with pytest.raises(SlurmFTError) as exc:
        injector.inject(InjectRequest("limit-memory", job, node="node1", mb=100))
    assert str(exc.value) == ("limit-memory on node1 impossible: memory is not enabled in "
                              "/sys/fs/cgroup/cgroup.subtree_control")
    with pytest.raises(UsageError, match="needs --mb"):
        injector.inject(InjectRequest("limit-memory", job, node="node1"))


def _cgroup2_mount() -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - cgroup2 " in line:
            return line.split()[4]
    return ""


def test_limit_memory_on_this_machine_says_why_not(sleeper):
    """Runs only where this machine cannot do it (then nothing can change): one ERR line."""
    mount = _cgroup2_mount()
    if mount and "memory" in Path(mount, "cgroup.controllers").read_text().split():
        pytest.skip(f"cgroup v2 at {mount} has the memory controller: see the integration test")
    _, pattern = sleeper
    cp = subprocess.run(limit_memory_argv(1, 64, pattern), capture_output=True, text=True,
                        timeout=10)
    assert cp.returncode == 3
    assert len(cp.stdout.strip().splitlines()) == 1
    if mount:
        assert cp.stdout.startswith(f"ERR the memory controller is not available in cgroup v2: "
                                    f"{mount}/cgroup.controllers lists")
    else:
        assert cp.stdout.startswith("ERR cgroup v2 is not mounted")


# --- mask-gpu --------------------------------------------------------------------------------

def test_mask_gpu_writes_the_env_file(tmp_path):
    injector = Injector(slurm=None, runner=None, store=StateStore(tmp_path / "state"))
    ck = tmp_path / "ck"
    ck.mkdir()
    res = injector.inject(InjectRequest("mask-gpu", 42, gpu=1, gpus=4, checkpoint_dir=str(ck)))
    env_file = ck / ".slurmft-restart.env"
    lines = env_file.read_text().splitlines()
    assert lines[0].startswith("# written by slurmft inject mask-gpu (job 42, GPU 1 masked)")
    assert lines[1:] == ["CUDA_VISIBLE_DEVICES=0,2,3",
                         "OMPI_MCA_mca_base_env_list=CUDA_VISIBLE_DEVICES"]
    assert res.extra["visible"] == [0, 2, 3]
    # the next mask starts from the file
    injector.inject(InjectRequest("mask-gpu", 42, gpu=3, checkpoint_dir=str(ck)))
    assert "CUDA_VISIBLE_DEVICES=0,2" in env_file.read_text().splitlines()
    with pytest.raises(UsageError, match="GPU 3 is not visible to the job"):
        injector.inject(InjectRequest("mask-gpu", 42, gpu=3, checkpoint_dir=str(ck)))
    assert [a["action"] for a in injector.store.audit_lines()] == ["mask-gpu", "mask-gpu"]
    injector.inject(InjectRequest("mask-gpu", 42, undo=True, checkpoint_dir=str(ck)))
    assert not env_file.exists()


def test_mask_gpu_refusals(tmp_path):
    injector = Injector(slurm=None, runner=None)
    with pytest.raises(UsageError, match="give --gpus N"):
        injector.inject(InjectRequest("mask-gpu", 1, gpu=0, checkpoint_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="leave the job no GPU"):
        injector.inject(InjectRequest("mask-gpu", 1, gpu=0, gpus=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--checkpoint-dir"):
        injector.inject(InjectRequest("mask-gpu", 1, gpu=0, gpus=2))
    res = injector.inject(InjectRequest("mask-gpu", 1, gpu=0, gpus=2, dry_run=True,
                                        checkpoint_dir=str(tmp_path)))
    assert res.dry_run and not (tmp_path / ".slurmft-restart.env").exists()


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_rendered_wrapper_sources_the_mask(tmp_path, launcher):
    """Run the rendered job.sh with a stand-in launcher that records what it sees."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen = tmp_path / "seen"
    for name, body in {launcher: 'echo "$CUDA_VISIBLE_DEVICES|${OMPI_MCA_mca_base_env_list:-}"'
                                 ' >>"$SEEN"',
                       "scontrol": 'printf "node1\\n"'}.items():
        (bindir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bindir / name).chmod(0o755)
    ck = tmp_path / "ck"
    ctx = job_context(RescheduleConfig(launcher=launcher), train_cmd="train", nodes=1,
                      checkpoint_dir=str(ck), slurmft_cmd=[sys.executable, "-m", "slurmft"],
                      reschedule_log=str(tmp_path / "r.log"), hang_timeout="off")
    text = render("job.sh.j2", ctx)       # slurmft run reads the file before each launch
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SEEN": str(seen), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1", "TMPDIR": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    run = lambda: subprocess.run(["bash", str(script)], env=env, capture_output=True,  # noqa
                                 text=True, timeout=30, check=True)
    run()
    Injector(slurm=None, runner=None).inject(
        InjectRequest("mask-gpu", 7, gpu=2, gpus=4, checkpoint_dir=str(ck)))
    run()
    assert seen.read_text().splitlines() == ["0,1,2,3|",
                                             "0,1,3|CUDA_VISIBLE_DEVICES"]


# --- the command -----------------------------------------------------------------------------

def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner()
    for args, text in [
        (["inject", "link-down", "--job", "5"], "needs --iface"),
        (["inject", "stop-sshd", "--job", "5"], "refused without --cluster"),
        (["inject", "link-down", "--job", "5", "--iface", "eth0;x"], "--iface must be"),
    ]:
        res = r.invoke(cli, [*args, "--state-dir", str(tmp_path)])
        assert res.exit_code == 2, res.output
        assert res.output.strip().count("\n") == 0 and text in res.output
        assert "Traceback" not in res.output


def test_cli_mask_gpu_json(tmp_path):
    res = CliRunner().invoke(cli, ["inject", "mask-gpu", "--job", "9", "--gpu", "0", "--gpus",
                                   "2", "--checkpoint-dir", str(tmp_path), "--state-dir",
                                   str(tmp_path / "st"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["action"] == "mask-gpu" and doc["extra"]["visible"] == [1]
    audit = StateStore(tmp_path / "st").audit_lines()
    assert audit[0]["event"] == "inject" and audit[0]["job"] == 9
