#!/usr/bin/env python3
"""Per-step fault-tolerant data-parallel training: one replica group of a torchft job.

The same small regression MLP on the same synthetic, seeded data as ``train.py``, trained by R
replica groups that torchft (``torchft.Manager``, its ``DistributedDataParallel`` and
``OptimizerWrapper``) keeps in step: a quorum per step through torchft's lighthouse, the
gradients averaged over the replicas that take part, the step committed only where every
participant got through it. When a replica group dies the others train on; a group started
again rejoins by torchft's live recovery (it fetches the weights of a healthy peer over HTTP).
``slurmft run --replicas R`` starts the lighthouse and launches each group as a Slurm job step::

    TORCHFT_LIGHTHOUSE=http://HOST:29510 REPLICA_GROUP_ID=0 NUM_REPLICA_GROUPS=3 \\
    MASTER_ADDR=HOST MASTER_PORT=29600 python -m slurmft.examples.train_torchft --steps 300

Environment (set by the supervisor): ``TORCHFT_LIGHTHOUSE``, ``REPLICA_GROUP_ID``,
``NUM_REPLICA_GROUPS``, ``MASTER_ADDR``/``MASTER_PORT`` (this group's store: group rank 0
serves it, torchft connects to it, and peers rendezvous through the quorum leader's store, so
``MASTER_ADDR`` must be reachable from the other groups' nodes), the rank inside the group
(``RANK``/``WORLD_SIZE``, else ``SLURM_PROCID``/``SLURM_NTASKS``, else 0/1),
``TORCHFT_MANAGER_HOST`` (the name or address this process advertises to peers, default the
host name) and ``CHECKPOINT_PATH``.

Batch: each replica group has a fixed share of ``--global-batch``, ``global_batch / R`` (split
over the group's ranks), so a step with all R groups trains exactly ``train.py``'s global batch
and a step with k of R groups trains k/R of it, at the same step time (the k groups take the
first k shares, by their rank in the quorum). torchft averages the gradients over the groups
that took part, so the learning rate need not change with k. Compute is modelled per sample
(``--sample-time``): a rank sleeps its share of the batch times that every step.

Checkpoints: group rank 0 saves into ``<checkpoint-dir>/replica-<id>`` with slurmft's
CheckpointManager (one manager per directory: it claims the directory and fences the run it
replaces), the state being the model, optimizer, LR scheduler and the torchft Manager's step.
At start a group loads the newest verified checkpoint there (after losing every group: each
comes back from its own latest), and the first quorum brings the groups that are behind up to
date by live recovery from one that is furthest ahead.

Progress records (JSON lines in ``--log-jsonl``, as ``train.py``'s, each with ``t``, ``event``,
``attempt`` (this process's launch) and ``replica`` (the group that wrote it)): ``step`` (with
``loss``, ``step_s``, ``world_size`` = ranks that took part, ``replicas`` = groups that took
part), ``save`` and ``done`` come only from group rank 0 of the group at rank 0 of the step's
quorum, so the file holds one stream of steps while groups come and go; steps torchft did not
commit are not recorded. ``start`` (``world_size`` = all groups' ranks), ``resume`` (at this
launch's first committed step: the group trained on from its own checkpoint, ``from_step``),
``heal`` (a committed step whose state came from a peer; ``since_start_s``: seconds since the
process started) and ``stopped`` come from group rank 0 of the group they are about.

SIGUSR1/SIGTERM: save at the next step boundary and exit 143. SIGURG (``slurmft watch``: a peer
group's node is lost): this group's connections of the step are shut down, so the step fails at
once instead of at ``--timeout`` and the next quorum goes on without the lost group. Exit 0 when ``--steps`` are
committed; 1 when torchft gives up (quorum or store timeouts, lighthouse gone); 2 bad input;
3 fenced (a newer launch of this group owns its checkpoint directory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

PROCESS_STARTED = time.time()   # before torch is imported: "heal" says how long a rejoin took

import torch  # noqa: E402

from slurmft.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.checkpoint.peerloss import PeerLossListener, breakable  # noqa: E402
from slurmft.checkpoint.torch import TorchCheckpointer  # noqa: E402
from slurmft.core.errors import CheckpointError, ConfigError, FencedError, SlurmFTError  # noqa: E402
from slurmft.examples.data import batch_indices, make_data, make_model  # noqa: E402

PROG = "train_torchft.py"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FENCED, EXIT_STOPPED = 0, 1, 2, 3, 143
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps to commit")
    p.add_argument("--global-batch", type=int, default=48,
                   help="samples per step with all NUM_REPLICA_GROUPS groups present; each "
                        "group's fixed share is this / NUM_REPLICA_GROUPS")
    p.add_argument("--dataset-size", type=int, default=4800)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sample-time", type=float, default=0.0,
                   help="simulated compute per sample, seconds: each rank sleeps its share of "
                        "the batch times this every step")
    p.add_argument("--checkpoint-dir", default=os.environ.get("CHECKPOINT_PATH", ""),
                   help="checkpoint root (default: $CHECKPOINT_PATH); group i saves in "
                        "replica-<i> under it")
    p.add_argument("--step-interval", type=int, default=20, help="save every N steps")
    p.add_argument("--interval", type=float, default=30.0, help="save every N minutes")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--log-jsonl", default="", help="append progress records here")
    p.add_argument("--print-every", type=int, default=20, metavar="N",
                   help="group rank 0 prints every N-th committed step of its group on stdout")
    p.add_argument("--min-replicas", type=int, default=1,
                   help="commit a step only when at least this many groups took part")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="torchft's timeout for collectives, commits and live recovery, seconds")
    p.add_argument("--quorum-timeout", type=float, default=30.0,
                   help="how long to wait for a quorum, seconds")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="how long to wait to reach the lighthouse and the group's store, seconds")
    args = p.parse_args(argv)
    for name in ("steps", "global_batch", "dataset_size", "min_replicas", "print_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("timeout", "quorum_timeout", "connect_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0 seconds")
    if args.sample_time < 0:
        p.error("--sample-time must be >= 0")
    if args.global_batch > args.dataset_size:
        p.error("--global-batch must not exceed --dataset-size")
    if not args.checkpoint_dir:
        p.error("--checkpoint-dir or CHECKPOINT_PATH is required")
    return args


# ---- pure helpers: the environment contract, the batch plan, where things go -----------------

def _int_var(env: dict[str, str] | Any, name: str, default: int | None = None,
             minimum: int = 0) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        if default is None:
            raise ConfigError(f"{name} is not set: the supervisor (slurmft run --replicas) sets it")
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name}={raw!r} must be an integer >= {minimum}")
    return int(raw)


def group_rank_from_env(env: Any) -> tuple[int, int]:
    """(rank, world size) inside the replica group: RANK/WORLD_SIZE, else srun's
    SLURM_PROCID/SLURM_NTASKS, else 0/1."""
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if (env.get(rank_var) or "").strip():
            rank = _int_var(env, rank_var)
            world = _int_var(env, size_var, minimum=1)
            if rank >= world:
                raise ConfigError(f"{rank_var}={rank} is not a rank of {size_var}={world}")
            return rank, world
    return 0, 1


def check_host(name: str, what: str) -> str:
    """A host name or IPv4 address that can go into a URL as is."""
    if not _HOST.match(name):
        raise ConfigError(f"{what}={name!r} is not a host name or IPv4 address")
    return name


@dataclass(frozen=True)
class ReplicaEnv:
    """What the supervisor tells one process of a replica group (the environment contract)."""

    lighthouse: str          # http://HOST:PORT
    replica_id: int
    num_replicas: int
    master_addr: str         # the group's store (group rank 0 serves it)
    master_port: int
    rank: int                # inside the group
    world_size: int          # ranks in the group
    manager_host: str        # advertised to peers (manager server, live recovery)

    @classmethod
    def from_environ(cls, env: Any, hostname: str | None = None) -> "ReplicaEnv":
        lighthouse = (env.get("TORCHFT_LIGHTHOUSE") or "").strip()
        if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+:\d+/?$", lighthouse):
            raise ConfigError(f"TORCHFT_LIGHTHOUSE={lighthouse!r} must be http://HOST:PORT "
                              "(the torchft_lighthouse the supervisor started)")
        num = _int_var(env, "NUM_REPLICA_GROUPS", minimum=1)
        rid = _int_var(env, "REPLICA_GROUP_ID")
        if rid >= num:
            raise ConfigError(f"REPLICA_GROUP_ID={rid} is not a group of NUM_REPLICA_GROUPS={num}")
        rank, world = group_rank_from_env(env)
        port = _int_var(env, "MASTER_PORT", minimum=1)
        if port > 65535:
            raise ConfigError(f"MASTER_PORT={port} is not a TCP port")
        addr = check_host((env.get("MASTER_ADDR") or "").strip(), "MASTER_ADDR")
        host = (env.get("TORCHFT_MANAGER_HOST") or "").strip() or hostname or socket.gethostname()
        return cls(lighthouse=lighthouse, replica_id=rid, num_replicas=num, master_addr=addr,
                   master_port=port, rank=rank, world_size=world,
                   manager_host=check_host(host, "TORCHFT_MANAGER_HOST"))

    @property
    def global_rank(self) -> int:
        """Unique over all groups (heartbeat files): replica id x group size + group rank."""
        return self.replica_id * self.world_size + self.rank


@dataclass(frozen=True)
class BatchPlan:
    """Each group's fixed share of the global batch, split over its ranks."""

    global_batch: int
    num_replicas: int
    group_size: int
    dataset_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.global_batch % (self.num_replicas * self.group_size):
            raise ConfigError(
                f"--global-batch {self.global_batch} does not divide into {self.num_replicas} "
                f"groups of {self.group_size} ranks: use a multiple of "
                f"{self.num_replicas * self.group_size}")

    @property
    def per_replica(self) -> int:
        return self.global_batch // self.num_replicas

    @property
    def per_rank(self) -> int:
        return self.per_replica // self.group_size

    def indices(self, step: int, slot: int, rank: int) -> torch.Tensor:
        """The samples of group rank ``rank`` of the group in ``slot`` (its rank in the quorum)
        at ``step``: slot k takes the k-th share of train.py's global batch of that step."""
        if not 0 <= slot < self.num_replicas:
            raise ValueError(f"slot {slot} out of range for {self.num_replicas} groups")
        share = batch_indices(step, self.global_batch, self.dataset_size, self.seed)
        share = share[slot * self.per_replica:(slot + 1) * self.per_replica]
        return share[rank * self.per_rank:(rank + 1) * self.per_rank]




