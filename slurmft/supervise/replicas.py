"""Per-step mode: ``slurmft run --replicas R`` with torchft.

The supervisor starts torchft's lighthouse on the batch host and launches R replica groups,
each a Slurm job step (srun) on its own nodes, with its own store address and replica id.
torchft keeps the groups that survive a loss training (each step's quorum is whoever is
alive); this module is what puts a lost group back:

* a group whose process exits (a rank crashed) is relaunched on its own nodes, after
  ``slurmft reschedule --in-place`` probed the nodes (a node that failed is taken out of the
  job, DOWN then DRAIN with a reason, as in restart mode);
* a group that lost a node (its step failed, or SIGUSR2: slurmft took the node out) is
  relaunched with a spare (a node of the allocation no group uses) in the lost node's place;
  with no spare left the run goes on with one group less;
* the new group joins by torchft's live recovery from a healthy peer; the others are never
  stopped;
* if no group survives, every group is relaunched: each resumes from its latest verified
  checkpoint (the training's checkpoint manager keeps saving for exactly that case);
* when no group can run any more (retry budget spent, no nodes) the job is handed to a
  requeue, as in restart mode.

``split_groups``, ``lighthouse_argv``, ``group_argv`` and ``group_env`` are pure;
``ReplicaSupervisor`` reuses the restart-mode supervisor's signals, Slurm view, in-place
reschedule and hand-off, and changes only the loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slurmft.checkpoint.peerloss import PEER_LOST_SIGNAL_NAME
from slurmft.core.errors import ExitCode, SlurmFTError
from slurmft.core.log import failed_extra, get_logger
from slurmft.core.nodeset import fold
from slurmft.supervise.launch import (
    ENV_LIGHTHOUSE,
    ENV_NUM_REPLICAS,
    ENV_REPLICA_ID,
    LaunchSettings,
    choose_nodes,
    job_nodes,
    lighthouse_command,
    slurm_env,
    torchft_env,
)
from slurmft.supervise.processes import Launched
from slurmft.supervise.supervisor import RunState, Supervisor, exit_code

log = get_logger(__name__)

#: Starts of torchft's lighthouse per job before per-step mode gives up (a port taken, a
#: broken install: restarting it for ever would only fill the log).
MAX_LIGHTHOUSE_STARTS = 5


@dataclass(frozen=True)
class ReplicaSettings:
    """The per-step mode's settings; the same for the whole job."""

    replicas: int
    lighthouse_cmd: tuple[str, ...] = ("torchft_lighthouse",)
    lighthouse_port: int = 29510
    store_port: int = 29600               # group i's store listens on store_port + i
    min_replicas: int = 1                 # the lighthouse's quorum needs this many groups
    join_timeout_ms: int = 1000           # how long a quorum waits for groups still joining
    quorum_tick_ms: int = 100
    heartbeat_timeout_ms: int = 2000      # a group silent this long is out of the quorum

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if not 1 <= self.min_replicas <= self.replicas:
            raise ValueError(f"min_replicas must be in [1, {self.replicas}]")
        for port in (self.lighthouse_port, self.store_port, self.store_port + self.replicas):
            if not 1024 <= port <= 65535:
                raise ValueError(f"port {port} is not in [1024, 65535]")
        if self.lighthouse_port in range(self.store_port, self.store_port + self.replicas):
            raise ValueError(f"the lighthouse port {self.lighthouse_port} is one of the "
                             f"groups' store ports {self.store_port}-"
                             f"{self.store_port + self.replicas - 1}")


def split_groups(nodes: Sequence[str], replicas: int) -> list[list[str]]:
    """``nodes`` in ``replicas`` groups of equal size, in order; an error that says what to
    submit when they do not divide."""
    if replicas < 1 or len(nodes) < replicas or len(nodes) % replicas:
        raise SlurmFTError(f"{len(nodes)} training node(s) do not split into {replicas} "
                           f"replica groups of equal size: submit with a multiple of "
                           f"{max(1, replicas)} nodes (plus the spares)")
    size = len(nodes) // replicas
    return [list(nodes[i * size:(i + 1) * size]) for i in range(replicas)]


