"""The warm pool (``slurmft.supervise.warm``): a real server process and real clients on this
machine, with a made-up job id and node name (no Slurm, no MPI: nothing is preloaded but a
module of the standard library)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

from slurmft.core.selfcmd import Target, python_target
from slurmft.supervise.warm import socket_name

PY = sys.executable


@pytest.fixture
def pool(tmp_path):
    """A pool server for a job id of its own; yields the environment its clients need."""
    env = {**os.environ, "SLURM_JOB_ID": str(900000 + os.getpid() % 1000),
           "SLURMD_NODENAME": f"test-{uuid.uuid4().hex[:8]}"}
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "serve", "--preload",
                               "json"], env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(500):
        if b"ready" in (tmp_path / "server.log").read_bytes():
            break
        time.sleep(0.01)
    else:
        server.kill()
        pytest.fail((tmp_path / "server.log").read_text())
    yield {**env, "_POOL_PID": str(server.pid)}
    server.terminate()
    server.wait(10)
    log.close()


def script(tmp_path, body: str) -> str:
    path = tmp_path / f"s{uuid.uuid4().hex[:6]}.py"
    path.write_text(body)
    return str(path)


def client(env, cmd, **kw):
    return subprocess.run([PY, "-m", "slurmft.supervise.warm", "run", "--", *cmd], env=env,
                          capture_output=True, text=True, timeout=60, **kw)


def test_only_plain_python_commands_start_warm():
    assert python_target([PY, "t.py", "--x"]) == Target(PY, "path", "t.py", ("--x",))
    assert python_target(["python3.11", "-m", "pkg.mod", "a"]) == Target(
        "python3.11", "module", "pkg.mod", ("a",))
    assert python_target([PY, "-u", "t.py"]) is None           # interpreter options: cold
    assert python_target(["bash", "t.sh"]) is None
    assert python_target([PY]) is None and python_target([PY, "-m"]) is None
    assert socket_name("12", "node1").startswith("\0")         # abstract: per network namespace


def test_a_rank_runs_forked_from_the_server_with_its_own_env_cwd_and_output(pool, tmp_path):
    env = {**pool, "ONLY_IN_CLIENT": "yes"}
    path = script(tmp_path, "import os, sys, json\n"
                            "print(os.environ['ONLY_IN_CLIENT'], os.getcwd(), sys.argv[1:],\n"
                            "      'json' in sys.modules, __name__, os.getppid())\n"
                            "print('err', file=sys.stderr)\n"
                            "sys.exit(3)\n")
    r = client(env, [PY, path, "a b", "c"], cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    words = r.stdout.split()
    assert words[:2] == ["yes", str(tmp_path)] and "['a b', 'c']" in r.stdout
    assert words[-3:-1] == ["True", "__main__"]          # preloaded in the server, as __main__
    assert int(words[-1]) != os.getpid()                 # a child of the server, not of ours
    assert r.stderr.strip() == "err"


def test_an_exception_is_printed_and_exits_1(pool, tmp_path):
    r = client(pool, [PY, script(tmp_path, "raise ValueError('boom')\n")])
    assert r.returncode == 1 and "ValueError: boom" in r.stderr


def test_a_module_runs_as_main(pool, tmp_path):
    (tmp_path / "warmmod_t.py").write_text("import sys\nprint('mod', sys.argv[1:])\n")
    r = client(pool, [PY, "-m", "warmmod_t", "x"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "mod ['x']", r.stderr


def test_signals_reach_the_rank_and_a_killed_client_takes_it_along(pool, tmp_path):
    pidfile = tmp_path / "pid"
    path = script(tmp_path, "import os, signal, sys, time\n"
                            f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                            "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
                            "time.sleep(60)\n")
    c = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "run", "--", PY, path], env=pool)
    wait_file(pidfile)
    c.send_signal(signal.SIGUSR1)                    # forwarded: the rank exits 42
    assert c.wait(20) == 42
    pidfile.unlink()
    c = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "run", "--", PY, path], env=pool)
    wait_file(pidfile)
    rank = int(pidfile.read_text())
    c.kill()                                         # SIGKILL: nothing to forward
    c.wait(10)
    for _ in range(500):                             # the server kills the rank
        if not os.path.exists(f"/proc/{rank}") or _zombie(rank):
            break
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{rank}") or _zombie(rank)


def test_a_rank_killed_by_a_signal_kills_its_client_the_same_way(pool, tmp_path):
    r = client(pool, [PY, script(tmp_path, "import os, signal\n"
                                           "os.kill(os.getpid(), signal.SIGTERM)\n")])
    assert r.returncode == -signal.SIGTERM


def test_without_a_server_the_command_runs_cold(tmp_path):
    env = {**os.environ, "SLURM_JOB_ID": "1", "SLURMD_NODENAME": f"none-{uuid.uuid4().hex}"}
    path = script(tmp_path, "import os, sys\nprint(os.getppid())\nsys.exit(5)\n")
    r = client(env, [PY, path])
    assert r.returncode == 5 and r.stdout.strip()
    r = client({k: v for k, v in env.items() if k != "SLURM_JOB_ID"}, [PY, path])
    assert r.returncode == 5                         # not in a job: cold too


def test_a_client_that_finds_no_server_notes_its_node_for_the_supervisor(tmp_path, pool):
    node = f"none-{uuid.uuid4().hex[:8]}"
    missing = tmp_path / "missing"
    missing.mkdir()
    env = {**os.environ, "SLURM_JOB_ID": "1", "SLURMD_NODENAME": node,
           "SLURMFT_WARM_MISSING_DIR": str(missing)}
    path = script(tmp_path, "import sys; sys.exit(5)\n")
    assert client(env, [PY, path]).returncode == 5                  # cold, as before
    assert [p.name for p in missing.iterdir()] == [node]
    # a server that answers (even one that refuses another interpreter) is not "gone"
    r = client({**pool, "SLURMFT_WARM_MISSING_DIR": str(missing)}, [PY, path])
    assert r.returncode == 5 and [p.name for p in missing.iterdir()] == [node]


def test_another_interpreter_or_a_shell_command_runs_cold(pool, tmp_path):
    r = client(pool, ["sh", "-c", "echo cold; exit 4"])
    assert r.returncode == 4 and r.stdout.strip() == "cold"
    r = client(pool, [PY, "-c", "import sys; sys.exit(6)"])   # an option: cold unasked
    assert r.returncode == 6
    system = "/usr/bin/python3"                      # another interpreter: the server refuses
    if not os.path.exists(system) or os.path.samefile(system, PY):
        pytest.skip("no second Python on this machine")
    r = client(pool, [system, script(tmp_path, "import sys; print(sys.executable)\n")])
    assert r.returncode == 0 and r.stdout.strip() == system


def wait_file(path, seconds=20.0):
    for _ in range(int(seconds / 0.01)):
        if path.exists() and path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


# ---- the supervisor's side (fakes: no processes, no Slurm) ---------------------------------------

def warm_supervisor(tmp_path, *, launches, allocations=(), pool_shows=True, launch_from="batch",
                    spares=0):
    from slurmft.supervise.launch import LaunchSettings
    from slurmft.supervise.supervisor import RunOptions, Supervisor
    from tests.unit.test_supervisor import FakeProcesses, FakeSlurm

    class PoolSlurm(FakeSlurm):
        """Slurm shows the pool's step (id 0) once its srun started."""

        def steps(self, job_id):
            started = any("serve" in argv or "serve" in (text or "")
                          for argv, _env, text in procs.started)
            return ([0] if started and pool_shows else []) + list(self.step_ids)

    procs = FakeProcesses(launches=[[None], *launches])    # the pool's srun never ends
    slurm = PoolSlurm(allocations=list(allocations), step_ids=[])
    opts = RunOptions(job_id=7, checkpoint_dir=tmp_path / "ck", here="node1", cwd=str(tmp_path),
                      slurmft_cmd=("slurmft",), reschedule_log=tmp_path / "r.log",
                      kill_grace=0.0, warm_preload=("torch", "mpi4py"), spares=spares)
    sup = Supervisor(LaunchSettings(train_cmd=(PY, "train.py", "--x"), launch_from=launch_from,
                                    warm=True),
                     opts, slurm, procs, emit=lambda e: None,
                     environ={"SLURM_JOB_NODELIST": "node[1-3]"},
                     sleep=lambda s: None, clock=iter(range(10**6)).__next__)
    return sup, procs, slurm


