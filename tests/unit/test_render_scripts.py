"""Golden-file tests for hostfile.j2, restart.sh.j2 and job.sh.j2; shellcheck on the scripts.

Regenerate the golden files after an intended change with
``SLURMFT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render_scripts.py``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import ExitCode, HostNameError, RenderError
from slurmft.recovery.scripts import job_context, restart_context
from slurmft.render import render
from slurmft.slurm.records import JobInfo

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
CMD = ["/opt/slurmft/bin/slurmft"]
LOG = "/shared/slurmft/reschedule.log"
JOB = JobInfo(job_id=42, name="train-gpt", state="NODE_FAIL", nodes=("node1", "node2", "node3",
              "node4"), partition="main", work_dir="/shared/run1",
              stdout="/shared/run1/slurm-%j.out")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SLURMFT_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def shellcheck(tmp_path: Path, text: str) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    script = tmp_path / "s.sh"
    script.write_text(text)
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hostfile_golden():
    text = render("hostfile.j2", {"nodes": ["node1", "node2", "node4"], "slots": 2})
    check_golden("hostfile.txt", text)
    assert text.splitlines() == ["node1 slots=2", "node2 slots=2", "node4 slots=2"]


def test_hostfile_refuses_bad_host_names():
    with pytest.raises(HostNameError):
        render("hostfile.j2", {"nodes": ["node1; rm -rf /"], "slots": 1})


def test_restart_mpirun_golden(tmp_path):
    cfg = RescheduleConfig(mpirun_args="--allow-run-as-root --mca btl self,tcp", slots=2)
    ctx = restart_context(JOB, ["node1", "node2", "node4"], ["node3"],
                          "python train.py --epochs 10 --name 'run one'", "/shared/ckpt run1",
                          cfg, slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("restart.sh.j2", ctx)
    check_golden("restart_mpirun.sh", text)
    shellcheck(tmp_path, text)
    assert "#SBATCH --exclude=node3" in text
    assert "#SBATCH --nodelist=node1,node2,node4" in text
    assert "#SBATCH --no-kill" in text and "#SBATCH --comment=slurmft:relaunch" in text
    assert "export CHECKPOINT_PATH='/shared/ckpt run1'" in text
    argv = exec_argv(text)
    assert argv[:len(CMD) + 1] == [*CMD, "run"]
    assert opt(argv, "--resume") == "always"           # a restart job always resumes
    assert opt(argv, "--launcher") == "mpirun" and opt(argv, "--slots") == "2"
    assert opt(argv, "--mpirun-args") == "--allow-run-as-root --mca btl self,tcp"
    assert argv[argv.index("--") + 1:] == ["python", "train.py", "--epochs", "10", "--name",
                                            "run one"]


def test_restart_srun_golden(tmp_path):
    cfg = RescheduleConfig(launcher="srun")
    ctx = restart_context(JOB, ["node1", "node2", "node4"], ["node3"], "python train.py",
                          "/shared/ckpt", cfg, slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("restart.sh.j2", ctx)
    check_golden("restart_srun.sh", text)
    shellcheck(tmp_path, text)
    argv = exec_argv(text)
    assert opt(argv, "--launcher") == "srun" and opt(argv, "--resume") == "always"


def test_job_wrapper_golden(tmp_path):
    cfg = RescheduleConfig(mpirun_args="--allow-run-as-root")
    ctx = job_context(cfg, train_cmd="python train.py --steps 1000", checkpoint_dir="/shared/ck",
                      job_name="train gpt", nodes=4, partition="main", time_limit="01:00:00",
                      slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("job.sh.j2", ctx)
    check_golden("job_mpirun.sh", text)
    shellcheck(tmp_path, text)
    for line in ("#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --nodes=4",
                 "#SBATCH --job-name=train_gpt", "export CHECKPOINT_PATH=/shared/ck"):
        assert line in text
    argv = exec_argv(text)
    assert opt(argv, "--resume") == "auto" and opt(argv, "--launch-from") == "peer"
    assert opt(argv, "--slurmft-cmd") == shlex.join(CMD) and opt(argv, "--reschedule-log") == LOG
    assert argv[argv.index("--") + 1:] == ["python", "train.py", "--steps", "1000"]


def test_the_job_wrapper_has_no_control_flow_beyond_exec():
    ctx = job_context(RescheduleConfig(), train_cmd="python t.py", checkpoint_dir="/c")
    body = [ln for ln in render("job.sh.j2", ctx).splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    assert body[0] == "export CHECKPOINT_PATH=/c" and body[1].startswith("exec ")
    words = {w for ln in body for w in ln.split()}
    assert not words & {"if", "for", "while", "case", "trap", "function", "&&", "||"}


def exec_argv(text: str) -> list[str]:
    """The argv of the script's one ``exec`` line, split as bash would."""
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("exec "))
    return shlex.split(line)[1:]


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