def lighthouse_argv(rs: ReplicaSettings) -> list[str]:
    """torchft's lighthouse, listening on every address of the batch host."""
    return lighthouse_command(rs.lighthouse_cmd, rs.lighthouse_port, rs.min_replicas,
                              rs.join_timeout_ms, rs.quorum_tick_ms, rs.heartbeat_timeout_ms)


def group_argv(settings: LaunchSettings, replica: int, nodes: Sequence[str]) -> list[str]:
    """One replica group's job step. No ``--no-kill``: a group whose node is lost ends (its
    peers go on without it); ``--kill-on-bad-exit``: a crashed rank ends its group."""
    return ["srun", "--mpi=none", "--overlap", "--kill-on-bad-exit=1",
            f"--job-name=slurmft-replica-{int(replica)}", f"--nodes={len(nodes)}",
            f"--nodelist={fold(nodes)}", f"--ntasks-per-node={settings.slots}",
            *settings.train_cmd]


def group_env(base: Mapping[str, str], rs: ReplicaSettings, replica: int,
              nodes: Sequence[str], lighthouse_host: str, slots: int) -> dict[str, str]:
    """The environment of group ``replica``: torchft's lighthouse address, its replica id,
    its own store (its first node, a port of its own) and Slurm's view of its nodes."""
    env = dict(base)
    env.update(slurm_env(nodes, slots))
    env.update(torchft_env(f"http://{lighthouse_host}:{rs.lighthouse_port}", replica,
                           rs.replicas, nodes, rs.store_port + int(replica)))
    return env


def replace_lost(group: Sequence[str], allocation: Sequence[str], busy: Sequence[str],
                 benched: Sequence[str] = ()) -> list[str] | None:
    """The group's nodes for its relaunch: those still in ``allocation``, each lost one
    replaced by a free node (in the allocation, used by no other group, not benched), in
    allocation order. None when there are not enough free nodes."""
    here = set(allocation)
    kept = [n for n in group if n in here and n not in set(benched)]
    free = [n for n in allocation if n not in set(busy) and n not in set(kept)
            and n not in set(benched)]
    missing = len(group) - len(kept)
    if missing > len(free):
        return None
    return kept + free[:missing]


@dataclass
class _Group:
    replica: int
    nodes: list[str]
    proc: Launched | None = None
    launches: int = 0
    done: bool = False
    retired: bool = False        # no nodes or no budget left for it: the run goes on without it
    lost_node: bool = False      # a node of it left the job (ended on SIGUSR2, or its step ended)
    history: list[int] = field(default_factory=list)    # exit codes


