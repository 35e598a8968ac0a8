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


def options(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(here="node1", job_id=7, cwd=str(tmp_path),
                           reschedule_log=tmp_path / "r.log", peer_check_timeout=30.0)


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
