"""MPI coordination: the ONLY module of slurmft that imports mpi4py.

Rank 0 owns the CheckpointManager's side effects (writes, rotation, uploads); the other
ranks only decide with it and wait. Every decision is collective, so all ranks take the same
branch at the same step:

* ``should_save(step)``: rank 0's policy (its clock) OR a save signal seen on any rank;
* ``should_stop``: true on every rank once any rank got the signal and the save was taken;
* ``save``: rank 0 snapshots; a barrier holds the others until the snapshot is taken
  (``durable=True``: until it is written and verified);
* ``load``: rank 0 picks the newest checkpoint of the current branch that verifies (see
  lineage.py) and broadcasts its name; every rank then loads and verifies that same one
  (shared file system), whatever the world size was when it was written. If any rank
  cannot load it, all of them fall back together to the next one rank 0 picks.

Every rank beats its heartbeat (heartbeat.py) in ``vote``/``should_save`` when the supervisor
set ``SLURMFT_HEARTBEAT_DIR``: a rank stuck in a collective stops beating. The beat carries
the rank's busy time of the step, measured from the end of its last ``agree`` to this
``vote`` (its own compute, without waiting for the others): the supervisor names a rank
whose busy time stays well above its peers' a straggler. Call ``vote`` right before the
step's collective (as ``examples/train.py`` does) for that figure to mean its compute.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy, SaveHandle
from slurmft.checkpoint.manifest import CheckpointInfo
from slurmft.core.errors import CheckpointError, FencedError
from slurmft.core.log import get_logger

log = get_logger(__name__)


def run_token() -> str:
    """A token naming this run: Slurm job, restart count, host, pid and a random part."""
    return (f"job {os.environ.get('SLURM_JOB_ID', '-')}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
            f" {socket.gethostname()}:{os.getpid()} {uuid.uuid4().hex[:8]}")


class MPICheckpointManager:
    """A CheckpointManager shared by the ranks of ``comm`` (default COMM_WORLD)."""

    def __init__(self, path: str, policy: CheckpointPolicy | None = None, comm: Any = None,
                 *, fence: bool = True, **kwargs: Any) -> None:
        """``fence``: claim the directory for this run (``CheckpointManager(owner=...)``)
        before anything is loaded, so a run left behind by a requeue stops at its next save."""
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if fence and self.rank == 0 and "owner" not in kwargs:
            kwargs["owner"] = run_token()
        # Only rank 0 cleans up leftovers; the others must not touch the directory.
        kwargs.setdefault("rank", self.rank)
        self.manager = CheckpointManager(path, policy, world_size=self.size,
                                         writer=self.rank == 0, **kwargs)
        self._stop = False
        self._clock = time.monotonic
        self._agreed_at: float | None = None      # end of the last collective (agree)
        self.comm.Barrier()

    @property
    def policy(self) -> CheckpointPolicy:
        return self.manager.policy

    def install_signal_handlers(self) -> None:
        self.manager.install_signal_handlers()

    def should_save(self, step: int) -> bool:
        """Collective: the same answer on every rank (one small allreduce).

        A training loop that already allreduces every step can skip this collective: add
        ``vote(step)`` to its buffer (SUM) and pass the reduced pair to ``agree``."""
        due, signalled = self.vote(step)
        flags = self.comm.allreduce(int(due) | (int(signalled) << 1), op=MPI.BOR)
        return self.agree((flags & 1, (flags >> 1) & 1))

    def vote(self, step: int) -> tuple[float, float]:
        """This rank's (save due, stop signalled) as 0/1 floats, to be SUM-reduced over ranks.
        Only rank 0 judges the save policy (one clock for ``interval``). Every rank beats
        its heartbeat here (rank 0 through ``should_save``), with its busy time since the
        last ``agree`` (none at the first vote)."""
        busy = None if self._agreed_at is None else self._clock() - self._agreed_at
        if self.rank == 0:
            due = self.manager.should_save(step, busy)
        else:
            self.manager.beat(step, busy)
            due = False
        return float(due), float(self.manager.should_stop)

    def agree(self, votes: Sequence[float]) -> bool:
        """The decision from the SUM over all ranks of ``vote``: save if any rank was
        signalled (then ``should_stop`` turns true everywhere) or rank 0 found a save due."""
        self._agreed_at = self._clock()
        due, signalled = float(votes[0]), float(votes[1])
        if signalled > 0:
            self._stop = True
            if self.rank == 0 and not self.manager.should_stop:
                self.manager.request_stop()
            return True
        return due > 0

    @property
    def should_stop(self) -> bool:
        return self._stop

    def save(self, state: Any, step: int, durable: bool = False, **kwargs: Any) -> SaveHandle | None:
        """Rank 0 saves ``state``; the others wait at a barrier. Collective."""
        handle = None
        error, fenced = "", False
        if self.rank == 0:
            try:
                handle = self.manager.save(state, step, **kwargs)
                if durable:
                    handle.result()
            except CheckpointError as exc:
                error, fenced = str(exc), isinstance(exc, FencedError)
        error, fenced = self.comm.bcast((error, fenced), root=0)
        if error:
            raise (FencedError if fenced else CheckpointError)(f"rank 0: {error}")
        return handle

    def choose(self, exclude: Sequence[str] = ()) -> str | None:
        """Collective: rank 0 picks the newest valid checkpoint (not in ``exclude``), every
        rank gets its name."""
        name, error = None, ""
        if self.rank == 0:
            try:
                found = self.manager.find_valid(exclude)
                name = found[1].name if found else None
            except CheckpointError as exc:
                error = str(exc)
        name, error = self.comm.bcast((name, error), root=0)
        if error:
            raise CheckpointError(f"rank 0: {error}")
        return name

    def load(self) -> tuple[CheckpointInfo | None, Any]:
        """Collective: every rank loads the checkpoint rank 0 chose; (None, None) if none.
        A checkpoint that fails on any rank is skipped by all (a fallback, logged on rank 0)."""
        failed: list[str] = []
        while True:
            try:
                name = self.choose(failed)
            except CheckpointError as exc:
                if not failed:
                    raise
                raise CheckpointError(f"{exc} (and {', '.join(failed)} failed on a rank)") from None
            if name is None:
                return None, None
            error = ""
            info = state = None
            try:
                info, state = self.manager.load_info(name)
            except CheckpointError as exc:
                error = str(exc)
            errors = self.comm.allgather(error)
            bad = [(r, e) for r, e in enumerate(errors) if e]
            if not bad:
                return info, state
            if self.rank == 0:
                log.warning("rank %d cannot load %s: %s; falling back", bad[0][0], name, bad[0][1])
            failed.append(name)

    def close(self) -> None:
        error = ""
        if self.rank == 0:
            try:
                self.manager.close()
            except CheckpointError as exc:
                error = str(exc)
        else:
            self.manager.close()
        error = self.comm.bcast(error, root=0)
        if error:
            raise CheckpointError(f"rank 0: {error}")

    def __enter__(self) -> "MPICheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
