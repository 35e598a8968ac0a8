"""A warm pool: one pre-imported Python per node forks the training's ranks at each launch.

A rank started from scratch pays for an interpreter and its imports at every relaunch (torch
and mpi4py: 1.3 s alone, about 5 s for four ranks sharing two cores). With ``slurmft run
--warm``, the supervisor starts one server per node of the allocation for the whole job (a job
step of its own) that imports the training's heavy modules once (``--warm-preload``, default
``torch,torch._dynamo,mpi4py``; mpi4py without MPI_Init). The launcher (mpirun or srun) then
starts, for each rank, a small client instead of the training::

    python -m slurmft.supervise.warm run -- python train.py ARGS...

The client hands the server its command, environment, working directory and stdin, stdout and
stderr (file descriptors over the socket); the server forks a child that takes them over,
initialises MPI when mpi4py is preloaded (PMIx finds the rank from the environment the launcher
gave the client), and runs the script (or ``-m`` module) as ``__main__``. The client forwards
signals to the child and exits with its status; a client that is killed (its job step stopped)
makes the server kill the child. Where no server answers (none started, a node new to the
job, another interpreter, a command that is not ``python SCRIPT`` or ``python -m MODULE``), the
client execs the command as it is: warm or cold, the training runs.

The server listens on an abstract Unix socket named after the job and the node (abstract
sockets belong to a network namespace: one per node) and serves its own user only
(``SO_PEERCRED``). It forks from one thread and holds no lock while it does.

Standard library (and ``slurmft.core.selfcmd``) only: the client starts with each rank and
must stay light.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Mapping, Sequence

from slurmft.core.selfcmd import python_target

#: What the server imports unless told otherwise. torch._dynamo: torch imports it lazily at
#: the first optimizer a training builds (``torch.optim.SGD(...)``), 1.1 s on one idle core,
#: about 2.5 s for four ranks sharing two: the bulk of a warm relaunch, paid again by every
#: forked rank unless the server has it.
DEFAULT_PRELOAD = ("torch", "torch._dynamo", "mpi4py")
#: Signals the client passes on to the rank it stands for.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGCONT, signal.SIGQUIT, signal.SIGALRM, signal.SIGURG)
#: Set by the supervisor for a launch that includes a server still importing
#: (``supervise.pool.WarmPool.env``).
ENV_WAIT = "SLURMFT_WARM_WAIT"
#: A directory on shared storage where a client that found no server on its node leaves a file
#: named after the node, for the supervisor to start that node's server again
#: (``supervise.pool.WarmPool.dead_servers``).
ENV_MISSING = "SLURMFT_WARM_MISSING_DIR"
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 16 << 20


def socket_name(job_id: str, node: str) -> str:
    """The pool's abstract socket name on ``node`` for ``job_id``."""
    return f"\0slurmft-warm-{job_id}-{node}"


def here(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(job id, node) of the process reading ``environ`` (a task of a Slurm job), or None."""
    job = environ.get("SLURM_JOB_ID", "")
    node = environ.get("SLURMD_NODENAME") or socket.gethostname()
    return (job, node) if job.isdigit() and node else None


def _same_interpreter(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b) or os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


# ---- the client: one per rank, started by the launcher ------------------------------------------

def _send(sock: socket.socket, doc: dict, fds: Sequence[int] = ()) -> None:
    body = json.dumps(doc).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body))], list(fds))
    sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_doc(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return json.loads(_recv_exact(sock, size))


def _wait_for(environ: Mapping[str, str]) -> float:
    """Seconds to wait for a server still importing (``SLURMFT_WARM_WAIT``: the supervisor
    sets it when a server of the launch started recently), 0 when unset or bad."""
    try:
        return max(0.0, min(600.0, float(environ.get(ENV_WAIT, "0"))))
    except ValueError:
        return 0.0


def _connect(name: str, wait: float, timeout: float) -> socket.socket:
    """A socket connected to ``name``, retrying while nobody listens yet (a server still
    importing), for up to ``wait`` seconds; a new socket for each try."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(name)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def run_client(cmd: Sequence[str], environ: Mapping[str, str] | None = None,
               connect_timeout: float = 2.0) -> int:
    """Run ``cmd`` in a child of this node's pool server; exec it cold when there is none.
    Returns the child's exit code (a child killed by a signal: this process dies by it)."""
    environ = dict(os.environ if environ is None else environ)
    target, where = python_target(cmd), here(environ)
    sock = None
    if target is not None and where is not None:
        try:
            sock = _connect(socket_name(*where), _wait_for(environ), connect_timeout)
            _send(sock, {"interpreter": target.interpreter, "kind": target.kind,
                         "name": target.name, "args": list(target.args), "env": environ,
                         "cwd": os.getcwd()}, [0, 1, 2])
            reply = _recv_doc(sock)
        except (ConnectionRefusedError, FileNotFoundError):
            _report_missing(environ, where[1])      # nobody listens: the server is gone
            reply = {}
        except (OSError, ValueError, ConnectionError):
            reply = {}
        if "pid" not in reply and sock is not None:
            sock.close()
            sock = None
    if sock is None:
        os.execvpe(cmd[0], list(cmd), environ)     # cold: as if the pool were not there
    pid = int(reply["pid"])

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    sock.settimeout(None)
    try:
        code = int(_recv_doc(sock)["exit"])
    except (OSError, ValueError, KeyError, ConnectionError):
        code = 1                                   # the server died: the rank with it
    if code < 0:                                   # killed by a signal: so is its stand-in
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
    return code