class Wrapper:
    """The rendered wrapper, run with stand-ins for mpirun, ssh, srun, scontrol, squeue, scancel
    and slurmft.

    mpirun's exit codes come from MPI_RCS (one per call; 'hang' sleeps until killed); it logs the
    node list it sees and FOO (an exported variable the ranks need). With the srun launcher,
    srun starts ``train``, which does the same. The script runs in ``tmp_path``. ssh runs its command here
    (exit 255 for the hosts in SSH_DOWN); srun runs the command after its options. slurmft exits
    IN_PLACE_RC for --in-place; squeue prints SQUEUE_NODES (allocation) or SQUEUE_STEPS (steps)."""

    def __init__(self, tmp_path: Path, **config) -> None:
        self.bindir = tmp_path / "bin"
        self.bindir.mkdir()
        self.calls = tmp_path / "calls"
        launched = ('echo "FOO=$FOO" >>"$CALLS.env"; '
                    'n=$(grep -c "^mpirun\\|^train" "$CALLS"); '
                    'rc=$(echo "$MPI_RCS" | cut -d, -f"$n"); '
                    'if [ "$rc" = hang ]; then exec sleep 60; fi; exit "${rc:-0}"')
        stubs = {
            "mpirun": ('echo "mpirun@$SLURM_JOB_NODELIST/$SLURM_TASKS_PER_NODE $*" >>"$CALLS"; '
                       f'{launched}'),
            # what srun (the srun launcher) starts: the training itself
            "train": f'echo "train $*" >>"$CALLS"; {launched}',
            "ssh": ('ctl=; while :; do case "$1" in -o|-F) shift 2;; -O) ctl=$2; shift 2;; '
                    '-*) shift;; *) break;; esac; done; '
                    'host=$1; shift; [ -z "$ctl" ] || { echo "ssh@$host -O $ctl" >>"$CALLS"; '
                    'exit 0; }; echo "ssh@$host $*" >>"$CALLS"; '
                    'case ",$SSH_DOWN," in *",$host,"*) exit 255;; esac; exec bash -c "$*"'),
            "srun": ('echo "srun $*" >>"$CALLS"; '
                     'while [ "${1#--}" != "$1" ]; do shift; done; exec "$@"'),
            "scontrol": ('case "$3" in "node[1-2]") printf "node1\\nnode2\\n";; '
                         '*) echo "$3";; esac'),
            # the allocation: both nodes until a reschedule took one out (the in-place one
            # logged here, or the watcher's before its SIGUSR2: SHRUNK set)
            "squeue": ('case "$*" in *--steps*) echo "$SQUEUE_STEPS";; *) '
                       'if [ -n "$SHRUNK" ] || grep -qs -- --in-place "$CALLS"; '
                       'then echo "$SQUEUE_NODES"; else echo "node[1-2]"; fi;; esac'),
            "scancel": 'echo "scancel $*" >>"$CALLS"',
            # `run` is the real supervisor; the reschedules it asks for are logged here
            "slurmft": (f'if [ "$1" = run ]; then exec {sys.executable} -m slurmft "$@"; fi; '
                        'echo "slurmft $*" >>"$CALLS"; '
                        'case "$*" in *--in-place*) exit "${IN_PLACE_RC:-0}";; esac'),
        }
        for name, body in stubs.items():
            (self.bindir / name).write_text(f"#!/bin/bash\n{body}\n")
            (self.bindir / name).chmod(0o755)
        self.ckpt = tmp_path / "ck"
        ctx = job_context(RescheduleConfig(**config), train_cmd="train --x 1", hang_timeout="off",
                          checkpoint_dir=str(self.ckpt), nodes=2,
                          slurmft_cmd=[str(self.bindir / "slurmft")],
                          reschedule_log=str(tmp_path / "r.log"))
        self.script = tmp_path / "job.sh"
        self.script.write_text(render("job.sh.j2", ctx))
        self.env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "CALLS": str(self.calls),
                    "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[1-2]",
                    "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "node1",
                    "TMPDIR": str(tmp_path), "SQUEUE_NODES": "node2",
                    "FOO": "a 'quoted' $value; with spaces"}

    def start(self, **env: str) -> subprocess.Popen:
        if self.calls.exists():
            self.calls.unlink()
        return subprocess.Popen(["bash", str(self.script)], env={**self.env, **env},
                                cwd=self.script.parent, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def lines(self, want: int = 0, hops: bool = False) -> list[str]:
        """The calls logged so far; with ``hops``, the ssh and srun calls on the way too."""
        def calls() -> list[str]:
            text = self.calls.read_text() if self.calls.exists() else ""
            return [ln for ln in text.splitlines()
                    if hops or not ln.startswith(("ssh@", "srun "))
                    or (ln.startswith("srun ") and "--mpi=pmix" in ln)]
        for _ in range(50):                     # setsid -f returns before the child writes
            if len(calls()) >= want:
                break
            subprocess.run(["sleep", "0.1"], check=False)
        return calls()

    def env_seen(self) -> list[str]:
        """FOO as each mpirun saw it."""
        path = Path(f"{self.calls}.env")
        return path.read_text().splitlines() if path.exists() else []


def test_job_wrapper_runs_the_training_once_when_it_succeeds(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="0")
    assert p.wait(30) == 0
    [line] = w.lines()
    assert line == "mpirun@node[1-2]/1(x2) -np 2 --mca plm_slurm_args --no-kill --overlap train --x 1"


def test_failed_launcher_is_relaunched_in_place_on_the_nodes_left(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="255,0", SQUEUE_STEPS="7.batch\n7.0")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    lines = w.lines()
    assert len(lines) == 4
    assert lines[1] == f"slurmft reschedule 7 --in-place --restart-count 0 --checkpoint-dir {w.ckpt}"
    assert lines[2] == "scancel --ctld --signal=KILL 7.0"          # what the last launch left behind
    # the second launch: one node (squeue's allocation now), resuming from the checkpoint
    assert lines[3] == f"mpirun@node2/1(x1) -np 1 --mca plm_slurm_args --no-kill --overlap train --x 1 --resume {w.ckpt}"
    assert "relaunching the training on node2 in job 7" in err


def test_what_cannot_be_relaunched_in_place_is_handed_to_a_requeue(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="255", IN_PLACE_RC=str(int(ExitCode.NEEDS_REQUEUE)))
    p.communicate(timeout=30)
    assert p.returncode == 255
    lines = w.lines(want=3)
    assert lines[1] == f"slurmft reschedule 7 --in-place --restart-count 0 --checkpoint-dir {w.ckpt}"
    # the hand-off carries the restart count: a copy cut off before Slurm's requeue is STALE
    assert lines[2] == (f"slurmft reschedule 7 --settle 30 --restart-failed --restart-count 0 --nodes node[1-2] "
                        f"--checkpoint-dir {w.ckpt} --train-cmd train --x 1")


def test_a_copy_left_behind_by_a_requeue_stops_without_handing_off(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="3", IN_PLACE_RC=str(int(ExitCode.STALE_COPY)), SLURM_RESTART_COUNT="2")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 3
    lines = w.lines()
    assert lines[1] == f"slurmft reschedule 7 --in-place --restart-count 2 --checkpoint-dir {w.ckpt}"
    subprocess.run(["sleep", "0.5"], check=False)     # a detached hand-off would show up here
    assert len(w.lines()) == 2 and "runs elsewhere since its requeue" in err


def test_usr2_stops_the_launcher_and_relaunches_without_asking_again(tmp_path):
    import signal
    import time

    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="hang,0", SHRUNK="1")       # the watcher took node1 out
    deadline = time.monotonic() + 20
    while not w.lines() and time.monotonic() < deadline:   # the first launch is running
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGUSR2)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    lines = w.lines()
    assert [ln.split("@")[0] for ln in lines] == ["mpirun", "mpirun"]   # no reschedule call
    assert lines[1] == f"mpirun@node2/1(x1) -np 1 --mca plm_slurm_args --no-kill --overlap train --x 1 --resume {w.ckpt}"