def test_warm_run_starts_the_pool_on_every_node_and_ranks_through_it(tmp_path):
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[None, 255], [0]],
                                        allocations=[["node2", "node3"]])
    slurm.step_ids = [1]                                 # the first launch's step
    times = iter([100.0, 100.0])                         # pool up, first launch; then later
    sup.pool.clock = lambda: next(times, 200.0)
    assert sup.run() == 0
    pool_argv, pool_env, _ = procs.started[0]
    assert pool_argv[:1] == ["srun"] and "--overlap" in pool_argv and "--no-kill" in pool_argv
    assert "--nodes=3" in pool_argv and "--nodelist=node[1-3]" in pool_argv
    assert pool_argv[-6:] == [PY, "-m", "slurmft.supervise.warm", "serve", "--preload",
                              "torch,mpi4py"]
    assert sup.pool.steps == frozenset({0})
    first, second = procs.started[1], procs.started[2]
    assert first[0][-8:] == [PY, "-m", "slurmft.supervise.warm", "run", "--", PY, "train.py",
                             "--x"]
    assert first[1]["SLURMFT_WARM_WAIT"] == "30" and second[1]["SLURMFT_WARM_WAIT"] == "0"
    # the relaunch stopped the training's step only, never the pool's
    assert slurm.killed == [[1]]