def alive(environ: Mapping[str, str], timeout: float = 2.0) -> bool:
    """Whether this node's pool server listens and answers (``alive``: the supervisor asks
    every training node before a relaunch after a rank failure, whose kill may have taken
    the server with it)."""
    where = here(environ)
    if where is None:
        return False
    try:
        with _connect(socket_name(*where), 0.0, timeout) as sock:
            _send(sock, {"ping": True})
            return "pong" in _recv_doc(sock)
    except (OSError, ValueError, ConnectionError):
        return False


def _report_missing(environ: Mapping[str, str], node: str) -> None:
    """Leave ``ENV_MISSING``/NODE for the supervisor (best effort: the rank starts cold
    either way)."""
    directory = environ.get(ENV_MISSING, "")
    if not directory:
        return
    try:
        os.close(os.open(os.path.join(directory, node), os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        pass


# ---- the server: one per node for the whole job -------------------------------------------------

def preload(modules: Sequence[str]) -> list[str]:
    """Import ``modules`` (mpi4py without MPI_Init); returns those that failed."""
    failed = []
    for name in modules:
        try:
            module = importlib.import_module(name)    # names given at run time
            if name == "mpi4py":
                module.rc.initialize = False           # each forked rank initialises its MPI
                module.rc.finalize = False
                importlib.import_module("mpi4py.MPI")
        except Exception as exc:  # noqa: BLE001 - a module that fails loads in the rank
            print(f"slurmft warm: cannot preload {name}: {exc}", file=sys.stderr, flush=True)
            failed.append(name)
    return failed


def _child(request: dict, fds: Sequence[int]) -> None:
    """In the forked child: become the rank, run it, never return."""
    code = 1
    try:
        _die_with_parent()
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        mpi = sys.modules.get("mpi4py.MPI")
        launched = any(v in os.environ for v in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                                                 "PMI_RANK"))
        if mpi is not None and launched and not mpi.Is_initialized():
            mpi.Init_thread(mpi.THREAD_MULTIPLE)
        code = _run_main(request)
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.Finalize()
    except BaseException:  # noqa: BLE001 - the rank's own error, printed as Python would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    """SIGKILL this rank when the server dies (prctl PR_SET_PDEATHSIG): its client then
    reports it gone, and no rank runs on outside the launcher's reach."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:                      # the server died before prctl took effect
        os._exit(1)


def _run_main(request: dict) -> int:
    import runpy

    args = [str(a) for a in request["args"]]
    try:
        if request["kind"] == "module":
            sys.argv = [request["name"], *args]
            sys.path[0] = os.getcwd()
            runpy.run_module(request["name"], run_name="__main__", alter_sys=True)
        else:
            path = request["name"]
            sys.argv = [path, *args]
            sys.path[0] = os.path.dirname(os.path.abspath(path))
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0


class Server:
    """The pool server of one node: accepts clients, forks ranks, reports their exits."""

    def __init__(self, name: str, node: str = "") -> None:
        self.node = node
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(name)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.children: dict[int, tuple[socket.socket, int]] = {}   # pid -> (client, pidfd)
        self.served = 0

    def serve(self, stop_after: int | None = None) -> None:
        while stop_after is None or self.served < stop_after or self.children:
            for key, _ in self.selector.select(timeout=1.0):
                what, data = key.data
                if what == "accept":
                    self._accept()
                elif what == "exit":
                    self._reap(data)
                else:                                       # a client went away
                    self._client_gone(data)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                raise PermissionError(f"uid {uid} is not this pool's user")
            header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
            if len(header) < _HEADER.size:
                header += _recv_exact(conn, _HEADER.size - len(header))
            (size,) = _HEADER.unpack(header)
            if size > _MAX_REQUEST:
                raise ValueError(f"request of {size} bytes")
            request = json.loads(_recv_exact(conn, size))
            if request.get("ping"):                 # `alive`: a listening server, no rank
                _send(conn, {"pong": self.node})
                conn.close()
                return
            if not _same_interpreter(request["interpreter"], sys.executable):
                raise ValueError(f"{request['interpreter']} is not {sys.executable}")
        except (OSError, ValueError, KeyError, ConnectionError) as exc:
            print(f"slurmft warm: refused a client: {exc}", file=sys.stderr, flush=True)
            for fd in fds:                          # its stdout: the client's reader waits
                os.close(fd)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            # the rank keeps none of the server's sockets (a client must see the server go)
            for other, pidfd in self.children.values():
                other.close()
                os.close(pidfd)
            self.selector.close()
            self.listener.close()
            conn.close()
            _child(request, fds)
        for fd in fds:
            os.close(fd)
        self.served += 1
        rank = next((request["env"][v] for v in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                                                 "SLURM_PROCID") if v in request["env"]), "?")
        print(f"slurmft warm: {self.node}: rank {rank} forked as pid {pid} "
              f"({os.path.basename(request['name'])})", file=sys.stderr, flush=True)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (conn, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, ("exit", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        try:
            _send(conn, {"pid": pid})
        except OSError:
            self._client_gone(pid)

    def _reap(self, pid: int) -> None:
        conn, pidfd = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        try:
            self.selector.unregister(conn)
        except KeyError:                                    # its client already went
            pass
        _, status = os.waitpid(pid, 0)
        try:
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        except OSError:
            pass
        conn.close()

    def _client_gone(self, pid: int) -> None:
        """The client's end closed (or it wrote where it must not): kill the rank."""
        if pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            conn = self.children[pid][0]
            try:
                self.selector.unregister(conn)
            except KeyError:
                pass


def serve_main(preload_modules: Sequence[str], environ: Mapping[str, str]) -> int:
    where = here(environ)
    if where is None:
        print("slurmft warm: SLURM_JOB_ID is not set: the pool runs in a job step",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    failed = preload(preload_modules)
    try:
        server = Server(socket_name(*where), where[1])
    except OSError as exc:
        print(f"slurmft warm: cannot listen on {where[1]}: {exc}", file=sys.stderr)
        return 1
    print(f"slurmft warm: {where[1]} ready in {time.monotonic() - t0:.2f} s (preloaded "
          f"{', '.join(m for m in preload_modules if m not in failed) or 'nothing'})",
          file=sys.stderr, flush=True)
    server.serve()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurmft.supervise.warm",
                                description="slurmft's warm pool (started by `slurmft run "
                                            "--warm`).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="this node's pool server (one per node, a job step)")
    s.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                   help="modules to import once, comma-separated")
    sub.add_parser("alive", help="print NODE up|down: whether this node's server answers")
    r = sub.add_parser("run", help="run one rank from this node's pool (cold when none)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the training command")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return serve_main([m for m in args.preload.split(",") if m], os.environ)
    if args.cmd == "alive":
        node = (here(os.environ) or ("", "?"))[1]
        print(f"{node} {'up' if alive(os.environ) else 'down'}", flush=True)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("run needs the training command after --")
    return run_client(cmd)


if __name__ == "__main__":
    sys.exit(main())