def test_mpirun_runs_on_a_peer_node_in_a_job_step_with_this_environment(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="0")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert w.lines(hops=True) == [
        f"ssh@node2 cd {tmp_path}",             # checked once per peer
        "ssh@node2 bash -s",
        ("srun --jobid=7 --overlap --no-kill --nodes=1 --ntasks=1 --nodelist=node2 env "
         "SLURM_JOB_NODELIST=node[1-2] SLURM_NODELIST=node[1-2] SLURM_NNODES=2 "
         "SLURM_JOB_NUM_NODES=2 SLURM_TASKS_PER_NODE=1(x2) SLURM_NTASKS=2 SLURM_NPROCS=2 "
         "mpirun -np 2 --mca plm_slurm_args --no-kill --overlap train --x 1"),
        "mpirun@node[1-2]/1(x2) -np 2 --mca plm_slurm_args --no-kill --overlap train --x 1",
        "ssh@node2 -O exit",                    # the shared connection ended with the run
    ]
    # the job's environment reaches the ranks intact, quotes and all
    assert w.env_seen() == ["FOO=a 'quoted' $value; with spaces"]


def test_without_ssh_to_the_peer_mpirun_runs_on_the_batch_host(tmp_path):
    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="0", SSH_DOWN="node2")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"cannot ssh to node2 or no {tmp_path} there: mpirun runs on the batch host node1" in err
    assert w.lines(hops=True) == [
        f"ssh@node2 cd {tmp_path}",
        "mpirun@node[1-2]/1(x2) -np 2 --mca plm_slurm_args --no-kill --overlap train --x 1"]


