"""A peer was lost: end the collective that waits on it now, not at its timeout.

Training side (standard library and slurmft.core only). In per-step mode (one Slurm job per
replica group, ``slurmft render job --group-jobs``), a group whose node is cut off leaves the
other groups blocked in the step's collective until its timeout (torchft's ``timeout``, often
10 s to minutes): a vanished host sends no reset, so their sockets to it just wait. Once
``slurmft watch`` has confirmed the node lost, it sends the other groups' training steps
``PEER_LOST_SIGNAL`` (``scancel --signal=URG``). This module turns that signal into an
action while the main thread is still blocked inside the collective (in C, where Python
signal handlers do not run):

``PeerLossListener(on_loss).start()``
    from the main thread: ``on_loss()`` then runs on a listener thread as soon as the signal
    arrives (through ``signal.set_wakeup_fd``, which the interpreter writes to from its C
    handler, in whatever thread the kernel picked).

``OpenedSockets`` / ``break_sockets(inodes)``
    what ``on_loss`` can do for a backend without an abort (gloo): remember the TCP sockets
    a process group opened while it was set up, and shut them down. The pending receive
    fails at once ("Connection closed by peer"), the step is not committed, and the next
    quorum sets up a new process group without the lost peer. NCCL users call their process
    group's ``abort()`` instead.

SIGURG's default action is to ignore it, so a training that does not listen loses nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

from slurmft.core.errors import CheckpointError
from slurmft.core.log import get_logger

log = get_logger(__name__)

#: What ``slurmft watch`` sends the training steps of a lost group's peers. Its default action
#: is to be ignored, so a training that does not listen for it goes on as before.
PEER_LOST_SIGNAL = signal.SIGURG
#: The same, as scancel spells it.
PEER_LOST_SIGNAL_NAME = "URG"

_TCP_TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")
_ESTABLISHED = "01"


class PeerLossListener:
    """Runs ``on_loss()`` on a thread of its own each time ``signum`` arrives, also while the
    main thread is blocked in C. ``start()`` and ``stop()`` from the main thread only (Python
    sets signal handlers and the wakeup fd there). Takes the interpreter's one wakeup fd:
    ``start()`` refuses when something else (an asyncio loop) holds it."""

    def __init__(self, on_loss: Callable[[], None], signum: int = PEER_LOST_SIGNAL) -> None:
        self.on_loss = on_loss
        self.signum = int(signum)
        self.count = 0                   # losses heard
        self.last: float | None = None   # time.time() of the last one
        self._read: socket.socket | None = None
        self._write: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._old_handler: object = None
        self._old_fd = -1

    def start(self) -> PeerLossListener:
        if threading.current_thread() is not threading.main_thread():
            raise CheckpointError("PeerLossListener.start must be called from the main thread")
        if self._thread is not None:
            return self
        read, write = socket.socketpair()
        write.setblocking(False)
        old_fd = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        if old_fd != -1:
            signal.set_wakeup_fd(old_fd)
            read.close()
            write.close()
            raise CheckpointError("another part of this process (an asyncio loop?) holds "
                                  "Python's signal wakeup fd: cannot listen for a lost peer")
        self._read, self._write, self._old_fd = read, write, old_fd
        # A Python-level handler must exist for the interpreter's C handler to catch the
        # signal (and write its number to the wakeup fd); the work is the thread's.
        self._old_handler = signal.signal(self.signum, _ignore)
        self._thread = threading.Thread(target=self._listen, name="slurmft-peer-loss",
                                        daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        read = self._read
        assert read is not None
        while True:
            try:
                data = read.recv(64)
            except OSError:
                return
            if not data:                              # stop() closed the other end
                return
            if self.signum not in data:               # other signals Python caught
                continue
            self.count += 1
            self.last = time.time()
            log.warning("a peer was lost (signal %d): ending the step's collective now",
                        self.signum)
            try:
                self.on_loss()
            except Exception as exc:  # noqa: BLE001 - the listener must outlive one failure
                log.error("peer loss: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        if self._thread is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        # None: the handler was not set from Python; give the signal its default back
        old = signal.SIG_DFL if self._old_handler is None else self._old_handler
        signal.signal(self.signum, old)  # type: ignore[arg-type]
        assert self._write is not None and self._read is not None
        self._write.close()                            # ends recv() with b"" ... or EBADF
        self._read.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._read.close()
        self._thread = None


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The main thread's part of the signal: nothing."""


def tcp_socket_inodes() -> dict[str, int]:
    """This process's established TCP sockets: {socket inode: one of its fds}."""
    fds: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:                               # closed since the listing
            continue
        if target.startswith("socket:["):
            fds.setdefault(target[8:-1], int(name))
    established: dict[str, int] = {}
    for table in _TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:                               # no IPv6 in this namespace
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _ESTABLISHED and fields[9] in fds:
                established[fields[9]] = fds[fields[9]]
    return established


class OpenedSockets:
    """The TCP sockets this process opened inside the ``with`` block (e.g. a gloo process
    group's connections to its peers, all made while it is set up). Sockets other threads
    opened meanwhile count too: shutting one of those down costs a reconnect at worst."""

    def __init__(self) -> None:
        self.inodes: frozenset[str] = frozenset()
        self._before: set[str] = set()

    def __enter__(self) -> OpenedSockets:
        self._before = set(tcp_socket_inodes())
        return self

    def __exit__(self, *exc: object) -> None:
        self.inodes = frozenset(set(tcp_socket_inodes()) - self._before)


def break_sockets(inodes: Iterable[str]) -> int:
    """Shut down (both directions) the still open TCP sockets among ``inodes``: a thread
    blocked on one of them wakes with an error at once. Returns how many were shut."""
    wanted = set(inodes)
    shut = 0
    for inode, fd in tcp_socket_inodes().items():
        if inode not in wanted:
            continue
        try:
            dup = os.dup(fd)
        except OSError:                               # closed meanwhile
            continue
        if str(os.fstat(dup).st_ino) != inode:        # the fd number was reused meanwhile
            os.close(dup)
            continue
        sock = socket.socket(fileno=dup)
        try:
            sock.shutdown(socket.SHUT_RDWR)
            shut += 1
        except OSError:
            pass
        finally:
            sock.close()
    return shut


def breakable(process_group_class: type) -> type:
    """A subclass of a process group class whose ``configure`` opens the group's connections
    (torchft's ``ProcessGroupGloo``): it remembers them, and ``break_connections()``, safe from
    any thread, shuts them down. Gloo has no abort that wakes a pending receive; this does
    (what a ``PeerLossListener``'s callback calls)."""

    class Breakable(process_group_class):  # type: ignore[misc, valid-type]
        _peer_sockets: frozenset[str] = frozenset()

        def configure(self, *args: object, **kwargs: object) -> object:
            with OpenedSockets() as opened:
                result = super().configure(*args, **kwargs)
            self._peer_sockets = opened.inodes
            return result

        def break_connections(self) -> int:
            """Shut the connections of the last ``configure`` down; how many were open."""
            return break_sockets(self._peer_sockets)

    Breakable.__name__ = Breakable.__qualname__ = f"Breakable{process_group_class.__name__}"
    return Breakable
