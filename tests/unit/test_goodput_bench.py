"""bench/goodput.py's pure parts: fault/resume matching, the report, the baseline scripts."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gp():
    spec = importlib.util.spec_from_file_location("goodput_bench", ROOT / "bench" / "goodput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["goodput_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def records():
    """4 steps of 1 s, a fault at t=4.5, a resume from step 1 at t=10, steps 2-5 again."""
    recs = [{"t": 0.0, "event": "start", "world_size": 4}]
    recs += [{"t": 1.0 + i, "event": "step", "step": i, "step_s": 1.0, "world_size": 4}
             for i in range(4)]
    recs += [{"t": 10.0, "event": "start", "world_size": 3},
             {"t": 10.1, "event": "resume", "from_step": 1, "world_size": 3}]
    recs += [{"t": 11.0 + i, "event": "step", "step": 2 + i, "step_s": 1.0, "world_size": 3}
             for i in range(4)]
    recs.append({"t": 15.0, "event": "done", "step": 5})
    return recs


def test_a_fault_is_matched_with_the_resume_after_it(gp):
    fault = gp.Fault(t=4.5, kind="link-down", node="node4", latest="step_1", latest_step=1)
    out = gp.analyse(records(), [fault], steps=6, end_t=15.0)
    assert out["completed"] and out["resumes"] == 1
    assert fault.resumed_from == 1 and fault.steps_lost == 2       # steps 2 and 3 redone
    assert fault.recovery_s == pytest.approx(6.5)                   # fault -> first step after
    assert fault.downtime_s == pytest.approx(7.0)                   # last step -> first after
    assert not fault.stale_resume and out["stale_resumes"] == 0
    assert out["fault_free_step_s"] == pytest.approx(1.0)           # its own steps before the fault
    assert out["goodput"] == pytest.approx(6 / 15, abs=1e-3)       # 6 useful steps in 15 s
    assert out["world_size_seconds"] == {4: 4.0, 0: 6.0, 3: 5.0}


def test_a_resume_older_than_the_newest_checkpoint_is_flagged(gp):
    fault = gp.Fault(t=4.5, kind="link-down", node="node4", latest="step_3", latest_step=3)
    out = gp.analyse(records(), [fault], steps=6, end_t=15.0)
    assert fault.stale_resume and out["stale_resumes"] == 1


def test_seeds_are_parsed_and_the_report_has_a_mean(gp, capsys):
    a = gp.parse_args(["--seeds", "1,2", "--variants", "slurmft"])
    assert a.seeds == [1, 2]
    runs = [gp.VariantResult("slurmft", "c", seed=s, goodput=g, completed=True)
            for s, g in ((1, 0.88), (2, 0.94))]
    runs += [gp.VariantResult("classic", "c", seed=s, goodput=g, completed=s == 1)
             for s, g in ((1, 0.60), (2, 0.50))]
    gp.print_report(runs, 120)
    out = capsys.readouterr().out
    assert "mean goodput 91.0% over 2 run(s)" in out
    assert ("slurmft: mean goodput 91.0% with a fault every 120 s; best baseline 55.0% "
            "(+36.0 points); all runs completed, no stale resume") in out
    runs[0].completed = False
    gp.print_report(runs, 120)
    assert "NOT all runs completed cleanly" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gp.parse_args(["--seeds", "1,x"])


@pytest.mark.parametrize("which", ["slurm_script", "classic_script"])
def test_baseline_scripts_pass_shellcheck(gp, which, tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    text = getattr(gp, which)(nodes=4, work=Path("/w"), ckpt_dir=Path("/c k"),
                              mpirun_opts="--mca btl self,tcp", train=["python", "t.py"])
    script = tmp_path / "s.sh"
    script.write_text(text)
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "CKPT='/c k'" in text


def test_every_variant_is_scored_at_the_step_time_of_its_seeds_nofault_run(gp):
    nofault = [{"t": 0.0, "event": "start", "world_size": 4}]
    nofault += [{"t": 0.5 + 0.5 * i, "event": "step", "step": i, "world_size": 4} for i in range(6)]
    nofault.append({"t": 3.0, "event": "done", "step": 5, "world_size": 4})
    base = gp.VariantResult("nofault", "c", seed=1)
    mine = gp.VariantResult("slurmft", "c", seed=1,
                            faults=[gp.Fault(t=4.5, kind="link-down", node="node4",
                                             latest="step_1", latest_step=1)])
    other_seed = gp.VariantResult("slurmft", "c", seed=2)
    gp.score([gp.Measured(base, nofault, 3.0), gp.Measured(mine, records(), 15.0),
              gp.Measured(other_seed, records(), 15.0)], steps=6)
    assert base.fault_free_step_s == pytest.approx(0.5) and base.goodput == pytest.approx(1.0)
    assert mine.fault_free_from == "nofault" and mine.fault_free_step_s == pytest.approx(0.5)
    assert mine.goodput == pytest.approx(6 * 0.5 / 15, abs=1e-3)
    assert mine.useful_steps == 6 and mine.completed
    # No nofault run for seed 2: its own full-size steps before the first fault.
    assert other_seed.fault_free_from == "own" and other_seed.fault_free_step_s == pytest.approx(1.0)


def test_torchft_variants_also_get_a_goodput_at_torchfts_own_fault_free_step_time(gp, capsys):
    def steady(step_s):
        recs = [{"t": 0.0, "event": "start", "world_size": 4}]
        recs += [{"t": step_s * (i + 1), "event": "step", "step": i, "world_size": 4}
                 for i in range(6)]
        return recs + [{"t": step_s * 6, "event": "done", "step": 5, "world_size": 4}]
    base = gp.VariantResult("nofault", "c", seed=1)
    own = gp.VariantResult("nofault-torchft", "c", seed=1)
    jobs = gp.VariantResult("slurmft-torchft-jobs", "c", seed=1,
                            faults=[gp.Fault(t=4.5, kind="link-down", node="node4",
                                             latest="step_1", latest_step=1)])
    mpi = gp.VariantResult("slurmft", "c", seed=1)
    gp.score([gp.Measured(base, steady(0.5), 3.0), gp.Measured(own, steady(1.0), 6.0),
              gp.Measured(jobs, records(), 15.0), gp.Measured(mpi, records(), 15.0)], steps=6)
    assert jobs.goodput == pytest.approx(6 * 0.5 / 15, abs=1e-3)        # the main figure
    assert jobs.goodput_torchft == pytest.approx(6 * 1.0 / 15, abs=1e-3)
    assert own.goodput_torchft == pytest.approx(1.0)
    assert mpi.goodput_torchft is None                 # restart mode: one figure
    gp.print_report([base, own, jobs, mpi], 120.0)
    out = capsys.readouterr().out
    assert "slurmft-torchft-jobs at torchft's own fault-free step time (nofault-torchft): " \
           "mean 40.0%" in out


def test_a_run_that_left_no_records_gets_no_goodput(gp):
    r = gp.VariantResult("slurmft", "c", seed=1)
    gp.score([gp.Measured(r, [], 0.0)], steps=6)
    assert r.goodput is None and not r.completed and "no progress records" in r.notes


def test_nofault_always_runs_first_and_quick_is_one_seed(gp):
    a = gp.parse_args(["--variants", "slurmft,classic", "--json", "x.json"])
    assert a.variants == ["nofault", "slurmft", "classic"] and a.out == "x.json"
    a = gp.parse_args(["--variants", "slurmft,nofault", "--quick", "--seeds", "3,4"])
    assert a.variants == ["nofault", "slurmft"] and a.seeds == [3] and a.steps == 300
    with pytest.raises(SystemExit):
        gp.parse_args(["--step-time", "0"])


def test_the_json_carries_the_keys_of_the_report(gp):
    r = gp.VariantResult("slurmft", "c", seed=2, goodput=0.8, completed=True,
                         fault_free_step_s=0.1, world_size_seconds={4: 10.0, 3: 5.0})
    d = json.loads(json.dumps(gp.asdict(r)))
    for key in ("variant", "seed", "goodput", "completed", "faults", "world_size_seconds",
                "fault_free_step_s"):
        assert key in d
    assert d["world_size_seconds"] == {"4": 10.0, "3": 5.0}
    assert "4 ranks 10.0 s, 3 ranks 5.0 s" in gp.table([r])


def test_restart_phases_come_from_the_supervisors_launches_and_the_progress(gp, tmp_path):
    from slurmft.observe.events import AuditFile, RunTransition

    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.emit(RunTransition(time=0.0, job_id=1, state="launching", launch=1))
    audit.emit(RunTransition(time=7.5, job_id=1, state="launching", launch=2))
    fault = gp.Fault(t=4.5, kind="link-down", node="node4", latest="step_1", latest_step=1)
    gp.attach_phases([fault], records(), tmp_path / "audit.jsonl")
    assert fault.phases == {"to_relaunch_s": 3.0, "start_s": 2.5, "load_s": 0.1,
                            "first_step_s": 0.9, "total_s": 6.5}
    r = gp.VariantResult("slurmft", "c", faults=[fault])
    head, row, *legend = gp.phase_table([r])
    assert row.split() == ["slurmft", "link-down", "1", "3.00", "2.50", "0.10", "0.90", "6.50"]
    assert "to_relaunch" in head and len(legend) == 4


def test_no_audit_file_means_no_phases(gp, tmp_path):
    fault = gp.Fault(t=4.5, kind="link-down", node="node4", latest="step_1", latest_step=1)
    gp.attach_phases([fault], records(), tmp_path / "missing.jsonl")
    assert fault.phases is None and gp.phase_table([gp.VariantResult("x", "c",
                                                                       faults=[fault])]) == []


def test_the_torchft_runner_replica_job_passes_shellcheck_and_says_who_it_is(gp, tmp_path):
    text = gp.runner_script(replica=2, replicas=4, work=Path("/w k"),
                            train=["python", "train_torchft.py", "--steps", "9"])
    script = tmp_path / "r.sh"
    script.write_text(text)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stdout
    assert "#SBATCH --job-name=tft-replica-2" in text and "#SBATCH --no-requeue" in text
    assert "REPLICA_GROUP_ID=2" in text and "NUM_REPLICA_GROUPS=4" in text
    assert "MASTER_PORT=29602" in text and "#SBATCH --chdir='/w k'" in text
    assert text.rstrip().endswith("exec python train_torchft.py --steps 9")
    assert "torchft-runner" in gp.parse_args(["--variants", "torchft-runner"]).variants


def test_the_latest_checkpoint_of_a_per_step_run_is_the_newest_over_its_groups(gp, tmp_path):
    import numpy as np

    from slurmft.checkpoint import CheckpointManager, CheckpointPolicy
    from slurmft.checkpoint.store import Store

    assert gp.latest_checkpoint(Store(tmp_path)) == (None, None)
    for group, step in (("replica-0", 40), ("replica-1", 60)):
        with CheckpointManager(tmp_path / group, CheckpointPolicy()) as mgr:
            mgr.save({"w": np.zeros(3)}, step, wait=True)
    name, step = gp.latest_checkpoint(Store(tmp_path))
    assert step == 60 and name.endswith("60")


def test_a_repaired_node_is_resumed_at_once_even_before_slurmctld_hears_from_it(gp):
    """Waiting for NOT_RESPONDING to clear held a repaired node out for ~50 s in the goodput
    run; a resume makes slurmctld ask it to register at once."""
    from types import SimpleNamespace

    from slurmft.slurm.records import NodeInfo

    ran: list[list[str]] = []
    nodes = [NodeInfo("node3", "down", flags=("DRAIN", "NOT_RESPONDING")),
             NodeInfo("node4", "idle"),
             NodeInfo("node5", "idle", flags=("DRAIN",))]
    cluster = SimpleNamespace(
        slurm_client=lambda: SimpleNamespace(nodes=lambda: nodes),
        run=lambda argv, timeout: ran.append(argv) or SimpleNamespace(returncode=0, stderr=""))
    run = gp.Run.__new__(gp.Run)
    run.v, run.cluster, said = "spare-warm", cluster, []
    run.say = said.append
    to_resume = {"node3": float("inf"), "node4": float("inf"), "node5": 0.0}
    run._resume_drained(to_resume)
    assert ran == [["scontrol", "update", "nodename=node3", "state=resume"]]
    assert to_resume == {}          # node3 resumed, node4 back on its own, node5 given up
    assert said == ["resume node3 (was down+DRAIN+NOT_RESPONDING): rc 0 "]


def test_the_group_jobs_run_is_over_when_every_group_job_has_ended(gp):
    """A per-step run whose groups all completed once left no 'done' record, and the benchmark
    waited out its stall limit: it now also ends when Slurm shows every group job ended."""
    from types import SimpleNamespace

    def job(name, state, ended):
        return SimpleNamespace(name=name, state=state, has_ended=ended)

    run = gp.GroupJobsRun.__new__(gp.GroupJobsRun)
    other = job("someone-else", "RUNNING", False)
    client = SimpleNamespace(jobs=lambda: listing)
    listing = [job("tft-group-0", "COMPLETED", True), job("tft-group-1", "PENDING", False), other]
    assert run._ended_states(client) == []            # one group requeued: not over
    listing = [job("tft-group-0", "COMPLETED", True), job("tft-group-1", "FAILED", True), other]
    assert sorted(run._ended_states(client)) == ["COMPLETED", "FAILED"]
    listing = [other]
    assert run._ended_states(client) == []            # none of ours listed (yet): not over