def test_launch_from_batch_runs_mpirun_here_without_ssh(tmp_path):
    w = Wrapper(tmp_path, launch_from="batch")
    p = w.start(MPI_RCS="0")
    assert p.wait(30) == 0
    assert w.lines(hops=True) == [
        "mpirun@node[1-2]/1(x2) -np 2 --mca plm_slurm_args --no-kill --overlap train --x 1"]
    assert opt(exec_argv(w.script.read_text()), "--launch-from") == "batch"


def test_usr2_kills_the_training_steps_but_not_the_batch_step(tmp_path):
    import signal
    import time

    w = Wrapper(tmp_path)
    p = w.start(MPI_RCS="hang,0", SQUEUE_STEPS="7.batch\n7.0\n7.1\n7.extern")
    deadline = time.monotonic() + 20
    while not w.lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGUSR2)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "scancel --ctld --signal=KILL 7.0 7.1" in w.lines()


def test_unsafe_sbatch_values_are_refused():
    with pytest.raises(RenderError, match="#SBATCH"):
        job_context(RescheduleConfig(), train_cmd="t", checkpoint_dir="/c",
                    partition="main\n#SBATCH --uid=0")


def test_missing_train_command_is_a_clear_error():
    with pytest.raises(RenderError, match="training command"):
        job_context(RescheduleConfig(), train_cmd="", checkpoint_dir="/c")


