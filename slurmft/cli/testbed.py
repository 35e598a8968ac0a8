"""The local test cluster: ``slurmft cluster up|down|status|exec|fault``, ``slurmft demo`` and
``slurmft inject`` (fault campaigns on a local cluster or, over SSH, at a real site).

Every command that names a local cluster takes ``--backend`` (netns or docker) and gets the
cluster from ``adapters.cluster``: the commands never ask which backend they hold.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from slurmft.cli import adapters
from slurmft.cli.options import (FiniteFloat, LazyChoice, count, echo_json, get_config,
                                 job_id_type)
from slurmft.core.errors import SlurmFTError, UsageError


# The names come from the testbed when first needed: importing it costs every command
# (the epilog included) a tenth of a second.
def _backends() -> tuple[str, ...]:
    from slurmft.testbed.backend import BACKENDS

    return BACKENDS


def _inject_actions() -> tuple[str, ...]:
    from slurmft.testbed.inject import ACTIONS

    return ACTIONS


backend_option = click.option(
    "--backend", type=LazyChoice(_backends), default="netns", show_default=True,
    envvar="SLURMFT_CLUSTER_BACKEND",
    help="netns: network namespaces; docker: containers (env SLURMFT_CLUSTER_BACKEND).")
name_option = click.option("--name", default="sft", envvar="SLURMFT_CLUSTER_NAME",
                           show_default=True, help="Cluster name (env SLURMFT_CLUSTER_NAME).")


def cluster_options(f: Callable) -> Callable:
    """--name and --backend: which local cluster a ``cluster`` command works on."""
    return backend_option(name_option(f))


@click.group("cluster")
def cluster_group() -> None:
    """A real local Slurm/SSH/MPI cluster in network namespaces or containers (root)."""


def _echo_up(target: Any, name: str, res: Any) -> None:
    if res.already_up:
        click.echo(f"cluster {name} already up: {len(res.nodes)} nodes on {res.subnet}")
        return
    daemons: dict[str, list[str]] = {}
    for key, pid in res.started.items():
        host, daemon = key.split(":")
        daemons.setdefault(daemon, []).append(f"{host}={pid}")
    click.echo(f"cluster {name} up in {res.seconds:.2f}s: {len(res.nodes)} nodes on {res.subnet}")
    for daemon, items in daemons.items():
        click.echo(f"  {daemon}: {' '.join(items)}")
    click.echo(f"  ssh config: {target.ssh_config_path}\n  shared dir: {target.shared_dir}")
    click.echo(f"  try: slurmft cluster exec --name {name} -- sinfo")


@cluster_group.command("up")
@click.option("--nodes", "-n", type=int, default=4, show_default=True)
@cluster_options
@click.option("--no-slurm", is_flag=True, help="Probe-only hosts: sshd per node, no Slurm.")
@click.option("--epilog", default="", help="Absolute path for EpilogSlurmctld= in slurm.conf.")
@click.option("--subnet", default=None, help="IPv4 /24 (default: a free one in 10.99.0.0/16).")
@click.option("--slurm", "slurm_release", default=None, metavar="RELEASE",
              envvar="SLURMFT_CLUSTER_SLURM",
              help="docker backend: the Slurm release of the node image, 22.05 (default, "
                   "bookworm), 24.11 (trixie) or 26.05 (sid) (env SLURMFT_CLUSTER_SLURM).")
@click.option("--rest", is_flag=True,
              help="netns backend: also run slurmrestd (JWT auth, unix socket); `cluster "
                   "status` says where its socket and token are.")
@click.option("--json", "as_json", is_flag=True)
def cluster_up(nodes: int, name: str, backend: str, no_slurm: bool, epilog: str,
               subnet: str | None, slurm_release: str | None, rest: bool,
               as_json: bool) -> None:
    """Build the cluster (idempotent: says so if it is already up)."""
    target = adapters.cluster(backend, name)
    if slurm_release and target.backend != "docker":
        raise UsageError("--slurm chooses the docker backend's image: the netns backend runs "
                         "this machine's Slurm (add --backend docker)")
    if rest and target.backend != "netns":
        raise UsageError("--rest: only the netns backend runs slurmrestd (drop --backend)")
    extra: dict[str, Any] = {"slurm_release": slurm_release} if slurm_release else {}
    if rest:
        extra["rest"] = True
    res = target.up(nodes, slurm=not no_slurm, epilog=epilog, subnet=subnet, **extra)
    if as_json:
        echo_json(res.to_dict())
    else:
        _echo_up(target, name, res)


@cluster_group.command("down")
@cluster_options
def cluster_down(name: str, backend: str) -> None:
    """Stop what the cluster started; remove its namespaces, route and state."""
    done = adapters.cluster(backend, name).down()
    click.echo(f"cluster {name} down: removed {', '.join(done)}" if done
               else f"cluster {name} is not up: nothing to do")


def _daemons(ds: dict) -> str:
    return " ".join(f"{d}={v['pid']}({v['state']})" for d, v in ds.items())


@cluster_group.command("status")
@cluster_options
@click.option("--json", "as_json", is_flag=True)
def cluster_status(name: str, backend: str, as_json: bool) -> None:
    """Nodes, addresses, daemon pids (alive or not) and Slurm's view of each node."""
    st = adapters.cluster(backend, name).status()
    if as_json:
        echo_json(st)
        return
    if "subnet" not in st:
        click.echo(f"cluster {name} is not up")
        return
    slurm = f", Slurm {st['slurm_version']}" if st.get("slurm_version") else ""
    click.echo(f"cluster {name}: {'up' if st['up'] else 'BROKEN (run down)'} on {st['subnet']}"
               f"{slurm}, state {st['state_dir']}")
    ctl = st["controller"]
    click.echo(f"  {ctl['name']:<8} {ctl['address']:<15} {_daemons(ctl['daemons'])}")
    for n in st["nodes"]:
        click.echo(f"  {n['name']:<8} {n['address']:<15} link={n['link'] or '?'} "
                   f"slurm={n['slurm_state'] or '-'} {_daemons(n['daemons'])}")


