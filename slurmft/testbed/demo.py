"""``slurmft demo``: a real multi-node training run loses a node and finishes anyway.

Composition only (like the CLI): it builds a local cluster (slurmft.testbed), submits
``slurmft/examples/train.py`` on N nodes through slurmft's job wrapper (templates/job.sh.j2), starts
``slurmft watch`` as the fast path, waits for a verified checkpoint, takes one node off the
network, and follows the job until it has been rescheduled onto the healthy nodes, resumed from
the latest verified checkpoint and finished. Then it reports a timeline, a summary (detection
time, time to recover, steps lost, seconds at each world size, goodput as ``slurmft.observe.goodput`` defines
it, with the fault-free step time measured on the run's own steps before the fault) and the loss
curve and world size as a PNG and a text table.
Everything it started is stopped, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from slurmft.checkpoint.store import Store
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import ClusterError, SlurmCommandError, SlurmFTError, SlurmParseError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import NodeSet
from slurmft.core.selfcmd import slurmft_argv
from slurmft.observe.events import AuditFile, Decided, Detected
from slurmft.observe.goodput import describe_world_sizes, world_size_seconds
from slurmft.observe.report import RecoverySummary, read_progress, summarize, timeline
from slurmft.recovery.scripts import job_context
from slurmft.render import render
from slurmft.slurm.records import SlurmClient
from slurmft.testbed import Cluster

log = get_logger(__name__)

EXAMPLE_TRAIN = Path(str(files("slurmft") / "examples" / "train.py"))   # package data
#: Per-step mode's training (one torchft replica group): DemoOptions.replicas
EXAMPLE_TRAIN_TORCHFT = Path(str(files("slurmft") / "examples" / "train_torchft.py"))


@dataclass
class DemoOptions:
    name: str = "sft-demo"
    nodes: int = 4                  # nodes the training runs on
    spares: int = 0                 # extra nodes the job holds to replace a lost one
    replicas: int = 0               # per-step mode with torchft: replica groups (0: restart mode)
    warm: bool = False              # slurmft run --warm: ranks forked from a warm Python per node
    launcher: str = "mpirun"        # how the job's supervisor starts the ranks: mpirun or srun
    steps: int = 300
    step_time: float = 0.1          # simulated compute per step on all `nodes` ranks (s); on
                                    # k ranks a step takes nodes/k as long (see sample_time)
    global_batch: int = 48          # samples per step over all ranks (fixed across a resume)
    step_interval: int = 20         # checkpoint every N steps
    fault_after_step: int = 100     # inject once a verified checkpoint at/after this step exists
    fault: str = "link-down"
    fault_node: str = ""            # default: the job's last node (not the batch host)
    watch_interval: float = 1.0
    probe_timeout: float = 2.0
    out_dir: str = "slurmft-demo"
    timeout: float = 600.0          # for the whole run
    keep_cluster: bool = False


@dataclass
class DemoResult:
    job_id: int
    fault_node: str
    initial_nodes: list[str]
    final_nodes: list[str]
    excluded: list[str]
    fault_node_state: str
    fault_node_reason: str
    restarts: int
    final_state: str
    events: dict[str, float]
    summary: RecoverySummary
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()
        return d


Progress = Callable[[str], None]


@dataclass
class _DemoRun:
    """Where one demo run keeps its files, and its job."""

    work: Path
    ckpt_dir: Path
    progress: Path
    client: SlurmClient
    job_id: int = 0


class Demo:
    def __init__(self, options: DemoOptions, progress: Progress | None = None) -> None:
        self.o = options
        self.say = progress or (lambda msg: None)
        self.cluster = Cluster(options.name)
        self._watcher: subprocess.Popen | None = None
        self._started_cluster = False

    # ---- orchestration ---------------------------------------------------------------------

    def run(self) -> DemoResult:
        if not EXAMPLE_TRAIN.is_file():
            raise SlurmFTError(f"{EXAMPLE_TRAIN} not found: reinstall slurmft "
                               "(its package data is missing)")
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return self._run()
        finally:
            self.teardown()
            signal.signal(signal.SIGTERM, old_term)

    def _run(self) -> DemoResult:
        o = self.o
        deadline = time.monotonic() + o.timeout
        if self.cluster.is_up():
            raise ClusterError(f"cluster {o.name} is already up (an earlier demo?): "
                               f"slurmft cluster down --name {o.name}")
        self.say(f"building a {o.nodes}-node Slurm cluster '{o.name}' (network namespaces)...")
        up = self.bring_up()
        self.say(f"  up in {up.seconds:.1f} s: {', '.join(up.nodes)} on {up.subnet}")
        run = self._submit()
        job = self._wait(lambda: _running(run.client.job(run.job_id)), deadline,
                         "the job to start")
        initial_nodes = list(job.nodes)
        fault_node = o.fault_node or next(n for n in reversed(initial_nodes) if n != job.batch_host)
        events = self._inject(run, fault_node, deadline)
        recovered_nodes = self._follow_recovery(run, fault_node, events, deadline)
        job = self._wait(lambda: (j := run.client.job(run.job_id)).has_ended and j, deadline,
                         "the training to finish", report=lambda: self._step_line(run.progress))
        self.say(f"job {run.job_id} {job.state}")
        fn = {n.name: n for n in run.client.nodes()}.get(fault_node)
        records = read_progress(run.progress)
        summary = summarize(records, o.steps, events, end_t=time.time())
        result = DemoResult(
            job_id=run.job_id, fault_node=fault_node, initial_nodes=initial_nodes,
            final_nodes=recovered_nodes,
            excluded=list(NodeSet(job.excluded_nodes)
                          | (NodeSet(initial_nodes) - NodeSet(recovered_nodes))),
            fault_node_state="+".join([fn.state, *fn.flags]) if fn else "",
            fault_node_reason=fn.reason if fn else "", restarts=job.restart_count,
            final_state=job.state, events=events, summary=summary, out_dir=o.out_dir)
        self._write_outputs(result, records, run.work)
        return result

    def _submit(self) -> _DemoRun:
        """Write the wrapper job, submit it and start the watcher on it."""
        o = self.o
        work = self.cluster.shared_dir / "demo"
        run = _DemoRun(work=work, ckpt_dir=work / "checkpoints",
                       progress=work / "progress.jsonl", client=self.cluster.slurm_client())
        work.mkdir(parents=True, exist_ok=True)
        script = work / "job.sh"
        script.write_text(self.job_script(work, run.ckpt_dir, run.progress))
        cp = self.cluster.run(["sbatch", "--parsable", str(script)], timeout=30)
        if cp.returncode != 0:
            raise SlurmFTError(f"sbatch failed: {cp.stderr.strip()}")
        run.job_id = int(cp.stdout.strip().split(";")[0])
        self.say(f"submitted training job {run.job_id} on {o.nodes} nodes ({o.steps} steps, "
                 f"checkpoint every {o.step_interval})")
        self.start_watcher(run.job_id, work / "watch.log")
        self.say(f"slurmft watch is probing the job's nodes every {o.watch_interval:g} s")
        return run

    def _inject(self, run: _DemoRun, fault_node: str, deadline: float) -> dict[str, float]:
        """Wait for a verified checkpoint at ``fault_after_step``, then inject the fault;
        returns the timeline's events (``fault``: when)."""
        o = self.o
        store = Store(run.ckpt_dir)

        def checkpointed() -> bool:
            job = run.client.job(run.job_id)
            if job.has_ended:
                raise SlurmFTError(f"job {run.job_id} ended {job.state} before the fault: "
                                   f"{_last_line(run.work / 'job.out')} "
                                   f"(see {run.work}/job.out)")
            return _verified_at_least(store, o.fault_after_step)

        self._wait(checkpointed, deadline,
                   f"a verified checkpoint at step >= {o.fault_after_step}",
                   report=lambda: self._step_line(run.progress))
        self.say(f"latest verified checkpoint: {store.latest_name()}")
        events: dict[str, float] = {"fault": time.time()}
        self.say(f"FAULT: {o.fault} on {fault_node}")
        self.cluster.fault(fault_node, o.fault)
        return events

    def _follow_recovery(self, run: _DemoRun, fault_node: str, events: dict[str, float],
                         deadline: float) -> list[str]:
        """Follow the job from the fault until it runs again without ``fault_node``, adding
        detected / requeued / running_again (/ excluded) to ``events``; its nodes then."""
        audit = self.cluster.shared_dir / "slurmft" / "audit.jsonl"
        seen_requeue = False
        while True:
            if time.monotonic() > deadline:
                raise SlurmFTError(f"the job did not recover within {self.o.timeout:g} s; "
                                   f"see {run.work}")
            now = time.time()
            since = now - events["fault"]
            self._note_detection(audit, run.job_id, events)
            job = run.client.job(run.job_id)
            if not seen_requeue and (job.restart_count > 0 or job.state != "RUNNING"):
                seen_requeue = True
                events["requeued"] = now
                self.say(f"  +{since:.2f} s  job {run.job_id} is {job.state} "
                         f"(restarts {job.restart_count})")
            if job.state == "RUNNING" and fault_node not in job.nodes:
                self._note_detection(audit, run.job_id, events)   # written before the shrink
                events["running_again"] = now
                if seen_requeue:
                    self.say(f"  +{since:.2f} s  job RUNNING again on {','.join(job.nodes)}")
                else:     # relaunched in its own allocation (--no-kill): it never stopped
                    events["excluded"] = now
                    self.say(f"  +{since:.2f} s  {fault_node} taken out of job {run.job_id}, "
                             f"which keeps running on {','.join(job.nodes)}: the training "
                             "relaunches there")
                return list(job.nodes)
            if job.has_ended:
                raise SlurmFTError(f"job {run.job_id} ended {job.state} instead of being "
                                   "rescheduled")
            time.sleep(0.1)

    def _note_detection(self, audit: Path, job_id: int, events: dict[str, float]) -> None:
        if "detected" in events:
            return
        t = _detection_time(audit, job_id, events["fault"])
        if t is not None:
            events["detected"] = t
            self.say(f"  +{t - events['fault']:.2f} s  slurmft detected the failure")

    # ---- pieces (bench/goodput.py runs its own scenario with them) --------------------------

    def bring_up(self):
        """Build the demo's cluster; ``teardown`` takes it down again, even if this fails
        half-way (unless ``keep_cluster``)."""
        self._started_cluster = True
        return self.cluster.up(nodes=self.o.nodes + self.o.spares)

    def train_command(self, ckpt_dir: Path, progress_path: Path, *,
                      torchft: bool | None = None) -> list[str]:
        """The example training's command: ``train.py``, or ``train_torchft.py`` (``torchft``;
        default: in per-step mode), sized for the demo's nodes, steps and step time."""
        o = self.o
        use_torchft = bool(o.replicas) if torchft is None else torchft
        script = EXAMPLE_TRAIN_TORCHFT if use_torchft else EXAMPLE_TRAIN
        return [sys.executable, str(script), "--steps", str(o.steps),
                "--global-batch", str(o.global_batch),
                "--sample-time", f"{sample_time(o.step_time, o.nodes, o.global_batch):.9g}",
                "--step-interval", str(o.step_interval),
                "--checkpoint-dir", str(ckpt_dir), "--log-jsonl", str(progress_path)]

    def job_script(self, work: Path, ckpt_dir: Path, progress_path: Path,
                   slurmft_cmd: list[str] | None = None, *, lighthouse: str = "") -> str:
        """The rendered job wrapper. ``lighthouse``: per-step mode as one job per replica
        group (one node each, ``render job --group-jobs``), torchft's lighthouse there."""
        o = self.o
        cfg = RescheduleConfig(state_dir=str(self.cluster.shared_dir / "slurmft"), slots=1,
                               launcher=o.launcher, mpirun_args=mpirun_args(self.cluster),
                               ssh_args=f"-F {self.cluster.ssh_config_path}")
        groups = bool(lighthouse)
        train = self.train_command(ckpt_dir, progress_path, torchft=groups or None)
        ctx = job_context(cfg, train_cmd=train, checkpoint_dir=str(ckpt_dir),
                          job_name="slurmft-demo", nodes=o.nodes, work_dir=str(work),
                          output=str(work / "job.out"),
                          slurmft_cmd=slurmft_cmd or slurmft_argv(),
                          reschedule_log=str(work / "reschedule.log"),
                          # a group job holds its group's node; the idle ones are the spares
                          spares=0 if groups else o.spares,
                          replicas=o.nodes if groups else o.replicas,
                          group_jobs=groups, lighthouse=lighthouse, warm=o.warm)
        return render("job.sh.j2", ctx)

    def start_watcher(self, job_id: int | Sequence[int], log_path: Path) -> None:
        """``slurmft watch`` on one job, or on several (per-step mode, one job per group)."""
        ids = [job_id] if isinstance(job_id, int) else list(job_id)
        env = self.cluster.env()
        env["SLURMFT_PROBE_TIMEOUT"] = str(self.o.probe_timeout)
        env["SLURMFT_PROBE_CHECK_SLURMD"] = "1"     # a dead slurmd: drain, keep training
        # A bridge answers ping in well under a millisecond: 0.5 s of silence is a dead link
        # (the watcher re-probes a suspect once before acting, so load spikes do not count).
        env["SLURMFT_PROBE_PING_TIMEOUT"] = str(min(0.5, self.o.probe_timeout))
        jobs = [w for jid in ids for w in ("--job", str(int(jid)))]
        argv = self.cluster.exec_argv([*slurmft_argv(), "-v", "watch", *jobs,
                                       "--interval", str(self.o.watch_interval)])
        with open(log_path, "ab") as fh:
            self._watcher = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                             stderr=subprocess.STDOUT, start_new_session=True)

    def _step_line(self, progress_path: Path) -> str:
        try:
            recs = [r for r in read_progress(progress_path) if r["event"] == "step"]
        except FileNotFoundError:
            return "waiting for the first step"
        if not recs:
            return "waiting for the first step"
        r = recs[-1]
        return f"step {r['step']}/{self.o.steps} loss {r['loss']:.4f} on {r['world_size']} ranks"

    def _wait(self, cond, deadline: float, what: str, report=None, every: float = 5.0):
        next_report = time.monotonic() + every
        while True:
            try:
                value = cond()
            except (SlurmCommandError, SlurmParseError) as exc:  # a transient Slurm hiccup
                log.debug("while waiting for %s: %s", what, exc)
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise SlurmFTError(f"timed out waiting for {what} (demo timeout {self.o.timeout:g} s)")
            if report and time.monotonic() >= next_report:
                self.say(f"  ... {report()}")
                next_report = time.monotonic() + every
            time.sleep(0.2)

    def _write_outputs(self, result: DemoResult, records: list[dict], work: Path) -> None:
        from slurmft.observe.plot import plot_recovery
        out = Path(self.o.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ("progress.jsonl", "job.out", "watch.log", "reschedule.log", "job.sh"):
            if (work / name).exists():
                shutil.copy(work / name, out / name)
                files[name] = str(out / name)
        audit = self.cluster.shared_dir / "slurmft" / "audit.jsonl"
        if audit.exists():
            shutil.copy(audit, out / "audit.jsonl")
            files["audit.jsonl"] = str(out / "audit.jsonl")
        files["loss.png"] = plot_recovery(records, out / "loss.png", result.events,
                                          title=f"slurmft demo: {result.fault_node} lost, job "
                                                f"{result.job_id} resumed")
        (out / "loss.txt").write_text(loss_table(records))
        files["loss.txt"] = str(out / "loss.txt")
        (out / "timeline.txt").write_text(format_timeline(records, result.events))
        files["timeline.txt"] = str(out / "timeline.txt")
        result.files = files
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        files["result.json"] = str(out / "result.json")

    def teardown(self) -> None:
        """Stop the watcher this demo started (its process group) and take down the cluster
        it built, unless ``keep_cluster``. Safe to call twice."""
        if self._watcher is not None and self._watcher.poll() is None:
            try:
                os.killpg(self._watcher.pid, signal.SIGTERM)   # the group we started
                self._watcher.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._watcher.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._started_cluster and not self.o.keep_cluster:
            self.say(f"tearing down cluster '{self.o.name}'")
            self.cluster.down()


# ---- helpers (pure or read-only) ---------------------------------------------------------------

def sample_time(step_time: float, nodes: int, global_batch: int) -> float:
    """``slurmft/examples/train.py --sample-time`` for a step of ``step_time`` s on ``nodes`` ranks:
    each rank computes ``global_batch / nodes`` samples, so on k ranks a step takes nodes/k as
    long."""
    return step_time * nodes / global_batch


def mpirun_args(cluster: Cluster) -> str:
    """mpirun options for the namespace cluster: its SSH config, TCP on the cluster subnet only."""
    subnet = cluster.subnet
    return (f"--allow-run-as-root --mca plm_rsh_args '-F {cluster.ssh_config_path}' "
            f"--mca btl self,tcp --mca btl_tcp_if_include {subnet} "
            f"--mca oob_tcp_if_include {subnet} "
            # The nodes share this machine's cores: ranks waiting in MPI must yield them.
            f"--mca mpi_yield_when_idle 1")


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def _running(job):
    return job if job.state == "RUNNING" and job.nodes else None


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "no output"
    return lines[-1].strip() if lines else "no output"


def _verified_at_least(store: Store, step: int) -> bool:
    name = store.latest_name()
    if not name:
        return False
    info = store.read_manifest(name)
    return info.step >= step


def _detection_time(audit_path: Path, job_id: int, after: float) -> float | None:
    """When slurmft first knew of the failure: the watcher's ``Detected`` or a restart
    decision naming failed nodes, whichever came first (the in-job supervisor sees mpirun
    exit and reschedules in place, sometimes before the watcher's second probe confirms)."""
    times = [event.time for event in AuditFile(audit_path).events()
             if getattr(event, "job_id", None) == job_id and (event.time or 0) >= after
             and (isinstance(event, Detected) or (isinstance(event, Decided) and event.failed))]
    return min(times, default=None)


def loss_table(records: list[dict], every: int = 10) -> str:
    lines = [f"{'step':>6} {'loss':>10} {'ranks':>5}  run"]
    run = 1
    for rec in records:
        if rec["event"] == "resume":
            run += 1
            lines.append(f"{'':>6} {'':>10} {'':>5}  -- resumed from step {rec['from_step']} "
                         f"({rec['checkpoint']}) on {rec['world_size']} ranks --")
        elif rec["event"] == "step" and (rec["step"] % every == 0):
            lines.append(f"{rec['step']:>6} {rec['loss']:>10.5f} {rec['world_size']:>5}  {run}")
    return "\n".join(lines) + "\n"


def format_timeline(records: list[dict], events: dict[str, float]) -> str:
    """The timeline (seconds from the fault), then the seconds spent at each world size."""
    entries = timeline(records, events)
    fault = events.get("fault")
    base = fault if fault is not None else (entries[0].t if entries else 0.0)
    lines = []
    for e in entries:
        lines.append(f"{e.t - base:+9.2f} s  {e.event}{('  ' + e.detail) if e.detail else ''}")
    lines.append(f"World size over time: {describe_world_sizes(world_size_seconds(records))}")
    return "\n".join(lines) + "\n"
