"""Per-step mode with one job per replica group: ``slurmft run --group-id``, ``render job
--group-jobs`` and ``slurmft lighthouse`` (fakes, no processes)."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import SlurmCommandError
from slurmft.probe.records import Health
from slurmft.recovery.policy import Outcome, is_relaunchable, replica_run
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.state import StateStore
from slurmft.recovery.watcher import Watcher
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.records import JobInfo
from tests.fakes.fake_slurm import FakeSlurm as FakeSlurmCli
from tests.unit.test_rescheduler import ScriptedProber
from slurmft.supervise.launch import GroupJob, LaunchSettings, check_lighthouse_url
from slurmft.supervise.supervisor import RunOptions, Supervisor
from tests.unit.test_supervisor import FakeProcesses, FakeSlurm

LIGHTHOUSE = "http://login1:29510"


def group_supervisor(tmp_path, *, launches, allocations=(), group_id=2, replicas=4):
    procs = FakeProcesses(launches=launches)
    slurm = FakeSlurm(allocations=list(allocations))
    opts = RunOptions(job_id=31, checkpoint_dir=tmp_path / "ck", here="node5",
                      cwd=str(tmp_path), slurmft_cmd=("slurmft",),
                      reschedule_log=tmp_path / "r.log", kill_grace=0.0,
                      group=GroupJob(group_id, replicas, LIGHTHOUSE))
    (tmp_path / "ck" / "replica-2" / "step_000000000040.abc").mkdir(parents=True)
    sup = Supervisor(LaunchSettings(train_cmd=("python", "train_torchft.py"), launcher="srun",
                                    launch_from="batch"),
                     opts, slurm, procs, emit=lambda e: None,
                     environ={"SLURM_JOB_NODELIST": "node5"},
                     sleep=lambda s: None, clock=iter(range(10**6)).__next__)
    return sup, procs


def test_a_group_job_gives_its_ranks_torchft_s_variables_and_never_resume(tmp_path):
    """The group resumes by itself (its replica-<id> checkpoint, or live from a peer that is
    ahead): no --resume on the first launch nor on a relaunch after a crash."""
    sup, procs = group_supervisor(tmp_path, launches=[[None, 1], [0]],
                                  allocations=[["node5"]])
    assert sup.run() == 0
    assert len(procs.started) == 2
    for argv, env, _ in procs.started:
        assert argv[0] == "srun" and "--resume" not in argv
        assert argv[-2:] == ["python", "train_torchft.py"]
        assert (env["TORCHFT_LIGHTHOUSE"], env["REPLICA_GROUP_ID"],
                env["NUM_REPLICA_GROUPS"]) == (LIGHTHOUSE, "2", "4")
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node5", "29602")
    assert procs.called[0][:4] == ["slurmft", "reschedule", "31", "--in-place"]


@pytest.mark.parametrize("kwargs, message", [
    ({"group_id": 4, "replicas": 4, "lighthouse": LIGHTHOUSE}, "not one of the 4 groups"),
    ({"group_id": 0, "replicas": 0, "lighthouse": LIGHTHOUSE}, "replicas must be"),
    ({"group_id": 0, "replicas": 2, "lighthouse": "login1:29510"}, "http://HOST:PORT"),
    ({"group_id": 0, "replicas": 2, "lighthouse": "http://a;b:1"}, "http://HOST:PORT"),
    ({"group_id": 0, "replicas": 2, "lighthouse": "http://a:70000"}, "http://HOST:PORT"),
    ({"group_id": 0, "replicas": 2, "lighthouse": LIGHTHOUSE, "store_port": 65535},
     "not in 1024-65535"),
])
def test_group_job_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupJob(**kwargs)


def test_lighthouse_url_is_normalised():
    assert check_lighthouse_url(" http://10.0.0.2:29510/ ") == "http://10.0.0.2:29510"


def _run(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def test_run_dry_run_shows_the_group_and_launches_with_srun(tmp_path):
    env = {"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "node5", "SLURMD_NODENAME": "node5"}
    r = _run(["run", "--checkpoint-dir", str(tmp_path), "--replicas", "4", "--group-id", "1",
              "--lighthouse", LIGHTHOUSE, "--dry-run", "--json", "--", "python", "t.py"], env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["launcher"] == "srun" and doc["argv"][0] == "srun"
    assert (doc["group"], doc["replicas"], doc["lighthouse"]) == (1, 4, LIGHTHOUSE)
    assert doc["torchft_env"]["MASTER_PORT"] == "29601" and doc["resume"] is False
    assert doc["heartbeat"] == {}          # heartbeats are numbered over all groups: off


@pytest.mark.parametrize("extra, message", [
    (["--group-id", "1"], "needs all of --replicas R, --group-id I"),
    (["--replicas", "2", "--lighthouse", LIGHTHOUSE], "needs all of"),
    (["--replicas", "2", "--group-id", "1", "--lighthouse", "x"], "not a lighthouse address"),
    (["--replicas", "2", "--group-id", "1", "--lighthouse", LIGHTHOUSE, "--launcher", "mpirun"],
     "launches with srun"),
])
def test_run_group_options_errors_are_one_line(tmp_path, extra, message):
    env = {"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "node5"}
    r = _run(["run", "--checkpoint-dir", str(tmp_path), *extra, "--dry-run", "--", "t"], env)
    assert r.exit_code != 0 and message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_render_job_group_jobs_is_one_job_per_group_with_the_id_as_argument(tmp_path):
    r = _run(["render", "job", "--nodes", "4", "--replicas", "2", "--group-jobs", "--spares", "1",
              "--lighthouse", LIGHTHOUSE, "--train-cmd", "python train_torchft.py",
              "--checkpoint-dir", "/shared/ck"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "#SBATCH --nodes=3" in lines and not any("--array" in ln for ln in lines)
    assert "for i in $(seq 0 1); do sbatch" in r.output
    words = shlex.split(r.output.split("exec ", 1)[1].replace("\\\n", " "))
    run = words[words.index("run"):]
    assert run[run.index("--launcher") + 1] == "srun"
    assert run[run.index("--group-id") + 1] == "$1"
    assert run[run.index("--lighthouse") + 1] == LIGHTHOUSE
    assert run[run.index("--replicas") + 1] == "2" and "--train-nodes" not in run
    assert '--group-id "$1"' in r.output       # the script's argument, expanded by bash
    # the comment names the run (its lighthouse): the watcher finds a lost group's peers by it
    assert f"#SBATCH --comment=slurmft:relaunch,slurmft:group={LIGHTHOUSE}" in lines


def test_replica_run_reads_the_group_mark_only():
    def job(comment):
        return JobInfo(job_id=1, name="j", state="RUNNING", comment=comment)
    assert replica_run(job(f"slurmft:relaunch,slurmft:group={LIGHTHOUSE}")) == LIGHTHOUSE
    assert replica_run(job("slurmft:relaunch")) == ""
    assert replica_run(job("slurmft:group=")) == ""
    assert replica_run(job("")) == ""
    assert is_relaunchable(job(f"slurmft:relaunch,slurmft:group={LIGHTHOUSE}"))


def watched_groups(tmp_path, prober_health):
    """Three group jobs of one run (node1-3), one of another run (node4), a plain job (node5),
    each with a training step; a watcher over all of them."""
    fake = FakeSlurmCli()
    fake.jobs.clear()
    mark = f"slurmft:relaunch,slurmft:group={LIGHTHOUSE}"
    ids = {name: fake.add_job("RUNNING", [node], comment=comment, no_kill=True)
           for name, node, comment in [
               ("a0", "node1", mark), ("a1", "node2", mark), ("a2", "node3", mark),
               ("b0", "node4", "slurmft:relaunch,slurmft:group=http://other:29510"),
               ("plain", "node5", "slurmft:relaunch")]}
    for jid in ids.values():
        fake.start_step(jid)
    prober = ScriptedProber(prober_health)
    client = CommandSlurmClient(runner=fake)
    r = Rescheduler(client, prober, StateStore(tmp_path), RescheduleConfig(state_dir=str(tmp_path)),
                    uid=0)
    return fake, ids, Watcher(client, prober, r, interval=0.01)


def test_watch_tells_a_lost_group_s_peers_and_no_one_else(tmp_path):
    fake, ids, w = watched_groups(tmp_path, {"node2": Health.UNREACHABLE})
    res = w.cycle()
    assert res.failed == {ids["a1"]: ["node2"]}
    assert res.peers_told == {ids["a1"]: [ids["a0"], ids["a2"]]}
    # the peers get URG; the lost group's own step SIGKILL (its job's kill before the requeue)
    assert sorted(fake.step_signals) == [(ids["a0"], 0, "URG"), (ids["a1"], 0, "KILL"),
                                         (ids["a2"], 0, "URG")]
    # the lost group itself is rescheduled as before (requeued without node2)
    assert [rep.decision.outcome for rep in res.reports] == [Outcome.REQUEUE]
    assert "node2" in fake.job(ids["a1"])["excluded_nodes"]
    assert res.to_dict()["peers_told"] == {ids["a1"]: [ids["a0"], ids["a2"]]}


def test_watch_tells_no_peer_of_a_job_outside_group_mode(tmp_path):
    fake, ids, w = watched_groups(tmp_path, {"node5": Health.UNREACHABLE})
    res = w.cycle()
    assert res.failed == {ids["plain"]: ["node5"]}
    # no URG to anyone (the step SIGKILL is the lost job's own kill before its requeue)
    assert res.peers_told == {} and fake.step_signals == [(ids["plain"], 0, "KILL")]


def test_a_peer_that_cannot_be_signalled_does_not_stop_the_others(tmp_path):
    """One peer's scancel fails, another has no step (between two launches): the third is
    told, and the lost group is rescheduled all the same."""
    fake, ids, w = watched_groups(tmp_path, {"node1": Health.UNREACHABLE})
    b = fake.add_job("RUNNING", ["node6"], comment=fake.job(ids["a0"])["comment"])   # no step
    client = w.rescheduler.client
    real = client.signal_steps

    def signal_steps(job_id, steps, signal="KILL"):
        if job_id == ids["a1"]:
            raise SlurmCommandError("scancel: error: Kill job error: Job/step already completed")
        return real(job_id, steps, signal)

    client.signal_steps = signal_steps
    res = w.cycle()
    assert res.peers_told == {ids["a0"]: [ids["a2"]]} and b not in res.peers_told[ids["a0"]]
    assert [s for s in fake.step_signals if s[2] == "URG"] == [(ids["a2"], 0, "URG")]
    assert [rep.decision.outcome for rep in res.reports] == [Outcome.REQUEUE]


class ClearingProber(ScriptedProber):
    """Fails its hosts on the first probe only: each re-probe finds them healthy again."""

    def probe(self, hosts):
        answer = super().probe(hosts)
        self.failed.clear()
        return answer


def test_a_cut_off_host_is_told_to_the_peers_at_its_first_failed_probe(tmp_path):
    """The peers hear of a host that stopped answering ping before the re-probe confirms it
    (the first probe calls the lost group's peers, then the re-probe, then the requeue), and
    are told once, not again at the confirmation."""
    fake, ids, w = watched_groups(tmp_path, {"node2": Health.UNREACHABLE})
    order = []
    probe, signal = w.prober.probe, w.rescheduler.client.signal_steps
    w.prober.probe = lambda hosts: (order.append(("probe", sorted(hosts))), probe(hosts))[1]
    w.rescheduler.client.signal_steps = lambda job_id, steps, sig="KILL": (
        order.append(("signal", job_id)), signal(job_id, steps, sig))[1]
    res = w.cycle()
    assert order[:4] == [("probe", ["node1", "node2", "node3", "node4", "node5"]),
                         ("signal", ids["a0"]), ("signal", ids["a2"]), ("probe", ["node2"])]
    assert sorted(s for s in fake.step_signals if s[2] == "URG") == [(ids["a0"], 0, "URG"),
                                                                       (ids["a2"], 0, "URG")]
    assert res.peers_told == {ids["a1"]: [ids["a0"], ids["a2"]]}
    assert [rep.decision.outcome for rep in res.reports] == [Outcome.REQUEUE]


def test_a_suspect_that_clears_cost_its_peers_one_signal_and_nothing_else(tmp_path):
    fake, ids, w = watched_groups(tmp_path, {})
    w.prober = ClearingProber({"node2": Health.UNREACHABLE})
    res = w.cycle()
    assert res.peers_told == {ids["a1"]: [ids["a0"], ids["a2"]]}
    assert res.failed == {} and res.reports == []
    assert "node2" not in (fake.job(ids["a1"])["excluded_nodes"] or "")
    assert fake.job(ids["a1"])["job_state"] == "RUNNING"
    assert not [c for c in fake.calls if c[0] == "scontrol" and "update" in c]


def test_a_host_that_answers_ping_is_told_only_once_confirmed(tmp_path):
    """Ping answers, SSH does not: its training's sockets still reset, no early word; a
    suspect of that kind that clears tells no one."""
    fake, ids, w = watched_groups(tmp_path, {})
    w.prober = ClearingProber({"node2": Health.UNRESPONSIVE})
    res = w.cycle()
    assert res.peers_told == {} and fake.step_signals == []
    fake, ids, w = watched_groups(tmp_path / "confirmed", {"node2": Health.UNRESPONSIVE})
    res = w.cycle()
    assert res.peers_told == {ids["a1"]: [ids["a0"], ids["a2"]]}


def test_no_early_word_when_most_hosts_look_cut_off_at_once(tmp_path):
    """The prober's own link more likely: no peer is told on a first probe of that kind."""
    fake, ids, w = watched_groups(tmp_path, {})
    w.prober = ClearingProber({n: Health.UNREACHABLE for n in ["node1", "node2", "node3",
                                                               "node4"]})
    res = w.cycle()
    assert res.peers_told == {} and fake.step_signals == []


@pytest.mark.parametrize("extra, message", [
    (["--group-jobs", "--lighthouse", LIGHTHOUSE], "--group-jobs needs --replicas"),
    (["--replicas", "2", "--group-jobs"], "--group-jobs needs --replicas R and --lighthouse"),
    (["--replicas", "2", "--lighthouse", LIGHTHOUSE], "--lighthouse goes with --group-jobs"),
    (["--replicas", "2", "--group-jobs", "--lighthouse", "http://x y:1"], "lighthouse address"),
])
def test_render_job_group_jobs_errors(extra, message):
    r = _run(["render", "job", "--nodes", "4", *extra, "--train-cmd", "t",
              "--checkpoint-dir", "/c"])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_lighthouse_dry_run_prints_torchft_s_command():
    r = _run(["lighthouse", "--port", "29700", "--min-replicas", "2", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    argv = json.loads(r.output)["argv"]
    assert argv[0] == "torchft_lighthouse"
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:29700"
    assert argv[argv.index("--min_replicas") + 1] == "2"


def test_lighthouse_without_torchft_says_what_to_install(monkeypatch, tmp_path):
    import slurmft.cli.lighthouse as mod

    monkeypatch.setattr(mod.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    r = _run(["lighthouse"])
    assert r.exit_code != 0 and "pip install 'slurmft[torchft]'" in r.output


def test_the_demo_renders_group_jobs_and_restart_mode_from_one_builder(tmp_path):
    """``Demo.job_script`` serves the benchmark's group jobs too: one node per group (the
    idle nodes are the spares), train_torchft.py, the run's mark in the comment."""
    from types import SimpleNamespace

    from slurmft.testbed.demo import Demo, DemoOptions

    demo = Demo(DemoOptions(name="t", nodes=4, steps=10, spares=1))
    demo.cluster = SimpleNamespace(shared_dir=tmp_path, subnet="10.0.0.0/24",
                                   ssh_config_path=tmp_path / "ssh_config")
    ck, progress = tmp_path / "ck", tmp_path / "p.jsonl"
    groups = demo.job_script(tmp_path, ck, progress, lighthouse=LIGHTHOUSE).splitlines()
    assert "#SBATCH --nodes=1" in groups
    assert f"#SBATCH --comment=slurmft:relaunch,slurmft:group={LIGHTHOUSE}" in groups
    assert any("examples/train_torchft.py" in ln for ln in groups)
    restart = demo.job_script(tmp_path, ck, progress).splitlines()
    assert "#SBATCH --nodes=5" in restart and "#SBATCH --comment=slurmft:relaunch" in restart
    assert any("examples/train.py" in ln for ln in restart)
    assert demo.train_command(ck, progress, torchft=True)[1].endswith("train_torchft.py")