def test_a_launch_waits_for_a_server_still_importing_and_only_for_the_rest_of_its_imports():
    """A node the refill took in 8 s ago: its server is importing still, so the launch's
    clients wait up to 22 s more for it (one that listens already is used at once); on a node
    whose server is old, none is coming (it died): no wait, a cold start at once."""
    from slurmft.supervise.pool import WarmPool

    now = [100.0]
    pool = WarmPool(7, PY, ("torch",), processes=None, steps=lambda job: [],
                    sleep=lambda s: None, clock=lambda: now[0])
    pool.started_at = {"node1": 0.0, "node2": 0.0, "node4": 92.0}
    assert pool.env(["node1", "node2", "node4"]) == {"SLURMFT_WARM_WAIT": "22"}
    assert pool.env(["node1", "node2"]) == {"SLURMFT_WARM_WAIT": "0"}
    now[0] = 130.0
    assert pool.env(["node1", "node4"]) == {"SLURMFT_WARM_WAIT": "0"}


def test_dead_servers_are_the_nodes_noted_but_not_those_whose_server_is_on_its_way(tmp_path):
    from slurmft.supervise.pool import WarmPool

    now = [100.0]
    missing = tmp_path / "ck" / ".slurmft-warm" / "7"
    pool = WarmPool(7, PY, ("torch",), processes=None, steps=lambda job: [],
                    sleep=lambda s: None, clock=lambda: now[0], missing_dir=missing)
    pool._reset_missing()
    assert pool.env(["node1"])["SLURMFT_WARM_MISSING_DIR"] == str(missing)
    pool.started_at = {"node1": 0.0, "node2": 0.0, "node3": 90.0}
    for name in ("node2", "node3", "bad/../name"):
        (missing / name.replace("/", "_")).touch()
    assert pool.dead_servers() == ["node2"]          # node3's started 10 s ago: coming
    assert list(missing.iterdir()) == [] and pool.dead_servers() == []


def test_a_rank_that_found_no_server_gets_its_node_a_new_one_for_the_next_launch(tmp_path):
    # the training polls running 6 times, then ends; the second pool step never ends
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[None] * 6 + [0], [None]])
    slurm.step_ids = [1]
    missing = tmp_path / "ck" / ".slurmft-warm" / "7"
    missing.mkdir(parents=True)
    (missing / "node9").touch()                       # a requeued run's note: cleared
    hooks = iter([lambda: (missing / "node2").touch()])   # node2's rank found no server
    sup.sleep = lambda _s: next(hooks, lambda: None)()
    sup.pool.ready_wait = 0.0
    assert sup.run() == 0
    pools = [argv for argv, _env, _text in procs.started if "serve" in argv]
    assert len(pools) == 2 and "--nodelist=node2" in pools[1] and "--nodes=1" in pools[1]
    assert not missing.exists()                       # the finished job leaves no notes


