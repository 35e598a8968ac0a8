#!/usr/bin/env python3
"""Data-parallel PyTorch training across MPI ranks, checkpointed by slurmft.

A small regression MLP on a synthetic, seeded data set. Every step consumes one global batch
(``--global-batch`` samples, dealt to ranks round-robin) and allreduces the summed gradients with
mpi4py, so the maths of a step does not depend on the world size: a run that loses a node and
resumes on N-1 ranks continues the same loss curve.

Run under mpirun (or srun --mpi=pmix)::

    mpirun -np 4 python examples/train.py --steps 300 --checkpoint-dir $CHECKPOINT_PATH --resume

Compute is modelled per sample (``--sample-time``): each rank sleeps for its share of the global
batch, so after losing ranks every step takes longer, as it would on real hardware.

Rank 0 appends one JSON object per line to ``--log-jsonl`` (start, resume, step, save, done), each
with the time ``t`` and the ``attempt`` id of this launch, which ``slurmft demo`` and
``bench/goodput.py`` read to build the timeline, the loss plot and goodput. SIGUSR1 (``#SBATCH
--signal=B:USR1@60``) makes the next step boundary save and exit with 143 (not 0: the run is
not finished, so the job wrapper relaunches or requeues it instead of ending the job).

Hang injection (``slurmft inject hang`` stops a rank from outside): ``--hang-at-step N
--hang-rank R`` makes rank R stop at step N before the step's allreduce and sleep forever, so
the other ranks block inside the allreduce, as behind a rank stuck in a collective. It happens
once per checkpoint directory: rank R first writes ``HANG_MARKER`` there, and a relaunch that
finds it trains on (where the directory is not a local path, every launch hangs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid

import torch
from mpi4py import MPI

from slurmft.checkpoint import CheckpointPolicy
from slurmft.checkpoint.mpi import MPICheckpointManager
from slurmft.checkpoint.torch import TorchCheckpointer
from slurmft.core.errors import FencedError
from slurmft.examples.data import batch_indices, make_data, make_model

EXIT_STOPPED = 143   # 128 + SIGTERM: stopped on a signal before the last step (saved first)
HANG_MARKER = ".slurmft-hang-injected"   # in the checkpoint directory: --hang-at-step happened


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="total optimizer steps")
    p.add_argument("--global-batch", type=int, default=48,
                   help="samples per step over all ranks (a multiple of 12 divides by 1-4 ranks)")
    p.add_argument("--dataset-size", type=int, default=4800)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sample-time", type=float, default=0.0,
                   help="simulated compute per sample per rank, seconds: each rank sleeps its "
                        "share of the global batch times this every step, so a step on k of N "
                        "ranks takes N/k as long as on N, as a real data-parallel job does")
    p.add_argument("--step-time", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-dir", default=os.environ.get("CHECKPOINT_PATH", ""),
                   help="checkpoint directory (default: $CHECKPOINT_PATH)")
    p.add_argument("--step-interval", type=int, default=20, help="save every N steps")
    p.add_argument("--interval", type=float, default=30.0, help="save every N minutes")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                   help="continue from the newest verified checkpoint, if there is one "
                        "(in DIR if given, else in --checkpoint-dir)")
    p.add_argument("--log-jsonl", default="", help="append progress records here (rank 0)")
    p.add_argument("--hang-at-step", type=int, default=None, metavar="N",
                   help="fault injection: --hang-rank stops at step N before its allreduce and "
                        "sleeps forever (the other ranks block in the allreduce); once per "
                        "checkpoint directory")
    p.add_argument("--hang-rank", type=int, default=None, metavar="R",
                   help="the rank that hangs at --hang-at-step (default 0)")
    args = p.parse_args(argv)
    if args.step_time is not None:
        p.error("--step-time is gone (it cost the same whatever the world size): use "
                "--sample-time SECONDS, e.g. step time at full size x ranks / --global-batch")
    if args.sample_time < 0:
        p.error("--sample-time must be >= 0")
    if args.hang_rank is not None and args.hang_at_step is None:
        p.error("--hang-rank needs --hang-at-step N")
    if args.hang_at_step is not None:
        if args.hang_at_step < 0:
            p.error("--hang-at-step must be >= 0")
        if args.hang_rank is None:
            args.hang_rank = 0
        elif args.hang_rank < 0:
            p.error("--hang-rank must be >= 0")
    if args.resume:
        args.checkpoint_dir = args.resume
    if not args.checkpoint_dir:
        p.error("--checkpoint-dir or CHECKPOINT_PATH is required")
    return args


class ProgressLog:
    """JSON lines for the demo's timeline (rank 0 only), flushed per record; every record
    carries the id of this launch (``attempt``)."""

    def __init__(self, path: str, rank: int) -> None:
        self._fh = None
        self.attempt = uuid.uuid4().hex[:12]
        if path and rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fh = open(path, "a", buffering=1)

    def write(self, event: str, **fields) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"t": time.time(), "event": event,
                                      "attempt": self.attempt, **fields}) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()




class DataParallelStep:
    """One training step of this rank: its share of the global batch, the simulated compute,
    and ONE allreduce that carries the gradients, the loss and the checkpoint votes."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: object, data: tuple[torch.Tensor, torch.Tensor],
                 args: argparse.Namespace, comm: MPI.Comm) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.x, self.y = data
        self.args, self.comm = args, comm
        self.rank, self.world = comm.Get_rank(), comm.Get_size()
        self.params = list(model.parameters())
        self.n_grad = sum(p.numel() for p in self.params)
        self.compute_s = args.sample_time * (args.global_batch // self.world)   # rank's share

    def __call__(self, step: int, ckpt: MPICheckpointManager) -> tuple[float, bool]:
        """Run ``step``; returns (the global batch's mean loss, whether all ranks save now)."""
        a = self.args
        idx = batch_indices(step, a.global_batch, a.dataset_size, a.seed)[self.rank::self.world]
        self.optimizer.zero_grad(set_to_none=False)
        loss_sum = torch.nn.functional.mse_loss(self.model(self.x[idx]), self.y[idx],
                                                reduction="sum")
        loss_sum.backward()
        if self.compute_s:
            time.sleep(self.compute_s)
        due, signalled = ckpt.vote(step)
        extra = torch.tensor([float(loss_sum.detach()), due, signalled], dtype=torch.float64)
        flat = torch.cat([p.grad.reshape(-1).double() for p in self.params] + [extra]).numpy()
        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        save_now = ckpt.agree(flat[self.n_grad + 1:])
        grads = flat[:self.n_grad] / a.global_batch
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad.copy_(torch.from_numpy(grads[offset:offset + n]).view_as(p))
            offset += n
        self.optimizer.step()
        self.scheduler.step()
        return float(flat[self.n_grad]) / a.global_batch, save_now


def resume(ckpt: MPICheckpointManager, torch_ckpt: TorchCheckpointer, log: ProgressLog,
           rank: int, world: int) -> int:
    """Load the newest verified checkpoint (the same on every rank); the step to start at."""
    info, raw = ckpt.load()
    if info is None:
        return 0
    point = torch_ckpt.apply(raw, info.name)
    log.write("resume", checkpoint=info.name, from_step=point.step - 1,
              saved_world_size=point.world_size, world_size=world)
    if rank == 0:
        print(f"resumed from {info.name} (step {point.step - 1}, saved by "
              f"{point.world_size} ranks) on {world} ranks", flush=True)
    return point.step


def hang_armed(args: argparse.Namespace, rank: int) -> bool:
    """Whether this rank hangs at --hang-at-step in this launch (not if a launch before did)."""
    if args.hang_at_step is None or rank != args.hang_rank:
        return False
    return not os.path.exists(os.path.join(args.checkpoint_dir, HANG_MARKER))


def block_instead_of_allreduce(args: argparse.Namespace, rank: int, step: int) -> None:
    """--hang-at-step: never join this step's allreduce (the other ranks wait inside it);
    sleep until killed (SIGKILL: the save signals only set a flag that nothing reads now)."""
    if os.path.isdir(args.checkpoint_dir):
        with open(os.path.join(args.checkpoint_dir, HANG_MARKER), "w") as fh:
            fh.write(f"rank {rank} step {step} pid {os.getpid()} host {socket.gethostname()}\n")
    print(f"train.py: rank {rank} hangs at step {step} (--hang-at-step)", file=sys.stderr,
          flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if args.global_batch % world:
        print(f"train.py: --global-batch {args.global_batch} does not divide by {world} ranks",
              file=sys.stderr)
        return 2
    if args.hang_at_step is not None and args.hang_rank >= world:
        print(f"train.py: --hang-rank {args.hang_rank} is not a rank of {world}", file=sys.stderr)
        return 2
    hang = hang_armed(args, rank)
    log = ProgressLog(args.log_jsonl, rank)
    torch.manual_seed(args.seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.7)
    train_step = DataParallelStep(model, optimizer, scheduler,
                                  make_data(args.dataset_size, args.seed), args, comm)
    policy = CheckpointPolicy(interval=args.interval, step_interval=args.step_interval,
                              keep_last=args.keep_last)
    ckpt = MPICheckpointManager(args.checkpoint_dir, policy)
    ckpt.install_signal_handlers()
    torch_ckpt = TorchCheckpointer(ckpt.manager, model, optimizer, scheduler)
    log.write("start", world_size=world, host=socket.gethostname(), job=os.environ.get("SLURM_JOB_ID", ""),
              restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0), steps=args.steps,
              global_batch=args.global_batch, sample_time=args.sample_time)
    start_step = resume(ckpt, torch_ckpt, log, rank, world) if args.resume is not None else 0
    try:
        step = start_step
        for step in range(start_step, args.steps):
            if hang and step == args.hang_at_step:
                block_instead_of_allreduce(args, rank, step)
            t0 = time.perf_counter()
            loss, save_now = train_step(step, ckpt)
            step_s = time.perf_counter() - t0
            log.write("step", step=step, loss=loss, world_size=world, step_s=step_s)
            if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
                print(f"step {step} loss {loss:.5f} world {world} "
                      f"{args.global_batch / step_s:.0f} samples/s", flush=True)
            if save_now or step == args.steps - 1:
                ckpt.save(torch_ckpt.state(step), step, durable=step == args.steps - 1)
                log.write("save", step=step)
                if ckpt.should_stop and step < args.steps - 1:
                    # Stopped before the last step (Slurm killing the step, a preemption):
                    # exit like a process ended by SIGTERM, never 0, so that neither the
                    # launcher nor the job wrapper takes an unfinished run for a finished one.
                    log.write("stopped", step=step, reason="signal")
                    ckpt.close()
                    if rank == 0:
                        print(f"train.py: stopped on a signal after saving step {step}",
                              file=sys.stderr, flush=True)
                    return EXIT_STOPPED
        ckpt.close()
        log.write("done", step=step, world_size=world)
        return 0
    except FencedError as exc:
        # A newer run of this job (requeued elsewhere) owns the checkpoint directory now.
        log.write("fenced", reason=str(exc))
        if rank == 0:
            print(f"train.py: stopping: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