def replica_checkpoint_dir(root: str, replica_id: int) -> str:
    """Group ``replica_id``'s own checkpoint directory (a manager claims its directory)."""
    return os.path.join(root, f"replica-{replica_id}")


def run_token(replica_id: int) -> str:
    """The owner token of this launch of a group (fencing): job, group, host, pid, random."""
    return (f"job {os.environ.get('SLURM_JOB_ID', '-')} replica {replica_id} "
            f"{socket.gethostname()}:{os.getpid()} {uuid.uuid4().hex[:8]}")


def is_stream_writer(group_rank: int, quorum_rank: int | None) -> bool:
    """Whether this process writes the step stream: rank 0 of the quorum's first group."""
    return group_rank == 0 and quorum_rank == 0


class ProgressLog:
    """JSON lines shared by the groups (appends of one line each), flushed per record."""

    def __init__(self, path: str, enabled: bool, replica_id: int) -> None:
        self._fh = None
        self.attempt = uuid.uuid4().hex[:12]
        self.replica_id = replica_id
        if path and enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fh = open(path, "a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"t": time.time(), "event": event, "attempt": self.attempt,
                                       "replica": self.replica_id, **fields}) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---- torchft ------------------------------------------------------------------------------------

def advertised_transport(host: str, timeout: timedelta) -> Any:
    """torchft's HTTP checkpoint transport (live recovery), advertising ``host`` instead of
    ``socket.gethostname()`` (what torchft 0.2.0 always puts in the address it hands peers)."""
    from torchft.checkpointing.http_transport import HTTPTransport

    class AdvertisedHTTPTransport(HTTPTransport):
        def address(self) -> str:
            port = self._server.socket.getsockname()[1]
            return f"http://{host}:{port}/checkpoint/"

    return AdvertisedHTTPTransport(timeout=timeout, num_chunks=0)


