"""The training side of a lost peer: the signal heard while the main thread is blocked, and
the sockets of a process group shut down so a pending receive fails at once."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from slurmft.checkpoint.peerloss import (
    PEER_LOST_SIGNAL, OpenedSockets, PeerLossListener, break_sockets, breakable,
    tcp_socket_inodes)
from slurmft.core.errors import CheckpointError


def test_default_action_of_the_signal_is_to_ignore_it():
    """A training that does not listen is not killed by the watcher's signal."""
    assert PEER_LOST_SIGNAL == signal.SIGURG
    assert signal.getsignal(PEER_LOST_SIGNAL) == signal.SIG_DFL
    os.kill(os.getpid(), PEER_LOST_SIGNAL)          # would end the test run if it killed


def wait_for(cond, seconds=5.0):
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        threading.Event().wait(0.01)


def test_the_callback_runs_on_its_own_thread_while_the_main_thread_waits():
    done = threading.Event()
    threads = []

    def on_loss():
        threads.append(threading.current_thread())
        done.set()

    listener = PeerLossListener(on_loss).start()
    try:
        os.kill(os.getpid(), PEER_LOST_SIGNAL)
        # The main thread stays blocked (as in a collective): only the listener can set it.
        assert done.wait(5)
        assert threads[0] is not threading.main_thread()
        assert listener.count == 1 and listener.last is not None
    finally:
        listener.stop()


def test_other_signals_do_not_count_and_a_failing_callback_does_not_stop_it():
    calls = []
    seen_usr2 = []

    def on_loss():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    old = signal.signal(signal.SIGUSR2, lambda *_: seen_usr2.append(1))
    listener = PeerLossListener(on_loss).start()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)        # written to the wakeup fd too
        os.kill(os.getpid(), PEER_LOST_SIGNAL)
        wait_for(lambda: len(calls) == 1)
        os.kill(os.getpid(), PEER_LOST_SIGNAL)      # signals close together may coalesce
        wait_for(lambda: len(calls) == 2)
        assert len(calls) == 2 and listener.count == 2
        assert seen_usr2 == [1]                     # the main thread's own handler still ran
    finally:
        listener.stop()
        signal.signal(signal.SIGUSR2, old)


def test_stop_gives_back_the_handler_and_the_wakeup_fd():
    listener = PeerLossListener(lambda: None).start()
    listener.stop()
    assert signal.getsignal(PEER_LOST_SIGNAL) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1           # nothing left set


def test_start_refuses_when_the_wakeup_fd_is_taken():
    a, b = socket.socketpair()
    b.setblocking(False)
    signal.set_wakeup_fd(b.fileno())
    try:
        with pytest.raises(CheckpointError, match="wakeup fd"):
            PeerLossListener(lambda: None).start()
        assert signal.set_wakeup_fd(b.fileno()) == b.fileno()   # left as it was
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


def test_start_from_another_thread_is_refused():
    errors = []

    def start():
        try:
            PeerLossListener(lambda: None).start()
        except CheckpointError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=start)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


def _pair(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    return client, conn


def test_breaking_the_opened_sockets_wakes_a_pending_receive_and_spares_the_others():
    server = socket.create_server(("127.0.0.1", 0))
    before_client, before_conn = _pair(server)       # e.g. the store, opened earlier
    with OpenedSockets() as opened:
        group_client, group_conn = _pair(server)     # e.g. a gloo pair
    try:
        assert opened.inodes and str(os.fstat(group_client.fileno()).st_ino) in opened.inodes
        assert str(os.fstat(before_client.fileno()).st_ino) not in opened.inodes
        group_client.settimeout(30)
        got = []
        reader = threading.Thread(target=lambda: got.append(group_client.recv(10)))
        reader.start()                               # blocked: the peer sends nothing
        assert break_sockets(opened.inodes) >= 1
        reader.join(5)
        assert not reader.is_alive() and got == [b""]   # woke with end-of-stream
        # the socket opened before is untouched
        before_conn.sendall(b"ok")
        assert before_client.recv(2) == b"ok"
    finally:
        for s in (before_client, before_conn, group_client, group_conn, server):
            s.close()


def test_tcp_socket_inodes_lists_established_sockets_only():
    server = socket.create_server(("127.0.0.1", 0))
    client, conn = _pair(server)
    try:
        found = tcp_socket_inodes()
        assert str(os.fstat(client.fileno()).st_ino) in found
        assert str(os.fstat(server.fileno()).st_ino) not in found   # listening, not established
    finally:
        for s in (client, conn, server):
            s.close()
    assert break_sockets(["no-such-inode"]) == 0


def test_breakable_remembers_what_configure_opened_and_shuts_it_down():
    server = socket.create_server(("127.0.0.1", 0))
    opened = []

    class Group:                       # stands in for torchft's ProcessGroupGloo
        def __init__(self, timeout):
            self.timeout = timeout

        def configure(self, addr, rank):
            opened.append(_pair(server))
            return "configured"

    group = breakable(Group)(timeout=3)
    assert type(group).__name__ == "BreakableGroup" and group.timeout == 3
    assert group.break_connections() == 0                # nothing configured yet
    assert group.configure("a:1/x", rank=0) == "configured"
    client, conn = opened[0]
    try:
        assert group.break_connections() == 2             # both ends live in this test
        assert client.recv(4) == b""                     # shut: end-of-stream at once
    finally:
        for s in (client, conn, server):
            s.close()