class ReplicaSupervisor(Supervisor):
    """Runs R torchft replica groups of one job to the end; ``run()`` returns the exit code."""

    def __init__(self, *args, replica: ReplicaSettings, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replica = replica
        self.groups: list[_Group] = []
        self.lighthouse: Launched | None = None
        self.lighthouse_starts = 0

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        o, rs = self.options, self.replica
        try:
            o.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlurmFTError(f"cannot create the checkpoint directory {o.checkpoint_dir}: "
                               f"{exc.strerror}") from None
        allocation = job_nodes(self.environ)
        nodes = choose_nodes(allocation, [], self._world_nodes(allocation))
        self.groups = [_Group(i, g) for i, g in enumerate(split_groups(nodes, rs.replicas))]
        self._start_lighthouse()
        for g in self.groups:
            self._launch_group(g)
        try:
            return self._supervise()
        finally:
            self._stop_lighthouse()

    def _supervise(self) -> int:
        o = self.options
        while True:
            if self._stop_signal is not None:
                rc = self._stop_all()
                self._to(RunState.STOPPED, f"signal {self._stop_signal}", rc=rc)
                return rc if rc != 0 else 128 + int(self._stop_signal)
            if self.lighthouse is not None and self.lighthouse.poll() is not None:
                rc = exit_code(self.lighthouse.poll())
                if self.lighthouse_starts >= MAX_LIGHTHOUSE_STARTS:
                    log.error("job %s: torchft's lighthouse exited with %s, %s times: per-step "
                              "mode cannot go on (is its port %s taken? see the job's output)",
                              o.job_id, rc, self.lighthouse_starts, self.replica.lighthouse_port,
                              extra={"job": str(o.job_id)})
                    for g in self.groups:
                        if g.proc is not None:
                            self._end(g.proc)
                    self._to(RunState.STOPPED, "torchft's lighthouse keeps exiting", rc=1)
                    return 1
                log.error("job %s: torchft's lighthouse exited with %s; starting it again",
                          o.job_id, rc, extra={"job": str(o.job_id)})
                self._start_lighthouse()
            if self._relaunch_asked:
                self._relaunch_asked = False
                self._end_groups_off_the_allocation()
            if self._save_asked:
                self._save_asked = False
                self._signal_training("USR1")
            if self.refill is not None:
                self.refill.poll()              # a used spare back, for the next lost group
            failed = self._collect_exits()
            live = [g for g in self.groups if not (g.done or g.retired)]
            if self.state is RunState.STALE:
                return 1
            if not live and any(g.done for g in self.groups):
                self._to(RunState.DONE, "every replica group finished", rc=0)
                return 0
            if failed:
                if not self._recover(failed):
                    rc = max((g.history[-1] for g in failed if g.history), default=1) or 1
                    self._hand_off(rc)
                    return rc
            self.sleep(o.poll_interval)

    def _collect_exits(self) -> list[_Group]:
        """Groups whose step exited since the last look: done (0) or failed."""
        failed = []
        for g in self.groups:
            if g.proc is None or g.done or g.retired:
                continue
            rc = exit_code(g.proc.poll())
            if rc is None:
                continue
            g.proc = None
            g.history.append(rc)
            told = g.lost_node           # ended on SIGUSR2: the others were told then
            g.lost_node = g.lost_node or bool(self._gone_from_the_job(g.nodes, rc))
            if g.lost_node:              # its node left the job: whatever srun said
                rc = rc or 1
                if not told and any(o.proc is not None for o in self.groups):
                    # before SIGUSR2 came: the others wait in the step for it, tell them now
                    self._signal_training(PEER_LOST_SIGNAL_NAME)
            if rc == 0:
                g.done = True
                self._emit(g, RunState.DONE, "replica group finished", rc=0)
                continue
            self._emit(g, RunState.ASKING, f"replica group {g.replica} exited with {rc}", rc=rc)
            log.warning("job %s: replica group %s on %s exited with %s; the other groups train "
                        "on", self.options.job_id, g.replica, fold(g.nodes), rc,
                        extra={"job": str(self.options.job_id)})
            failed.append(g)
        return failed

    def _recover(self, failed: list[_Group]) -> bool:
        """Probe and relaunch the failed groups; False when no group can run any more."""
        o = self.options
        if all(g.lost_node for g in failed) and self._same_run():
            # their nodes are out of the job already, the relaunch counted by whoever took
            # them out (slurmft's reschedule): asking again would count it twice
            answer = 0
        else:
            answer = self._ask_in_place(max(g.history[-1] for g in failed), hung=False)
            failed = failed + self._collect_exits()  # died meanwhile: the same probe serves
        for g in failed:
            g.lost_node = False
        if answer == ExitCode.STALE_COPY:
            # Slurm requeued the job while this copy was cut off: it runs elsewhere now.
            log.warning("job %s runs elsewhere since its requeue; this copy stops", o.job_id,
                        extra={"job": str(o.job_id)})
            for g in self.groups:
                if g.proc is not None:
                    self._end(g.proc)
                g.retired = True
            self._to(RunState.STALE, "Slurm requeued the job since this copy started")
            return True
        if answer == 0 and not any(g.proc is not None for g in self.groups):
            log.error("job %s: no replica group survived; every group restarts from its "
                      "latest verified checkpoint", o.job_id, extra={"job": str(o.job_id)})
        if answer != 0:
            for g in failed:
                self._retire(g, "slurmft reschedule refused a relaunch (retry budget spent or "
                                "the batch host failed)")
            return any(not (g.done or g.retired) for g in self.groups)
        allocation = self._allocation()
        if not allocation:
            return False
        if any(g.done for g in self.groups):
            # The training is over for the group that finished: a group started now would
            # train alone from its own checkpoint and redo steps the run already has.
            for g in failed:
                self._retire(g, "another replica group finished the training")
            return True
        for g in failed:
            busy = [n for other in self.groups if other is not g and not other.retired
                    for n in other.nodes]
            nodes = replace_lost(g.nodes, allocation, busy, self.benched)
            if nodes is None:
                self._retire(g, f"no spare left for the node(s) of replica group {g.replica} "
                                f"that left the job")
                continue
            swapped = sorted(set(nodes) - set(g.nodes))
            if swapped:
                lost = sorted(set(g.nodes) - set(nodes))
                log.warning("job %s: replica group %s: spare(s) %s in place of %s", o.job_id,
                            g.replica, fold(swapped), fold(lost),
                            extra={"job": str(o.job_id), **failed_extra(lost[0])})
            g.nodes = nodes
            self._launch_group(g, relaunch=True)
        return any(not (g.done or g.retired) for g in self.groups)

    def _retire(self, g: _Group, why: str) -> None:
        g.retired = True
        self._emit(g, RunState.STOPPED, why)
        log.error("job %s: replica group %s is not relaunched: %s; the run goes on with %s "
                  "group(s)", self.options.job_id, g.replica, why,
                  sum(1 for x in self.groups if not (x.retired or x.done)),
                  extra={"job": str(self.options.job_id)})

    def _end_groups_off_the_allocation(self) -> None:
        """SIGUSR2: slurmft took nodes out of the job. A group on such a node is ended; the
        next look relaunches it with a spare. Groups whose nodes all stay train on: they are
        told to end the step they wait in (``PEER_LOST_SIGNAL``), nothing else."""
        allocation = set(self._allocation())
        if not allocation:
            return
        live = [g for g in self.groups if g.proc is not None]
        lost = [g for g in live if not set(g.nodes) <= allocation]
        if lost and len(lost) < len(live):
            # the other groups wait in the step's collective for the lost one until their
            # timeout (a host cut off sends no reset): tell them first to end the step now
            # (slurmft.checkpoint.peerloss); the lost groups' steps get it too, harmlessly
            self._signal_training(PEER_LOST_SIGNAL_NAME)
        for g in lost:
            log.warning("job %s: %s left the job; ending replica group %s", self.options.job_id,
                        fold(sorted(set(g.nodes) - allocation)), g.replica,
                        extra={"job": str(self.options.job_id)})
            self._end(g.proc)
            g.lost_node = True

    # ------------------------------------------------------------------ processes
    def _launch_group(self, g: _Group, *, relaunch: bool = False) -> None:
        self.launches += 1
        g.launches += 1
        env = group_env(self._launch_env(g.nodes), self.replica, g.replica, g.nodes,
                        self.options.here, self.settings.slots)
        state = RunState.RELAUNCHING if relaunch else RunState.LAUNCHING
        self._emit(g, state, f"replica group {g.replica} on {len(g.nodes)} node(s)")
        g.proc = self.processes.start(group_argv(self.settings, g.replica, g.nodes), env)
        self._emit(g, RunState.RUNNING, f"srun pid {g.proc.pid}")

    def _start_lighthouse(self) -> None:
        self.lighthouse_starts += 1
        self.lighthouse = self.processes.start(lighthouse_argv(self.replica), self.environ)
        log.info("job %s: torchft lighthouse at http://%s:%s (pid %s)", self.options.job_id,
                 self.options.here, self.replica.lighthouse_port, self.lighthouse.pid,
                 extra={"job": str(self.options.job_id)})

    def _stop_lighthouse(self) -> None:
        if self.lighthouse is not None and self.lighthouse.poll() is None:
            self._end(self.lighthouse)

    def _stop_all(self) -> int:
        """Slurm stops the job: it signals the steps itself; wait for every group."""
        rcs = [exit_code(g.proc.wait()) for g in self.groups if g.proc is not None]
        return max((rc for rc in rcs if rc is not None), default=0)

    def _emit(self, g: _Group, state: RunState, reason: str, *, rc: int | None = None) -> None:
        self._to(state, reason, nodes=g.nodes, rc=rc, launch=g.launches, replica=g.replica)


__all__ = ["ENV_LIGHTHOUSE", "ENV_NUM_REPLICAS", "ENV_REPLICA_ID", "ReplicaSettings",
           "ReplicaSupervisor", "group_argv", "group_env", "lighthouse_argv", "replace_lost",
           "split_groups"]