@dataclass
class StepResult:
    committed: bool
    step: int                # the step this iteration ran (committed: the new last step)
    loss: float
    participants: int        # groups in the quorum that took part
    quorum_rank: int | None  # this group's rank among them (None: healing)
    healed: bool             # this group's state came from a peer in this step
    error: str               # why torchft did not commit ('' when it did or no error)


class Replica:
    """One process of a replica group: model, torchft Manager, DDP, optimizer, checkpoints."""

    def __init__(self, args: argparse.Namespace, env: ReplicaEnv, plan: BatchPlan) -> None:
        from torch.distributed import TCPStore
        from torchft import Manager, ProcessGroupGloo
        from torchft.ddp import DistributedDataParallel
        from torchft.optim import OptimizerWrapper

        self.args, self.env, self.plan = args, env, plan
        self.x, self.y = make_data(args.dataset_size, args.seed)
        torch.manual_seed(args.seed)          # every group starts from the same weights
        self.module = make_model()
        self.inner_opt = torch.optim.SGD(self.module.parameters(), lr=args.lr, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.inner_opt, step_size=100, gamma=0.7)
        timeout = timedelta(seconds=args.timeout)
        # The group's store: rank 0 serves it at MASTER_ADDR:MASTER_PORT; torchft's Manager
        # connects to it (and peers rendezvous through the quorum leader's), the group's own
        # process group (more than one rank) uses it too.
        self.store = TCPStore(env.master_addr, env.master_port, world_size=None,
                              is_master=env.rank == 0, wait_for_workers=False,
                              timeout=timedelta(seconds=args.connect_timeout))
        self.intra = None
        if env.world_size > 1:
            import torch.distributed as dist
            dist.init_process_group("gloo", store=dist.PrefixStore("slurmft-intra", self.store),
                                    rank=env.rank, world_size=env.world_size, timeout=timeout)
            self.intra = dist.group.WORLD
        # its connections can be shut down from the peer-loss listener's thread (see train)
        self.pg = breakable(ProcessGroupGloo)(timeout=timeout)
        self.manager = Manager(
            pg=self.pg,
            load_state_dict=self._load_live_state, state_dict=self._live_state,
            min_replica_size=args.min_replicas, use_async_quorum=True,
            timeout=timeout, quorum_timeout=timedelta(seconds=args.quorum_timeout),
            connect_timeout=timedelta(seconds=args.connect_timeout),
            rank=env.rank, world_size=env.world_size,
            store_addr=env.master_addr, store_port=env.master_port,
            lighthouse_addr=env.lighthouse, replica_id=f"replica_{env.replica_id}",
            hostname=env.manager_host,
            checkpoint_transport=advertised_transport(env.manager_host, timeout))
        self.ddp = DistributedDataParallel(self.manager, self.module)
        self.optimizer = OptimizerWrapper(self.manager, self.inner_opt)
        self.compute_s = args.sample_time * plan.per_rank

    # live recovery: what a healthy peer sends a group that is behind
    def _live_state(self) -> dict:
        return {"model": self.module.state_dict(), "optim": self.inner_opt.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def _load_live_state(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.inner_opt.load_state_dict(state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])

    def step(self, stop_vote: bool = False) -> tuple[StepResult, bool]:
        """One torchft step; returns its result and whether any rank of the group was asked
        to stop (the group decides together)."""
        self.optimizer.zero_grad(set_to_none=False)      # starts the step's quorum
        # Wait for it (and the fetch of a peer's state when healing): the group's share of
        # the batch is its rank in the quorum, so the forward pass cannot overlap the quorum.
        quorum_rank = self.manager.participating_rank()
        participants = self.manager.num_participants()
        healing = not self.manager.is_participating()
        step = self.manager.current_step()
        slot = quorum_rank if quorum_rank is not None else 0
        idx = self.plan.indices(step, min(slot, self.plan.num_replicas - 1), self.env.rank)
        loss = torch.nn.functional.mse_loss(self.ddp(self.x[idx]), self.y[idx])
        if self.compute_s:
            time.sleep(self.compute_s)
        try:
            # The gradients are averaged over the groups inside backward (DDP's comm hook).
            loss.backward()
        except Exception as exc:  # noqa: BLE001 - torchft 0.2.0's comm hook, see below
            # A peer died during the gradient allreduce: torchft records the error, but its
            # comm hook then fails an assertion (the work's future was never set up), which
            # leaves DDP's reducer mid-bucket. Report it (this step is not committed; the
            # next quorum reconfigures without the peer) and reset the reducer, so the next
            # forward starts clean instead of failing with "expected to have finished
            # reduction in the prior iteration".
            if self.manager.errored() is None:
                self.manager.report_error(exc)   # keep torchft's own error (the gloo one)
            self.ddp.reducer._reset_state()
        stats = torch.tensor([float(loss.detach())], dtype=torch.float32)
        self.manager.allreduce(stats).wait()             # mean loss of the groups (errors: kept)
        mean_loss, stop = float(stats[0]), stop_vote
        if self.intra is not None:
            mean_loss, stop = self._group_average(mean_loss, stop_vote)
        if self.manager.errored() is not None:
            # Close this group's connections of the failed step now, not at the next quorum:
            # a peer still blocked in the same collective on us (gloo's ring waits on its
            # neighbour, not on the dead group) errors out at once instead of waiting for
            # --timeout, while the lighthouse, which wants more than half of the groups that
            # still heartbeat, cannot form a quorum without it. The next quorum, new since a
            # group failed to commit, configures a fresh process group.
            self.pg.abort()
        before = self.manager.current_step()
        self.optimizer.step()                             # should_commit, then SGD if True
        committed = self.manager.current_step() > before
        if committed:
            self.scheduler.step()
        errored = self.manager.errored()
        return StepResult(committed=committed, step=before, loss=mean_loss,
                          participants=participants, quorum_rank=quorum_rank,
                          healed=healing and committed,
                          error="" if errored is None else _first_line(errored.original_exception)
                          ), stop

    def _group_average(self, loss: float, stop_vote: bool) -> tuple[float, bool]:
        """More than one rank per group: average the (already cross-group) gradients and the
        loss over the group's ranks, and agree on stopping (any rank signalled). Not fault
        tolerant inside a group: the group is the unit the supervisor relaunches."""
        import torch.distributed as dist
        grads = [p.grad for p in self.module.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [torch.tensor([loss, float(stop_vote)], dtype=grads[0].dtype)])
        dist.all_reduce(flat, group=self.intra)
        flat[:-1] /= self.env.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-2]), bool(flat[-1] > 0)

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)
        if self.intra is not None:
            import torch.distributed as dist
            dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---- the loop -----------------------------------------------------------------------------------