def test_a_relaunch_onto_a_node_without_a_server_starts_one_first_and_waits_for_it(tmp_path):
    """node4 came into the allocation (the refill's expansion) just before the relaunch
    read it: its server starts before the launch, whose clients wait for it (not cold)."""
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[5], [None], [0]],
                                        allocations=[["node1", "node2", "node4"]])

    def steps(job_id):               # one step per pool srun started
        return list(range(sum("serve" in (t or "") or "serve" in a
                              for a, _e, t in procs.started)))
    sup.pool._steps = steps
    assert sup.run() == 0
    pools = [argv for argv, _env, _t in procs.started if "serve" in argv]
    assert len(pools) == 2 and "--nodelist=node4" in pools[1]
    launch = procs.started[-1]
    assert launch[1]["SLURM_JOB_NODELIST"] == "node[1-2,4]"
    assert float(launch[1]["SLURMFT_WARM_WAIT"]) > 0       # node4's server is importing
    # the refill reporting node4 afterwards starts nothing more
    sup._warm_up(["node4"], ["node1", "node2", "node4"])
    assert len([a for a, _e, _t in procs.started if "serve" in a]) == 2
    # a node whose step never showed up is not tried again at every launch
    sup.pool._steps = lambda job_id: [0, 1]               # node5's step: never there
    assert not sup.pool.start(["node5"], {}, launch=lambda argv, env: procs.start(argv, env))
    assert sup.pool.never_started(["node1", "node4", "node5", "node6"]) == ["node6"]


def test_a_node_that_left_the_job_and_comes_back_as_a_spare_gets_a_new_server(tmp_path):
    """node3 is lost (the relaunch reads an allocation without it: Slurm ended its server
    with its part of the job); the refill takes it in again 60 s later: it needs a new server
    before the next loss, not at the relaunch that finds it cold (seen in the goodput run:
    kill -> first step 14.5 s instead of 3.5 s)."""
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[None, 255], [0], [None]],
                                        allocations=[["node1", "node2"]])
    sup.pool._steps = _one_step_per_pool_srun(procs)
    assert sup.run() == 0
    assert sup.pool.never_started(["node1", "node2", "node3"]) == ["node3"]
    sup._warm_up(["node3"], ["node1", "node2"])
    pools = [argv for argv, _env, _t in procs.started if "serve" in argv]
    assert len(pools) == 2 and "--nodelist=node3" in pools[1] and "--nodes=1" in pools[1]


def test_the_pool_forgets_only_the_servers_of_nodes_out_of_a_known_allocation():
    from slurmft.supervise.pool import WarmPool

    pool = WarmPool(7, PY, ("torch",), processes=None, steps=lambda job: [],
                    sleep=lambda s: None, clock=lambda: 100.0)
    pool.started_at = {"node1": 0.0, "node2": 0.0, "node3": 50.0}
    pool.failed = {"node3", "node5"}
    pool.left_job([])                                  # allocation unknown: nothing forgotten
    assert set(pool.started_at) == {"node1", "node2", "node3"}
    pool.left_job(["node1", "node2", "node5"])
    assert pool.started_at == {"node1": 0.0, "node2": 0.0} and pool.failed == {"node5"}
    assert pool.never_started(["node1", "node3", "node5"]) == ["node3"]


def _one_step_per_pool_srun(procs):
    def steps(job_id):
        return list(range(sum("serve" in (t or "") or "serve" in a
                              for a, _e, t in procs.started)))
    return steps


