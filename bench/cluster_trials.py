"""What the requeue benches share (``requeue_srun_host.py``, ``requeue_orphan_srun.py``): a
throwaway local cluster, commands run in its controller namespace, waits with a limit, and the
trial loop (every mode once per round, the cluster torn down whatever happens)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurmft.core.errors import SlurmFTError  # noqa: E402
from slurmft.testbed import Cluster  # noqa: E402

T = TypeVar("T")


class ClusterBench:
    """A local cluster by name; ``poll`` is the default pause of ``wait``."""

    poll = 0.1

    def __init__(self, name: str) -> None:
        self.cluster = Cluster(name)

    def run(self, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.cluster.exec_argv(argv),
                              env={**self.cluster.env(), **(env or {})},
                              capture_output=True, text=True, timeout=60, check=False)

    def wait(self, what: str, until: Callable[[], object], limit: float = 60.0,
             poll: float | None = None) -> float:
        """The moment ``until()`` held; RuntimeError when it did not within ``limit`` s."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if until():
                return time.monotonic()
            time.sleep(self.poll if poll is None else poll)
        raise RuntimeError(f"{what}: not within {limit:.0f} s")


def trial_args(doc: str, argv: list[str] | None, *, trials: int, name: str,
               trials_help: str | None = None) -> argparse.Namespace:
    """``--trials``, ``--name`` (the cluster), ``--json FILE``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=trials, help=trials_help)
    ap.add_argument("--name", default=name, help="the local cluster's name")
    ap.add_argument("--json", default="", metavar="FILE", help="also write the results here")
    a = ap.parse_args(argv)
    if a.trials < 1:
        ap.error("--trials must be at least 1")
    return a


def run_trials(bench: ClusterBench, modes: Sequence[str], trials: int,
               one: Callable[[str], T], say: Callable[[int, str, T], None],
               nodes: int = 4) -> dict[str, list[T]] | None:
    """Bring the cluster up (after taking down what a killed run left), run ``one(mode)`` for
    every mode, ``trials`` rounds, ``say`` each result, take the cluster down. None (the reason
    on stderr) when a trial failed."""
    bench.cluster.down()
    results: dict[str, list[T]] = {m: [] for m in modes}
    try:
        bench.cluster.up(nodes=nodes)
        for i in range(trials):
            for mode in modes:
                results[mode].append(one(mode))
                say(i, mode, results[mode][-1])
    except (RuntimeError, SlurmFTError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return None
    finally:
        bench.cluster.down()
    return results
