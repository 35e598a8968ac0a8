"""``CommandSlurmClient``: the SlurmClient protocol over squeue/sinfo/scontrol/sbatch.

The runner comes in through the constructor: the real ``SubprocessRunner`` by default, a
``FakeSlurm`` in tests. Every call has a timeout; failures become typed errors carrying
Slurm's own message (see ``slurmft.slurm.parse.error_for``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from slurmft.core.errors import InvalidJobError, SlurmBusyError, SlurmFTError
from slurmft.core.log import get_logger
from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse
from slurmft.slurm.records import JobInfo, NodeInfo, only_node, select_nodes
from slurmft.slurm.runner import CommandResult, RecordingRunner, Runner, SubprocessRunner
from slurmft.slurm.version import SlurmVersion, parse_version

log = get_logger(__name__)

#: How long ``kill_job`` leaves a step's daemons, after their SIGKILL, to tell their srun that
#: the tasks exited, before it kills that srun (in the next step signalled, or the batch
#: script's process group). A daemon whose srun is gone retries 5 times, 0.1 s to 0.8 s apart
#: (22.05 slurmstepd ``_send_srun_resp_msg``): the step, and a requeue waiting on it, ended
#: 2.3 s late.
KILL_GRACE_S = 0.1
#: How many of the newest steps ``kill_job`` signals one at a time (the older ones together).
KILL_ONE_BY_ONE = 4

#: How long a command Slurm answers "try again in a bit" is sent again (``SlurmBusyError``:
#: on 22.05 a job update right after a requeue, while the job's accounting record is set).
BUSY_WAIT_S = 10.0


class CommandSlurmClient:
    """Talks to Slurm by running its commands.

    ``runner``: object with ``run(argv, timeout)``; default ``SubprocessRunner(prefix)``.
    ``timeout``: seconds per command. ``prefix``: argv prepended to every command (e.g.
    ``nsenter --net=...`` to reach a cluster in a namespace); used only by the default runner.
    ``bin_dir``: directory of the Slurm binaries (empty: PATH). ``busy_wait``: seconds a
    command Slurm asks to try again shortly is sent again (0.25 s apart, doubling up to 2 s)
    before its ``SlurmBusyError`` is raised.
    """

    def __init__(self, runner: Runner | None = None, timeout: float = 30.0,
                 prefix: Sequence[str] = (), bin_dir: str = "", *,
                 busy_wait: float = BUSY_WAIT_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.runner: Runner = runner if runner is not None else SubprocessRunner(prefix)
        self.timeout = float(timeout)
        self.bin_dir = bin_dir
        self.busy_wait, self.sleep = busy_wait, sleep

    def recording(self, *, dry_run: bool) -> tuple[CommandSlurmClient, RecordingRunner]:
        """The same client behind a ``RecordingRunner``: reads go through, writes are recorded
        in ``recorder.writes`` (and with ``dry_run`` not run at all)."""
        recorder = RecordingRunner(self.runner, scli.is_write, dry_run=dry_run,
                                   reply=scli.dry_run_reply)
        return type(self)(recorder, self.timeout, bin_dir=self.bin_dir,
                          busy_wait=self.busy_wait, sleep=self.sleep), recorder

    # ------------------------------------------------------------------ plumbing
    def _run(self, argv: list[str], check: bool = True) -> CommandResult:
        waited, delay = 0.0, 0.25
        while True:
            res = self.runner.run(argv, self.timeout)
            if not check or res.returncode == 0:
                return res
            exc = sparse.error_for(argv, res.returncode, res.stderr, res.stdout)
            if not isinstance(exc, SlurmBusyError) or waited + delay > self.busy_wait:
                raise exc
            log.info("Slurm is busy (%s); sending %s again in %.2fs", exc.slurm_message,
                     argv[0] if argv else "the command", delay)
            self.sleep(delay)
            waited, delay = waited + delay, min(2.0, delay * 2)

    # ------------------------------------------------------------------ reads
    def version(self) -> SlurmVersion:
        """The Slurm the commands talk to (``sinfo --version``). Not needed to read the JSON
        (each document names its schema in ``meta``); for reports and release checks."""
        return parse_version(self._run(scli.build_version_argv(self.bin_dir)).stdout)

    def jobs(self) -> list[JobInfo]:
        """All jobs squeue lists (pending, running, recently finished)."""
        return sparse.parse_squeue_json(self._run(scli.build_squeue_argv(self.bin_dir)).stdout)

    def job(self, job_id: int) -> JobInfo:
        """One job: from ``squeue --json`` (filtered here), else ``scontrol show job -o``."""
        job_id = scli.check_job_id(job_id)
        for j in self.jobs():
            if j.job_id == job_id:
                return j
        log.debug("job %s not in squeue; asking scontrol show job", job_id)
        return self.read_job(job_id)

    def read_job(self, job_id: int) -> JobInfo:
        """This one job now, asked of slurmctld alone (``scontrol show job -o <id>``): its
        cost does not grow with the queue, unlike ``job`` (22.05's ``squeue --json`` lists
        every job whatever the filter). Also knows ended jobs squeue no longer lists."""
        job_id = scli.check_job_id(job_id)
        found = sparse.parse_show_job(self._run(scli.build_show_job_argv(job_id, self.bin_dir)).stdout)
        for j in found:
            if j.job_id == job_id:
                return j
        raise InvalidJobError(f"no such job: {job_id}", slurm_message="Invalid job id specified")

    def steps(self, job_id: int) -> list[int]:
        """The job's numbered steps now (e.g. [0, 1] for 42.0 and 42.1), ascending."""
        out = self._run(scli.build_steps_argv(job_id, self.bin_dir)).stdout
        return sparse.parse_step_ids(out, job_id)

    def all_steps(self) -> dict[int, list[int]]:
        """Every job's numbered steps now, in one request (jobs without any are absent)."""
        return sparse.parse_steps_by_job(self._run(scli.build_all_steps_argv(self.bin_dir)).stdout)

    def allocation(self, job_id: int) -> list[str]:
        """The nodes the job holds now (empty once it left the queue), in Slurm's order."""
        out = self._run(scli.build_allocation_argv(job_id, self.bin_dir)).stdout
        return sparse.parse_allocation(out)

    def node_names(self, job: int | JobInfo) -> list[str]:
        """The nodes a job holds (or held), as a list of host names."""
        info = job if isinstance(job, JobInfo) else self.job(job)
        return list(info.nodes)

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeInfo]:
        """All nodes (``sinfo --json``), or only ``names`` in that order (unknown ones skipped)."""
        out = sparse.parse_sinfo_json(self._run(scli.build_sinfo_argv(self.bin_dir)).stdout)
        return select_nodes(out, names)

    def node(self, name: str) -> NodeInfo:
        return only_node(self.nodes([name]), name)

    # ------------------------------------------------------------------ nodes
    def drain(self, nodes: Sequence[str], reason: str) -> None:
        self._run(scli.build_node_update_argv(nodes, "DRAIN", scli.check_reason(reason),
                                              self.bin_dir))

    def down(self, nodes: Sequence[str], reason: str) -> None:
        self._run(scli.build_node_update_argv(nodes, "DOWN", scli.check_reason(reason),
                                              self.bin_dir))

    def resume(self, nodes: Sequence[str]) -> None:
        self._run(scli.build_node_update_argv(nodes, "RESUME", None, self.bin_dir))

    # ------------------------------------------------------------------ jobs
    def hold(self, job_id: int) -> None:
        self._run(scli.build_job_action_argv("hold", job_id, self.bin_dir))

    def release(self, job_id: int) -> None:
        self._run(scli.build_job_action_argv("release", job_id, self.bin_dir))

    def requeue(self, job_id: int) -> None:
        self._run(scli.build_job_action_argv("requeue", job_id, self.bin_dir))

    def requeue_hold(self, job_id: int) -> None:
        self._run(scli.build_job_action_argv("requeuehold", job_id, self.bin_dir))

    def signal_batch(self, job_id: int, signal: str) -> None:
        """Send ``signal`` to the job's batch script (``scancel --batch --signal``)."""
        self._run(scli.build_signal_batch_argv(job_id, signal, self.bin_dir))

    def kill_job(self, job_id: int, steps: Sequence[int] | None = None) -> None:
        """SIGKILL, now, to the job's numbered ``steps`` wherever they run (None: those
        ``squeue --steps`` lists; ``scancel --ctld --signal=KILL 42.1``, then ``42.0``), then to its
        batch script's process group and every step on the batch host (``scancel --batch
        --full --signal=KILL``). The rescheduler requeue-holds the job right after: Slurm ends
        what is left (a cut-off node's share) and the job waits in the queue, not FAILED. A
        job that ended meanwhile is no error: nothing is left to kill.

        Not the whole job's kill (``scancel --signal=KILL --full``, or a requeue alone): Slurm
        ends a running job the polite way, SIGTERM first and SIGKILL only ``KillWait`` (30 s by
        default) later, and mpirun on SIGTERM waits for its daemon on the cut-off node.

        The steps by number first: their SIGKILL reaches every node, not only the batch host.
        One at a time, the newest first, ``KILL_GRACE_S`` apart (the newest ``KILL_ONE_BY_ONE``;
        older ones together): a step's srun often runs in an older step (mpirun's ``srun
        orted`` in the launcher's step) or in the batch script, and a step whose srun died with
        it ended 2.3 s late.

        The batch script's process group next: an srun whose step was killed waits
        ``KillWait`` + 2 s for its task on the cut-off node, then cancels the step by id. Left
        alive (SIGTERM ends the shell; proctrack/linuxproc does not find the orphan), it
        cancelled the requeued run's step 0 -- a requeue numbers steps from 0 again -- and the
        restarted job FAILED, exit 137, 0.5 s after it started (22.05, local cluster, 2 of 11
        runs)."""
        if steps is None:
            try:
                steps = self.steps(job_id)
            except SlurmFTError as e:     # the requeue's SIGTERM still ends them, KillWait later
                log.warning("job %s: steps not listed before the kill (%s); they get SIGTERM "
                            "first", job_id, e)
                steps = []
        newest = sorted(set(steps), reverse=True)        # a launcher's srun runs in an older step
        batches = [[s] for s in newest[:KILL_ONE_BY_ONE]] + [newest[KILL_ONE_BY_ONE:]]
        for batch in filter(None, batches):
            try:
                self.signal_steps(job_id, batch, "KILL")
            except SlurmFTError as e:  # a step that ended meanwhile: the others follow
                log.warning("job %s: SIGKILL to steps %s failed (%s)", job_id, batch, e)
            self.sleep(KILL_GRACE_S)
        try:
            self._run(scli.build_kill_batch_argv(job_id, self.bin_dir))
        except InvalidJobError:       # scancel's word for a job that has ended
            log.info("job %s: ended before its batch script's SIGKILL", job_id)

    def signal_steps(self, job_id: int, steps: Sequence[int], signal: str = "KILL") -> None:
        """``signal`` to the numbered ``steps`` of the job (``scancel --signal=KILL 42.0 42.1``)."""
        if steps:
            self._run(scli.build_signal_steps_argv(job_id, steps, signal, self.bin_dir))

    def cancel(self, job_id: int) -> None:
        """``scancel <id>`` (not part of the SlurmClient protocol; tests and the demo use it)."""
        self._run(scli.build_cancel_argv(job_id, self.bin_dir))

    def update_job(self, job_id: int, *, exclude: Sequence[str] | None = None,
                   num_nodes: tuple[int, int] | None = None, num_tasks: int | None = None,
                   num_cpus: int | None = None, start_now: bool = False,
                   required: Sequence[str] | None = None, comment: str | None = None) -> None:
        """One ``scontrol update JobId=..`` request (most fields need a PENDING job)."""
        self._run(scli.build_update_job_argv(job_id, exclude=exclude, num_nodes=num_nodes,
                                             num_tasks=num_tasks, num_cpus=num_cpus,
                                             start_now=start_now, required=required,
                                             comment=comment, bin_dir=self.bin_dir))

    def expand(self, job_id: int, node: str, partition: str = "", wait: int = 3) -> None:
        """Merge the idle ``node`` into the running job ``job_id`` (Slurm's job expansion:
        ``salloc --no-shell --dependency=expand:JOB`` on it, that helper sized to 0 nodes and
        cancelled, the job sized to ALL). Raises ``SlurmCommandError`` when Slurm refuses
        (no ``permit_job_expansion``, the node taken meanwhile): nothing then changed."""
        res = self._run(scli.build_expand_alloc_argv(job_id, node, partition, wait,
                                                     self.bin_dir))
        try:
            helper = sparse.parse_salloc_granted(res.stderr + res.stdout)
        except SlurmFTError:        # granted, but no id to cancel it by: by its name then
            self._run(scli.build_cancel_spare_helpers_argv(job_id, self.bin_dir), check=False)
            raise
        try:
            self._run(scli.build_resize_argv(helper, "0", self.bin_dir))
        finally:
            self._run(scli.build_cancel_argv(helper, self.bin_dir), check=False)
        # 22.05 merges at the helper's NumNodes=0 and refuses this; later releases want it
        self._run(scli.build_resize_argv(job_id, "ALL", self.bin_dir), check=False)

    def submit(self, script: str, args: Sequence[str] = ()) -> int:
        """``sbatch --parsable``; returns the new job id."""
        res = self._run(scli.build_sbatch_argv(script, args, self.bin_dir))
        return sparse.parse_sbatch_parsable(res.stdout)