def test_after_a_rank_failure_a_spare_whose_server_answers_replaces_a_node_whose_server_died(
        tmp_path):
    """kill-job-procs on node2 killed its rank and its pool server: the relaunch asks every
    node's server (one short step), trains on the spare node3 instead of starting node2's
    rank cold, and gives node2 a new server once the ranks have started."""
    sup, procs, slurm = warm_supervisor(
        tmp_path, launches=[[None] * 6 + [137], [None] * 8 + [0]],
        allocations=[["node1", "node2", "node3"]], spares=1)
    sup.pool._steps = _one_step_per_pool_srun(procs)
    sup.pool.ready_wait = 0.0
    procs.outputs = ["node1 up\nnode2 down\nnode3 up\n"]
    assert sup.run() == 0
    [alive] = procs.asked
    assert alive[0] == "srun" and "--nodelist=node[1-3]" in alive and alive[-1] == "alive"
    launches = [env for argv, env, _t in procs.started if "run" in argv]
    assert [e["SLURM_JOB_NODELIST"] for e in launches] == ["node[1-2]", "node[1,3]"]
    pools = [(i, argv) for i, (argv, _env, _t) in enumerate(procs.started) if "serve" in argv]
    assert [next(a for a in p if a.startswith("--nodelist=")) for _i, p in pools] == [
        "--nodelist=node[1-3]", "--nodelist=node2"]
    # node2's new server started after the relaunch (started[2]), not before it
    assert pools[1][0] > 2 and "run" in procs.started[2][0]


@pytest.mark.parametrize("answer, spares, asked", [
    (None, 1, True),                  # the question failed: relaunch as before, on node2
    ("node1 up\nnode2 up\nnode3 up\n", 1, True),      # a crash that left the server alive
    ("node2 down\n", 0, False),      # no spare: nothing to swap, nothing asked
])
def test_a_rank_failure_keeps_its_nodes_when_no_answering_spare_can_do_better(
        tmp_path, answer, spares, asked):
    sup, procs, slurm = warm_supervisor(
        tmp_path, launches=[[None, 137], [0]],
        allocations=[["node1", "node2", "node3"] if spares else ["node1", "node2"]],
        spares=spares)
    if not spares:
        sup.environ["SLURM_JOB_NODELIST"] = "node[1-2]"
    sup.pool._steps = _one_step_per_pool_srun(procs)
    sup.pool.ready_wait = 0.0
    procs.outputs = [answer]
    assert sup.run() == 0
    assert bool(procs.asked) is asked
    launches = [env for argv, env, _t in procs.started if "run" in argv]
    assert [e["SLURM_JOB_NODELIST"] for e in launches] == ["node[1-2]", "node[1-2]"]


def test_a_young_server_that_does_not_answer_is_avoided_but_not_started_again():
    """node3's server started 10 s ago: not answering, it may be importing still. A spare
    that answers takes its place all the same, but only node2 (old, silent: dead) gets a new
    server; a node that never had one is not asked (and would start cold too)."""
    from slurmft.supervise.pool import WarmPool

    class Answers:
        def output(self, argv, env, timeout):
            assert "--nodelist=node[1-3]" in argv and env["SLURM_JOB_NODELIST"] == "node[1-3]"
            return "node1 up\nnode2 down\n"

    pool = WarmPool(7, PY, ("torch",), processes=Answers(), steps=lambda job: [],
                    sleep=lambda s: None, clock=lambda: 100.0)
    pool.started_at = {"node1": 0.0, "node2": 0.0, "node3": 90.0}
    assert pool.silent(["node1", "node2", "node3", "node4"], {}) == ["node2", "node3", "node4"]
    assert pool.dead_servers() == ["node2"] and pool.dead_servers() == []


def test_alive_answers_up_for_a_listening_server_and_down_without_one(pool, tmp_path):
    def alive(env):
        return subprocess.run([PY, "-m", "slurmft.supervise.warm", "alive"], env=env,
                              capture_output=True, text=True, timeout=30).stdout.strip()
    node = pool["SLURMD_NODENAME"]
    assert alive(pool) == f"{node} up"
    assert alive({**pool, "SLURMD_NODENAME": node + "-none"}) == f"{node}-none down"
    # the question is not a client: nothing refused, and a rank still runs warm after it
    assert "refused" not in (tmp_path / "server.log").read_text()
    out = client(pool, [PY, script(tmp_path, "import os; print(os.getppid())")])
    assert out.returncode == 0 and out.stdout.strip() == pool["_POOL_PID"]