@cluster_group.command("exec", context_settings={"ignore_unknown_options": True,
                                                 "allow_interspersed_args": False})
@cluster_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def cluster_exec(name: str, backend: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the controller namespace (node names resolve; SLURM_CONF set)."""
    adapters.cluster(backend, name).execvpe(list(command))


@cluster_group.command("fault")
@click.argument("node")
@click.argument("action", metavar="FAULT")
@cluster_options
def cluster_fault(node: str, action: str, name: str, backend: str) -> None:
    """Break NODE with FAULT, e.g. link-down, kill-slurmd or freeze-sshd (their undo:
    link-up, restart-slurmd, thaw-sshd); a name the cluster does not know is refused with
    the list of all of them."""
    click.echo(adapters.cluster(backend, name).fault(node, action))


# --- demo ---------------------------------------------------------------------------------------


def _echo_demo(result: Any) -> None:
    """The demo's human report: timeline, what happened to the node, goodput, loss."""
    from slurmft.observe.report import read_progress
    from slurmft.testbed.demo import format_timeline, loss_table

    s = result.summary
    records = read_progress(result.files["progress.jsonl"])
    click.echo("\nTimeline (seconds from the fault):")
    click.echo(format_timeline(records, result.events))
    click.echo(f"Failed node:        {result.fault_node} -> {result.fault_node_state} "
               f"({result.fault_node_reason})")
    click.echo(f"Nodes:              {','.join(result.initial_nodes)} -> "
               f"{','.join(result.final_nodes)}")
    click.echo(f"Detection time:     {s.detection_s} s")
    if "excluded" in result.events:     # relaunched in its own allocation: never stopped
        click.echo(f"Node taken out:     {s.running_again_s} s after the fault (the job kept "
                   "running; the training relaunched on the nodes left)")
    else:
        click.echo(f"Running again:      {s.running_again_s} s after the fault")
    click.echo(f"First step resumed: {s.first_step_after_resume_s} s after the fault")
    click.echo(f"Steps lost:         {s.steps_lost} (resumed from step {s.resumed_from})")
    click.echo(f"Final step:         {s.final_step} of {s.planned_steps - 1}, "
               f"job {result.final_state}")
    if s.goodput is not None:
        click.echo(f"Goodput:            {s.goodput:.1%} ({s.useful_steps} steps x "
                   f"{s.fault_free_step_s:.3f} s fault-free on {s.world_sizes[-1]} ranks = "
                   f"{s.useful_s:.1f} s useful of {s.wall_s:.1f} s)")
    click.echo("\nLoss (every 10th step; full table in loss.txt):")
    click.echo(loss_table(records, every=max(10, s.planned_steps // 20)))
    click.echo(f"Plot: {result.files['loss.png']}   All outputs: {result.out_dir}/")


@click.command("demo")
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(2, 16),
              help="Nodes in the local cluster and the training job.")
@click.option("--steps", default=300, show_default=True, type=count(20),
              help="Training steps.")
@click.option("--step-time", default=0.1, show_default=True, type=FiniteFloat(min=0, max=60),
              help="Simulated compute per step on all --nodes ranks, seconds; on k ranks a "
                   "step takes nodes/k as long (same global batch).")
@click.option("--step-interval", default=20, show_default=True, type=count(1),
              help="Checkpoint every N steps.")
@click.option("--fault-after-step", default=100, show_default=True, type=count(0),
              help="Inject the fault once a verified checkpoint at or after this step exists.")
@click.option("--fault", default="link-down", show_default=True,
              type=click.Choice(["link-down", "kill-slurmd", "kill-job-procs"]),
              help="What happens to the node.")
@click.option("--fault-node", default="", help="Node to break (default: the job's last node).")
@click.option("--name", default="sft-demo", show_default=True, help="Name of the demo cluster.")
@click.option("--out", "out_dir", default="slurmft-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the report, plot and logs go.")
@click.option("--timeout", default=600.0, show_default=True,
              type=FiniteFloat(min=0, min_open=True), help="Give up after this many seconds.")
@click.option("--keep-cluster", is_flag=True, help="Leave the cluster up afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo_cmd(nodes: int, steps: int, step_time: float, step_interval: int,
             fault_after_step: int, fault: str, fault_node: str, name: str, out_dir: str,
             timeout: float, keep_cluster: bool, as_json: bool) -> None:
    """End-to-end recovery demo on a local cluster (root).

    \b
    Builds a real Slurm cluster in network namespaces, trains slurmft/examples/train.py on
    all nodes with checkpoints, breaks one node, and shows slurmft detect it,
    exclude and drain it, and the job resume on the healthy nodes from the latest
    verified checkpoint and finish. Writes a timeline, summary, loss table and
    loss plot (PNG) to --out. Cleans up after itself, also on Ctrl-C.
    """
    from slurmft.testbed.demo import Demo, DemoOptions

    if fault_after_step >= steps - step_interval:
        raise click.BadParameter("must leave room for a checkpoint and a resume before --steps",
                                 param_hint="--fault-after-step")
    opts = DemoOptions(name=name, nodes=nodes, steps=steps, step_time=step_time,
                       step_interval=step_interval, fault_after_step=fault_after_step,
                       fault=fault, fault_node=fault_node, out_dir=out_dir, timeout=timeout,
                       keep_cluster=keep_cluster)
    t0 = time.monotonic()
    result = Demo(opts, progress=lambda m: click.echo(f"[{time.monotonic() - t0:6.1f}s] {m}",
                                                       err=True)).run()
    if as_json:
        echo_json(result.to_dict())
        return
    _echo_demo(result)
    if not result.summary.completed:
        raise SlurmFTError(f"the training did not complete "
                           f"(final step {result.summary.final_step})")


# --- inject -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InjectTargets:
    """Where ``inject`` acts: the cluster's fault(), the Slurm to ask, how to run a command
    on a node, and the state dir its audit line goes to."""

    fault: Callable[[str, str], str] | None
    slurm: Any
    runner: Any
    store_dir: str


def _inject_targets(cfg: Any, action: str, cluster_name: str, backend: str, dry_run: bool,
                    state_dir: str | None) -> InjectTargets:
    """A local cluster (``--cluster NAME --backend B``) or, without a name, the real site."""
    needs_slurm = action != "mask-gpu"
    if not cluster_name:
        return InjectTargets(fault=None, runner=adapters.ssh_node_runner(cfg),
                             slurm=adapters.slurm_client(cfg) if needs_slurm else None,
                             store_dir=cfg.reschedule.state_dir)
    target = adapters.cluster(backend, cluster_name)
    if not dry_run and not target.is_up():
        raise SlurmFTError(f"cluster {cluster_name} is not up")
    return InjectTargets(
        fault=target.fault, runner=adapters.cluster_node_runner(target),
        slurm=adapters.cluster_slurm_client(target, cfg) if needs_slurm else None,
        store_dir=state_dir or adapters.cluster_state_dir(target))


def _echo_injection(res: Any, as_json: bool) -> None:
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(f"{'dry run: ' if res.dry_run else ''}{res.detail}")
    if res.dry_run:
        for argv in res.commands:
            click.echo(f"  {shlex.join(argv)}")
        if res.extra.get("content"):
            click.echo(res.extra["content"], nl=False)


@click.command("inject")
@click.argument("action", type=LazyChoice(_inject_actions))
@click.option("--job", "job_id", type=job_id_type(), required=True, help="Slurm job id.")
@click.option("--node", default="", help="Node to break (default: a random node of the job).")
@click.option("--seed", type=count(0), default=None, help="Seed for the random choices.")
@click.option("--dry-run", is_flag=True, help="Print what it would do (argv); do nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--cluster", "cluster_name", default="",
              help="The local cluster NAME (faults by its fault(), commands on its nodes "
                   "directly); without it: a real site, over SSH (probe.* settings).")
@backend_option
@click.option("--match", default="train.py", show_default=True,
              help="kill-rank/hang/limit-memory: pgrep -f pattern of the training processes.")
@click.option("--iface", default="", help="link-down over SSH: the node's interface.")
@click.option("--duration", type=count(1, 86400), default=60, show_default=True,
              help="link-down over SSH: seconds until the link comes back up by itself.")
@click.option("--gpu", type=count(0, 1023), default=None, help="mask-gpu: GPU to hide.")
@click.option("--gpus", type=count(1, 1024), default=None,
              help="mask-gpu: GPUs the job sees now (default: from the job's env file).")
@click.option("--mb", type=count(1), default=None,
              help="limit-memory: memory.max in MiB.")
@click.option("--undo", is_flag=True,
              help="limit-memory: remove the job's slurmft-inject cgroups; mask-gpu: remove "
                   "the env file; hang: SIGCONT the stopped ranks.")
@click.option("--checkpoint-dir", default=None,
              help="mask-gpu: the job's CHECKPOINT_PATH (default: reschedule.checkpoint_dir "
                   "or the job's retry record).")
@click.option("--state-dir", default=None,
              help="Where audit.jsonl goes (reschedule.state_dir; with --cluster: the "
                   "cluster's).")
@click.option("--timeout", type=FiniteFloat(min=0.1), default=10.0, show_default=True,
              help="Seconds for each command on the node.")
@click.pass_context
def inject_cmd(ctx: click.Context, action: str, job_id: int, node: str, seed: int | None,
               dry_run: bool, as_json: bool, cluster_name: str, backend: str, match: str,
               iface: str, duration: int, gpu: int | None, gpus: int | None, mb: int | None,
               undo: bool, checkpoint_dir: str | None, state_dir: str | None,
               timeout: float) -> None:
    """Inject a fault into a running job, for fault-tolerance campaigns.

    \b
    kill-rank     SIGKILL one random process matching --match on a node of
                  the job (pgrep -f, only processes on that node).
    hang          SIGSTOP one random training rank matching --match on a
                  node (never mpirun, srun, orted, slurmft run or a shell):
                  it hangs, its peers block in their next collective.
                  --undo: SIGCONT to the job's matching processes on --node
                  (default: every node of the job).
    kill-slurmd   --cluster: the cluster's fault(); else over SSH:
                  pkill -KILL -x slurmd.
    link-down     --cluster: the node's link down (undo: link-up). Over SSH it
                  needs --iface and undoes itself after --duration s:
                  setsid -f sh -c 'ip link set dev IF down; sleep S; ...up'.
    link-up, stop-sshd, start-sshd, freeze-sshd, thaw-sshd
                  --cluster only: over SSH they could not be undone.
    limit-memory  --mb M: move the node's matching processes into a new
                  cgroup v2 slurmft-inject-JOB-N with memory.max=M MiB
                  (--undo removes it). Fails, saying why, without a writable
                  cgroup v2 with the memory controller enabled.
    slow, unslow  --cluster only: stop one training rank on the node half of
                  every 0.1 s (SIGSTOP/SIGCONT by a helper process): a
                  straggler at about half speed; unslow ends it.
    mask-gpu      --gpu I [--gpus N]: write CUDA_VISIBLE_DEVICES without I to
                  $CHECKPOINT_PATH/.slurmft-restart.env, which job.sh sources
                  at (re)start (takes effect on the job's next restart).

    \b
    Every injection is logged (logger slurmft.testbed.inject) and appended to
    audit.jsonl in the state dir (event "inject").
    """
    from slurmft.testbed.inject import InjectRequest, Injector

    cfg = get_config(ctx, reschedule={"state_dir": state_dir, "checkpoint_dir": checkpoint_dir})
    where = _inject_targets(cfg, action, cluster_name, backend, dry_run, state_dir)
    store = adapters.state_store(cfg, where.store_dir)
    ckpt = cfg.reschedule.checkpoint_dir
    if action == "mask-gpu" and not ckpt:
        ckpt = store.load(job_id).checkpoint_dir
    req = InjectRequest(action=action, job_id=job_id, node=node, seed=seed, dry_run=dry_run,
                        match=match, iface=iface, duration=duration, gpu=gpu, gpus=gpus, mb=mb,
                        undo=undo, checkpoint_dir=ckpt)
    res = Injector(slurm=where.slurm, runner=where.runner, fault=where.fault,
                   store=store, timeout=timeout, cluster_name=cluster_name).inject(req)
    _echo_injection(res, as_json)