def test_render_job_takes_a_node_count_or_a_hostlist():
    from click.testing import CliRunner

    from slurmft.cli import cli

    base = ["render", "job", "--train-cmd", "python t.py", "--checkpoint-dir", "/c"]
    by_count = CliRunner().invoke(cli, [*base, "--nodes", "3"])
    assert by_count.exit_code == 0, by_count.output
    assert "#SBATCH --nodes=3\n" in by_count.output
    by_list = CliRunner().invoke(cli, [*base, "--nodes", "node[1-2]"])
    assert by_list.exit_code == 0 and "#SBATCH --nodes=2\n" in by_list.output
    zero = CliRunner().invoke(cli, [*base, "--nodes", "0"])
    assert zero.exit_code == 2 and "at least 1" in zero.output


def test_render_job_launches_from_a_peer_unless_told_batch():
    from click.testing import CliRunner

    from slurmft.cli import cli

    base = ["render", "job", "--train-cmd", "python t.py", "--checkpoint-dir", "/c"]
    peer = CliRunner().invoke(cli, base)
    assert peer.exit_code == 0, peer.output
    assert opt(exec_argv(peer.output), "--launch-from") == "peer"
    batch = CliRunner().invoke(cli, [*base, "--launch-from", "batch"])
    assert batch.exit_code == 0, batch.output
    assert opt(exec_argv(batch.output), "--launch-from") == "batch"


def test_srun_launcher_relaunches_in_place_on_the_nodes_left(tmp_path):
    w = Wrapper(tmp_path, launcher="srun", launch_from="batch")
    p = w.start(MPI_RCS="137,0", SQUEUE_STEPS="7.0")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert w.lines() == [
        "srun --mpi=pmix --no-kill --overlap --kill-on-bad-exit=1 --nodes=2 --nodelist=node[1-2] "
        "--ntasks-per-node=1 train --x 1",
        "train --x 1",
        f"slurmft reschedule 7 --in-place --restart-count 0 --checkpoint-dir {w.ckpt}",
        "scancel --ctld --signal=KILL 7.0",
        "srun --mpi=pmix --no-kill --overlap --kill-on-bad-exit=1 --nodes=1 --nodelist=node2 "
        f"--ntasks-per-node=1 train --x 1 --resume {w.ckpt}",
        f"train --x 1 --resume {w.ckpt}",
    ]


def test_srun_launcher_runs_srun_itself_on_the_peer(tmp_path):
    w = Wrapper(tmp_path, launcher="srun")
    p = w.start(MPI_RCS="0")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert w.lines(hops=True) == [
        f"ssh@node2 cd {tmp_path}",
        "ssh@node2 bash -s",                   # no job step around srun: it is only a client
        "srun --mpi=pmix --no-kill --overlap --kill-on-bad-exit=1 --nodes=2 --nodelist=node[1-2] "
        "--ntasks-per-node=1 train --x 1",
        "train --x 1",
        "ssh@node2 -O exit",
    ]
    assert w.env_seen() == ["FOO=a 'quoted' $value; with spaces"]
    text = w.script.read_text()
    assert "#SBATCH --no-kill" in text and "#SBATCH --comment=slurmft:relaunch" in text


def test_render_job_with_spares_holds_the_extra_nodes_and_tells_the_supervisor():
    from click.testing import CliRunner

    from slurmft.cli import cli

    res = CliRunner().invoke(cli, ["render", "job", "--nodes", "4", "--spares", "1",
                                   "--train-cmd", "python t.py", "--checkpoint-dir", "/c"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH --nodes=5" in res.output
    assert opt(exec_argv(res.output), "--spares") == "1"
    assert opt(exec_argv(res.output), "--train-nodes") == "4"
    plain = CliRunner().invoke(cli, ["render", "job", "--nodes", "4", "--train-cmd", "t",
                                     "--checkpoint-dir", "/c"])
    assert "#SBATCH --nodes=4" in plain.output and "--spares" not in exec_argv(plain.output)