def test_the_pool_s_srun_runs_on_the_launcher_s_peer_not_on_the_batch_host(tmp_path):
    """Lost with the batch host, an srun there keeps the other nodes' step daemons sending it
    task exits before the requeue can go on: the pool's srun runs on the peer, as it is (it
    makes its own step), after the one ssh check of that peer."""
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[0]], launch_from="peer")
    slurm.step_ids = [1]
    assert sup.run() == 0
    assert procs.called[0][-2] == "node2"                     # ssh node2 'cd ...': the check
    pool_argv, _env, script = procs.started[0]
    assert pool_argv[0] == "ssh" and pool_argv[-3:] == ["node2", "bash", "-s"]
    run = shlex.split(script.splitlines()[-1])
    assert run[:2] == ["exec", "srun"] and "--nodelist=node[1-3]" in run
    assert run[-6:] == [PY, "-m", "slurmft.supervise.warm", "serve", "--preload", "torch,mpi4py"]
    assert "--jobid=7" not in run                  # no second step around the pool's own
    assert sup.pool.steps == frozenset({0})
    launch_argv, _env, launch_script = procs.started[1]
    assert launch_argv[-3:] == ["node2", "bash", "-s"] and "warm run --" in launch_script


def test_a_pool_whose_step_never_shows_is_stopped_and_the_training_starts_cold(tmp_path):
    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[0]], pool_shows=False)
    assert sup.run() == 0
    assert procs.procs[0].signals == ["KILL"] and sup.pool.proc is None
    assert "SLURMFT_WARM_WAIT" not in procs.started[1][1]


def test_warm_needs_a_python_command():
    from slurmft.supervise.launch import LaunchSettings, launch_argv

    with pytest.raises(ValueError, match="python SCRIPT"):
        LaunchSettings(train_cmd=("bash", "train.sh"), warm=True)
    argv = launch_argv(LaunchSettings(train_cmd=(PY, "t.py"), launcher="srun", warm=True),
                       ["node1"], ["--resume", "/ck"])
    assert argv[-9:] == [PY, "-m", "slurmft.supervise.warm", "run", "--", PY, "t.py",
                         "--resume", "/ck"]


# ---- the commands ------------------------------------------------------------------------------

def _cli(args, env=None):
    from click.testing import CliRunner

    from slurmft.cli import cli
    return CliRunner().invoke(cli, args, env=env)


JOB_ENV = {"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "node[1-3]", "SLURMD_NODENAME": "node1"}


def test_run_warm_dry_run_shows_the_pool_and_the_wrapped_ranks(tmp_path):
    import json

    r = _cli(["run", "--checkpoint-dir", str(tmp_path), "--warm", "--warm-preload", "torch",
              "--spares", "1", "--dry-run", "--json", "--", "python3", "t.py", "--x"], JOB_ENV)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["warm_pool"][-6:] == ["python3", "-m", "slurmft.supervise.warm", "serve",
                                     "--preload", "torch"]
    assert "--nodelist=node[1-3]" in doc["warm_pool"]          # the spare's too
    assert doc["warm_pool_host"] == doc["launch_host"] == "node2"  # a peer, not the batch host
    r = _cli(["run", "--checkpoint-dir", str(tmp_path), "--warm", "--launch-from", "batch",
              "--dry-run", "--", "python3", "t.py"], JOB_ENV)
    assert "warm pool, started from node1: srun " in r.output, r.output
    assert doc["argv"][-8:] == ["python3", "-m", "slurmft.supervise.warm", "run", "--",
                                "python3", "t.py", "--x"]


@pytest.mark.parametrize("extra, cmd, message", [
    ([], ["bash", "train.sh"], "--warm: a warm start runs `python SCRIPT"),
    (["--replicas", "2"], ["python3", "t.py"], "--warm is for restart mode"),
])
def test_run_warm_errors_are_one_line(tmp_path, extra, cmd, message):
    r = _cli(["run", "--checkpoint-dir", str(tmp_path), "--warm", *extra, "--dry-run", "--",
              *cmd], JOB_ENV)
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_render_job_warm():
    r = _cli(["render", "job", "--nodes", "4", "--warm", "--train-cmd", "python3 train.py",
              "--checkpoint-dir", "/shared/ck"])
    assert r.exit_code == 0, r.output
    assert " --warm " in r.output.split("exec ", 1)[1].replace("\\\n", " ")
    r = _cli(["render", "job", "--nodes", "4", "--warm", "--train-cmd", "./train.sh",
              "--checkpoint-dir", "/shared/ck"])
    assert r.exit_code != 0 and "`python SCRIPT ...`" in r.output and "Traceback" not in r.output


def test_fault_injection_finds_the_forked_rank_and_a_dead_server_takes_its_ranks(pool, tmp_path):
    """``procs.training_ranks`` (what `slurmft inject` and the benchmark's faults stop or kill)
    names the forked rank, not the server or the client; the rank dies with its server."""
    from slurmft.testbed import procs

    pidfile = tmp_path / "pid"
    path = script(tmp_path, "import os, time\n"
                            f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                            "time.sleep(60)\n")
    c = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "run", "--", PY, path], env=pool)
    wait_file(pidfile)
    rank, server = int(pidfile.read_text()), int(pool["_POOL_PID"])
    # as under Slurm: the server and the client below a launcher that is not Python
    launcher = next(p for p in (1, os.getppid(), os.getpid())
                    if not procs.comm(p).startswith("python"))
    tree = {server: launcher, c.pid: launcher, rank: server}
    assert procs.training_ranks([server, c.pid, rank], tree) == [rank]
    os.kill(server, signal.SIGKILL)
    assert c.wait(20) != 0                           # the client reports its rank gone
    for _ in range(500):
        if _zombie(rank):
            break
        time.sleep(0.01)
    assert _zombie(rank)


