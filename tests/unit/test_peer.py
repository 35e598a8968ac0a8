"""Where the supervisor starts a launcher: the peer over one shared ssh connection, or here."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

from slurmft.supervise.launch import LaunchSettings
from slurmft.supervise.peer import CONTROL_PERSIST_S, PeerLauncher, multiplexed, private_dir


class Procs:
    def __init__(self, check_rc: int = 0) -> None:
        self.check_rc = check_rc
        self.called: list[list[str]] = []
        self.started: list[tuple[list[str], str | None]] = []

    def call(self, argv, env, log_path, timeout):
        self.called.append(list(argv))
        return self.check_rc

    def start(self, argv, env, stdin_text=None):
        self.started.append((list(argv), stdin_text))
        return SimpleNamespace(pid=1)


def options(tmp_path: Path, restart_count: int = 0) -> SimpleNamespace:
    return SimpleNamespace(here="node1", job_id=7, cwd=str(tmp_path),
                           reschedule_log=tmp_path / "r.log", peer_check_timeout=30.0,
                           checkpoint_dir=tmp_path / "ck", restart_count=restart_count)


def settings(**kw) -> LaunchSettings:
    return LaunchSettings(train_cmd=("python", "train.py"), launch_from="peer",
                          ssh_cmd=("ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=no"), **kw)


def test_multiplexing_options_come_after_the_users_so_theirs_win():
    argv = multiplexed(["ssh", "-o", "ControlMaster=no"], "/tmp/d")
    assert argv[:3] == ["ssh", "-o", "ControlMaster=no"]
    assert argv[3:] == ["-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/d/%C",
                        "-o", f"ControlPersist={CONTROL_PERSIST_S}"]


def test_the_check_and_every_launch_share_one_connection_and_close_ends_it(tmp_path):
    sock = tmp_path / "sock"
    sock.mkdir()
    procs = Procs()
    peer = PeerLauncher(settings(), options(tmp_path), procs, make_dir=lambda: str(sock))
    peer.start(["node1", "node2", "node3"], ["mpirun", "true"], {})
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    check = procs.called[0]
    assert check[-2:] == ["node2", f"cd {tmp_path}"]            # checked once, not per launch
    assert len(procs.called) == 1
    for argv, script in procs.started:
        assert f"ControlPath={sock}/%C" in argv and argv[-3:] == ["node2", "bash", "-s"]
        assert "exec srun --jobid=7" in script
    peer.close({})
    assert procs.called[-1][-3:] == ["-O", "exit", "node2"]
    assert not sock.exists()


def test_a_new_peer_is_checked_and_its_connection_ended_too(tmp_path):
    procs = Procs()
    peer = PeerLauncher(settings(), options(tmp_path), procs,
                        make_dir=lambda: str(tmp_path / "s"))
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    peer.start(["node1", "node3"], ["mpirun", "true"], {})      # node2 was lost
    assert [c[-2] for c in procs.called] == ["node2", "node3"]
    peer.close({})
    assert [c[-1] for c in procs.called[2:]] == ["node2", "node3"]


def test_without_a_socket_directory_ssh_connects_afresh(tmp_path):
    procs = Procs()
    peer = PeerLauncher(settings(), options(tmp_path), procs, make_dir=lambda: None)
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    assert not any(w.startswith("ControlPath") for w in procs.started[0][0])
    peer.close({})
    assert len(procs.called) == 1                                  # no -O exit to send


def test_when_the_peer_check_fails_the_launcher_runs_here_and_no_dir_is_left(tmp_path):
    made: list[Path] = []

    def make() -> str:
        made.append(tmp_path / "s")
        made[-1].mkdir()
        return str(made[-1])

    procs = Procs(check_rc=255)
    peer = PeerLauncher(settings(), options(tmp_path), procs, make_dir=make)
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    assert procs.started[0][0] == ["mpirun", "true"] and not peer.ok
    peer.close({})
    assert not made[0].exists() and len(procs.called) == 1


def test_launching_from_the_batch_host_never_makes_a_directory(tmp_path):
    procs = Procs()
    peer = PeerLauncher(LaunchSettings(train_cmd=("python", "t.py"), launch_from="batch"),
                        options(tmp_path), procs, make_dir=lambda: (_ for _ in ()).throw(
                            AssertionError("no directory for a launch here")))
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    peer.close({})
    assert procs.started[0][0] == ["mpirun", "true"] and not procs.called


def test_the_socket_directory_is_private_and_short_enough_for_a_socket_path():
    path = private_dir()
    assert path is not None
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert len(f"{path}/{'c' * 40}.{'x' * 16}") < 104        # sun_path, with ssh's suffix
    finally:
        os.rmdir(path)


# ---- the previous run's sruns (supervise.strays) -------------------------------------------------

def test_each_peer_script_leaves_its_pid_for_the_next_run_before_it_execs_srun(tmp_path):
    procs = Procs()
    peer = PeerLauncher(settings(), options(tmp_path, restart_count=2), procs,
                        make_dir=lambda: None)
    peer.start(["node1", "node2"], ["mpirun", "true"], {})
    [(_argv, script)] = procs.started
    lines = script.splitlines()
    note = f"mkdir -p {tmp_path}/ck/.slurmft-peer/7/2 2>/dev/null && : > "
    assert lines[-2].startswith(note) and lines[-2].endswith("/node2.$$ 2>/dev/null")
    assert lines[-1].startswith("exec srun")
    # the line works: bash writes NODE.PID, the pid of the shell that then execs
    import subprocess
    out = subprocess.run(["bash", "-c", lines[-2] + "; echo $$"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert [p.name for p in (tmp_path / "ck/.slurmft-peer/7/2").iterdir()] == [f"node2.{out}"]


def test_a_requeued_run_kills_the_earlier_runs_sruns_on_their_nodes_then_forgets_them(tmp_path):
    from slurmft.supervise.strays import find_strays

    root = tmp_path / "ck" / ".slurmft-peer" / "7"
    for run, name in [("0", "node2.4242"), ("0", "node3.77"), ("1", "node2.999"),
                      ("1", "bad;name.5"), ("2", "node4.1"), ("1", "node2.notapid")]:
        (root / run).mkdir(parents=True, exist_ok=True)
        (root / run / name).touch()
    found = find_strays(tmp_path / "ck", 7, 2)
    assert found.pids == {"node2": [4242, 999], "node3": [77]}     # run 2 is this one

    class Done:
        pid = 1

        def poll(self):
            return 0

    procs = Procs()
    procs.start = lambda argv, env, stdin_text=None: (procs.started.append((argv, None)),
                                                      Done())[1]
    peer = PeerLauncher(settings(), options(tmp_path, restart_count=2), procs,
                        make_dir=lambda: None)
    peer.stop_strays({})
    by_node = {argv[-2]: argv[-1] for argv, _ in procs.started}
    assert set(by_node) == {"node2", "node3"}
    assert "for p in 4242 999;" in by_node["node2"] and "SLURM_JOB_ID=7" in by_node["node2"]
    assert "kill -KILL $p" in by_node["node2"] and "*/srun" in by_node["node2"]
    assert sorted(p.name for p in root.iterdir()) == ["2"]        # the old notes are gone
    # the first run, or one launched from the batch host: nothing to look for
    procs.started.clear()
    PeerLauncher(settings(), options(tmp_path, restart_count=0), procs).stop_strays({})
    PeerLauncher(LaunchSettings(train_cmd=("python", "train.py"), launch_from="batch"),
                 options(tmp_path, 3), procs).stop_strays({})
    assert procs.started == []


def test_the_kill_command_spares_a_pid_that_is_not_an_srun_of_this_job(tmp_path):
    """Run for real: a sleep of this job is not an srun (left alone); an 'srun' (a copy of
    sleep named srun) of another job is left alone; one of this job is killed."""
    import shutil
    import subprocess
    import time

    from slurmft.supervise.strays import kill_command

    fake = tmp_path / "srun"
    shutil.copy(shutil.which("sleep"), fake)
    mine = subprocess.Popen([str(fake), "30"], env={"SLURM_JOB_ID": "7"})
    other = subprocess.Popen([str(fake), "30"], env={"SLURM_JOB_ID": "8"})
    plain = subprocess.Popen(["sleep", "30"], env={"SLURM_JOB_ID": "7"})
    try:
        # sshd hands the command line to the login shell as `$SHELL -c LINE`
        subprocess.run(["sh", "-c", kill_command(7, [mine.pid, other.pid, plain.pid])],
                       check=True)
        time.sleep(0.2)
        assert mine.poll() == -9
        assert other.poll() is None and plain.poll() is None
    finally:
        for p in (mine, other, plain):
            p.kill()
            p.wait()