def load_checkpoint(ckpt: CheckpointManager, torch_ckpt: TorchCheckpointer,
                    ) -> tuple[int, str, dict]:
    """The newest verified checkpoint of this group into model/optimizer/scheduler: (next
    step, its name, torchft's state); (0, '', {}) when there is none."""
    raw = ckpt.load()
    if raw is None:
        return 0, "", {}
    point = torch_ckpt.apply(raw, ckpt.latest_loaded.name if ckpt.latest_loaded else "")
    torchft_state = {k: int(v) for k, v in (point.extra.get("torchft") or {}).items()}
    return point.step, point.checkpoint, torchft_state


def train(args: argparse.Namespace, env: ReplicaEnv, plan: BatchPlan) -> int:
    torch.set_num_threads(1)
    lead = env.rank == 0
    log = ProgressLog(args.log_jsonl, lead, env.replica_id)
    policy = CheckpointPolicy(interval=args.interval, step_interval=args.step_interval,
                              keep_last=args.keep_last)
    ckpt = CheckpointManager(replica_checkpoint_dir(args.checkpoint_dir, env.replica_id), policy,
                             world_size=env.world_size, writer=lead,
                             owner=run_token(env.replica_id) if lead else "",
                             rank=env.global_rank)
    ckpt.install_signal_handlers()
    replica = listener = None
    try:
        replica = Replica(args, env, plan)
        # SIGURG from `slurmft watch`: a peer group's node is lost; end the step's collective
        # now instead of at --timeout (gloo cannot abort a pending receive: shut its sockets)
        listener = PeerLossListener(replica.pg.break_connections).start()
        torch_ckpt = TorchCheckpointer(ckpt, replica.module, replica.inner_opt, replica.scheduler)
        full_world = env.num_replicas * env.world_size
        log.write("start", world_size=full_world, replicas=env.num_replicas,
                  group_size=env.world_size, host=socket.gethostname(),
                  job=os.environ.get("SLURM_JOB_ID", ""), steps=args.steps,
                  global_batch=args.global_batch, sample_time=args.sample_time)
        next_step, loaded, torchft_state = load_checkpoint(ckpt, torch_ckpt)
        if torchft_state:
            replica.manager.load_state_dict(torchft_state)
        origin_known = False      # whether this launch said where its state came from
        waiting_said = 0.0        # when it last said it waits for more groups
        last = next_step - 1
        while replica.manager.current_step() < args.steps:
            t0 = time.perf_counter()
            res, stop = replica.step(ckpt.should_stop)
            step_s = time.perf_counter() - t0
            writer = is_stream_writer(env.rank, res.quorum_rank)
            if res.committed:
                last = res.step
                if res.healed:
                    # Live recovery: the state of this step came from a peer.
                    log.write("heal", step=res.step, from_step=next_step - 1,
                              since_start_s=round(time.time() - PROCESS_STARTED, 3))
                elif not origin_known and loaded:
                    # This group trained on from its own checkpoint (no peer was ahead of
                    # it): the steps after it are redone.
                    log.write("resume", checkpoint=loaded, from_step=next_step - 1,
                              world_size=res.participants * env.world_size)
                origin_known = True
                if writer:
                    # the part of the global batch this step trained (goodput counts it so)
                    log.write("step", step=res.step, loss=res.loss, step_s=step_s,
                              world_size=res.participants * env.world_size,
                              replicas=res.participants,
                              batch_share=round(min(res.participants, env.num_replicas)
                                                / env.num_replicas, 6))
                if lead and (res.step % args.print_every == 0 or res.step == args.steps - 1):
                    print(f"replica {env.replica_id}: step {res.step} loss {res.loss:.5f} "
                          f"replicas {res.participants} at {time.time():.3f}", flush=True)
            elif res.error and lead:
                print(f"replica {env.replica_id}: step {res.step} not committed: {res.error}",
                      file=sys.stderr, flush=True)
            elif lead and time.monotonic() - waiting_said > 10:
                waiting_said = time.monotonic()
                print(f"replica {env.replica_id}: step {res.step} not committed: "
                      f"{res.participants} group(s) took part, --min-replicas is "
                      f"{args.min_replicas}", file=sys.stderr, flush=True)
            # One rank: its own flag. More: the flag the group agreed on in this step (a
            # signal that came after the vote counts at the next step, on every rank alike).
            stopping = stop or (replica.intra is None and ckpt.should_stop)
            final = replica.manager.current_step() >= args.steps
            if lead and res.committed:
                due = ckpt.should_save(res.step)          # beats the heartbeat too
            else:
                due = False
                ckpt.beat(res.step)     # waiting for peers is not a hang
            if lead and last >= 0 and (due or final or stopping):
                ckpt.save(torch_ckpt.state(last, extra={"torchft": replica.manager.state_dict()}),
                          last, wait=final or stopping)
                if writer or stopping:
                    log.write("save", step=last)
            if stopping and not final:
                ckpt.close()
                log.write("stopped", step=last, reason="signal")
                if lead:
                    print(f"{PROG}: replica {env.replica_id} stopped on a signal after "
                          f"saving step {last}", file=sys.stderr, flush=True)
                return EXIT_STOPPED
        ckpt.close()
        # Every group's lead, not the stream writer alone: which group the last quorum
        # ranked first is not known for sure at the end (a run whose groups all completed
        # left no "done" in a benchmark once), and a reader needs one such record.
        log.write("done", step=last, world_size=replica.manager.num_participants()
                  * env.world_size)
        return EXIT_OK
    except FencedError as exc:
        log.write("fenced", reason=str(exc))
        print(f"{PROG}: replica {env.replica_id} stopping: {exc}", file=sys.stderr, flush=True)
        return EXIT_FENCED
    finally:
        if listener is not None:
            listener.stop()
        if replica is not None:
            replica.shutdown()
        log.close()
        try:
            ckpt.close()         # after an error (a no-op when closed): os._exit skips atexit
        except CheckpointError:
            pass                 # logged by the manager when the save failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        env = ReplicaEnv.from_environ(os.environ)
        plan = BatchPlan(args.global_batch, env.num_replicas, env.world_size,
                         args.dataset_size, args.seed)
        if args.min_replicas > env.num_replicas:
            raise ConfigError(f"--min-replicas {args.min_replicas} is more than the "
                              f"{env.num_replicas} groups (NUM_REPLICA_GROUPS)")
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import torchft  # noqa: F401
    except ImportError as exc:
        print(f"{PROG}: torchft is not installed ({exc}): pip install torchft", file=sys.stderr)
        return EXIT_USAGE
    try:
        return train(args, env, plan)
    except (CheckpointError, SlurmFTError) as exc:
        print(f"{PROG}: replica {env.replica_id}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except (RuntimeError, TimeoutError, OSError) as exc:
        # torchft gave up: no quorum in time, the lighthouse or the group's store unreachable.
        print(f"{PROG}: replica {env.replica_id} stopped: {_first_line(exc)}",
              file=sys.stderr, flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # torchft's quorum thread may still wait on the lighthouse (up to --quorum-timeout):
    # do not let the interpreter join it.
    os._exit(code)