def test_the_benchmark_s_warm_variant_renders_a_warm_wrapper(tmp_path):
    from types import SimpleNamespace

    from slurmft.testbed.demo import Demo, DemoOptions

    demo = Demo(DemoOptions(name="t", nodes=4, steps=10, spares=1, warm=True))
    demo.cluster = SimpleNamespace(shared_dir=tmp_path, subnet="10.0.0.0/24",
                                   ssh_config_path=tmp_path / "ssh_config")
    text = demo.job_script(tmp_path, tmp_path / "ck", tmp_path / "p.jsonl")
    run = text.split("exec ", 1)[1].replace("\\\n", " ")
    assert " --warm " in run and " --launcher mpirun " in run
    demo.o.launcher = "srun"                       # the spare-warm-srun variant
    run = demo.job_script(tmp_path, tmp_path / "ck", tmp_path / "p.jsonl").split("exec ", 1)[1]
    assert " --launcher srun " in run.replace("\\\n", " ")


def test_a_first_launch_waits_for_a_server_still_importing(tmp_path):
    """SLURMFT_WARM_WAIT (the supervisor sets it for the first launch): the client started
    before its server waits for it, then runs warm."""
    env = {**os.environ, "SLURM_JOB_ID": "77", "SLURMD_NODENAME": f"late-{uuid.uuid4().hex[:8]}",
           "SLURMFT_WARM_WAIT": "30"}
    path = script(tmp_path, "import os\nprint(os.getppid())\n")
    c = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "run", "--", PY, path], env=env,
                         stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    server = subprocess.Popen([PY, "-m", "slurmft.supervise.warm", "serve", "--preload", "json"],
                              env=env, stderr=subprocess.DEVNULL)
    try:
        out, _ = c.communicate(timeout=30)
        assert c.returncode == 0 and int(out) == server.pid     # forked by the late server
    finally:
        server.terminate()
        server.wait(10)


def test_the_run_command_s_default_preload_is_the_pool_s():
    """`slurmft run --warm` and the pool server preload the same modules by default, among
    them torch._dynamo (torch imports it at a training's first optimizer: a second or more
    per forked rank otherwise)."""
    from slurmft.cli import cli
    from slurmft.supervise.warm import DEFAULT_PRELOAD

    run = cli.get_command(None, "run")
    [opt] = [p for p in run.params if p.name == "warm_preload"]
    assert opt.default == ",".join(DEFAULT_PRELOAD)
    assert "torch._dynamo" in DEFAULT_PRELOAD
