"""Kill-during-save campaign: SIGKILL the saving process at random points, then load and check.

    .venv/bin/python bench/crash_campaign.py --trials 1000            # the README figure
    .venv/bin/python bench/crash_campaign.py --trials 150 --json out.json

``--trials N`` is the total number of kills, shared round-robin by the modes:

* ``shared``  the manager writes straight into the shared directory (no local cache)
* ``upload``  a node-local cache, then the asynchronous upload to a mounted shared directory
              (``save(...).result()`` returns once the copy there is verified)
* ``diff``    differential saves into the shared directory (a full save every 4th step,
              diffs against it in between; rotation keeps the bases the kept diffs need)

One trial: a worker process (forked from this one, so slurmft is imported once) builds a
``CheckpointManager`` on the mode's directory (which removes the leftovers of earlier kills),
resumes with ``load()``, then saves step after step of a deterministic state (numpy arrays of
a few hundred KB whose bytes follow from the step, and a small pickled part). After each
``save(...).result()`` returns it reports the step to the parent ("verified"). The parent kills
it with SIGKILL after a random delay, uniform over about two save cycles (the cycle time is
measured as the campaign runs), so kills land in every phase of a save: snapshot, data,
manifest, rename, ``latest``, rotation, upload; one kill in ten lands in the worker's start
instead (leftover cleanup and resume). The worker reports each phase as it enters it (the
manager's fault hook and events), so the table says where the kills landed.

Then a separate checker process, which never saved anything, builds a fresh
``CheckpointManager(..., writer=False)`` per trial (no cleanup: the next worker meets the
leftovers) and checks:

* **torn loaded**: ``load()`` returned a state that is not exactly the state of the step it
  claims (``latest_loaded.step``): any byte of any array, the pickled part, or the step
  itself differs. Every checkpoint that ``load_info`` accepts at the destination is checked
  the same way. With ``upload``, ``load()`` is also checked as a restarted job on the same
  node sees it (cache + shared directory).
* **lost**: a checkpoint the worker reported as verified before the kill that the next job
  could not get back. With ``V`` the newest verified step so far in this directory (this
  trial or an earlier one) and ``K = keep_last``: (a) ``load()`` at the destination must
  return a step >= ``V``; (b) each of the ``K`` newest verified steps must still load and
  verify at the destination, unless at least ``K`` newer checkpoints there load and verify
  (then rotation was entitled to remove it). Each step counts once however many trials see it
  missing. With ``upload`` the destination alone is checked (the node's cache may be gone).

The directory of a mode is reused across trials (so leftover ``.tmp-`` directories of earlier
kills are always there to recover from) and replaced by an empty one every ``--fresh-every``
trials of that mode (first saves into a new directory are covered too). A SIGKILL is a process
crash, not a power cut: what the kernel accepted survives, so any file system will do.

Exit status: 0 when no torn load and no lost checkpoint; 1 otherwise (details printed);
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmft.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.core.errors import CheckpointError  # noqa: E402

MODES = ("shared", "upload", "diff")
FULL_EVERY = 4                 # diff mode: a full save at every 4th step
STARTUP_KILL_SHARE = 0.1       # share of kills aimed at the worker's start (cleanup, resume)
MAX_SAVES = 10_000             # a worker the parent forgot stops by itself
READY_TIMEOUT_S = 30.0

# Where a kill landed: the last phase the worker entered. Store fault-hook labels are kept as
# they are; the manager's events and the worker's own marks get these names. Listed in the
# order of one save (unknown labels, e.g. from a newer library, go last).
EVENT_PHASES = {"save": "published+rotate", "backlog": "upload", "upload": "uploaded+rotate"}
PHASE_ORDER = ("startup", "resumed", "snapshot", "data", "data-written", "meta", "manifest", "rename",
               "renamed", "latest", "latest-set", "published+rotate", "upload", "uploaded+rotate",
               "reported")


# --- the deterministic state ----------------------------------------------------------------

@dataclass(frozen=True)
class StateShape:
    """Element counts (uint32) of the three arrays; ``frozen`` changes every 5 steps only,
    so differential saves skip it most of the time."""

    frozen: int
    weights: int
    moments: int

    @classmethod
    def from_kb(cls, size_kb: int) -> "StateShape":
        words = max(48, size_kb * 1024 // 4)
        return cls(frozen=words * 2 // 3, weights=words // 6, moments=words // 6)


def _array(n: int, version: int, salt: int) -> np.ndarray:
    """Distinct at every position, for every version and salt (uint32 arithmetic wraps)."""
    base = np.arange(n, dtype=np.uint32) * np.uint32(2654435761)
    return base + np.uint32((version * 40503 + salt * 7919 + 1) & 0xFFFFFFFF)


def expected_state(step: int, shape: StateShape) -> dict:
    return {
        "step": step,
        "tag": f"step-{step}",
        "model": {"frozen": _array(shape.frozen, step // 5, 1), "weights": _array(shape.weights, step, 2)},
        "optimizer": {"moments": _array(shape.moments, step, 3), "count": [step, 3 * step]},
    }


def state_mismatch(state: Any, step: int, shape: StateShape) -> str:
    """'' when ``state`` is exactly the state of ``step``, else what differs first."""
    want = expected_state(step, shape)
    if not isinstance(state, dict):
        return f"state is a {type(state).__name__}, not a dict"
    for key in ("step", "tag"):
        if state.get(key) != want[key]:
            return f"{key} is {state.get(key)!r}, expected {want[key]!r}"
    try:
        got_arrays = {"model/frozen": state["model"]["frozen"], "model/weights": state["model"]["weights"],
                      "optimizer/moments": state["optimizer"]["moments"]}
        if list(state["optimizer"]["count"]) != want["optimizer"]["count"]:
            return f"optimizer/count is {state['optimizer']['count']!r}"
    except (KeyError, TypeError) as exc:
        return f"state lacks {exc}"
    want_arrays = {"model/frozen": want["model"]["frozen"], "model/weights": want["model"]["weights"],
                   "optimizer/moments": want["optimizer"]["moments"]}
    for key, arr in want_arrays.items():
        got = got_arrays[key]
        if not isinstance(got, np.ndarray) or got.dtype != arr.dtype or got.shape != arr.shape:
            return f"{key}: {type(got).__name__} {getattr(got, 'dtype', '')} {getattr(got, 'shape', '')}"
        if not np.array_equal(got, arr):
            bad = int(np.flatnonzero(got != arr)[0])
            return f"{key}: element {bad} is {int(got[bad])}, expected {int(arr[bad])}"
    return ""


# --- modes and their directories ------------------------------------------------------------

@dataclass(frozen=True)
class ModeSpec:
    name: str
    shared: str              # the destination: what a job on another node loads from
    cache: str = ""          # node-local cache (upload mode)
    keep_last: int = 3
    shape: StateShape = StateShape.from_kb(384)

    @property
    def differential(self) -> bool:
        return self.name == "diff"

    def policy(self) -> CheckpointPolicy:
        # full_interval > 0 makes the manager keep per-array digests, which diffs need; the
        # worker picks full or diff itself with save(full=...).
        return CheckpointPolicy(path=self.shared, keep_last=self.keep_last, interval=0,
                                step_interval=0, full_interval=1440.0 if self.differential else 0.0,
                                signals=(), local_cache=self.cache)

    def manager(self, *, writer: bool, cache: bool = True, **kwargs: Any) -> CheckpointManager:
        local = self.cache if (cache and self.cache) else None
        policy = self.policy()
        if not local:
            policy.local_cache = ""
        return CheckpointManager(self.shared, policy, local_cache=local, writer=writer, **kwargs)

    def fresh(self) -> None:
        for d in (self.shared, self.cache):
            if d:
                shutil.rmtree(d, ignore_errors=True)
                Path(d).mkdir(parents=True)


def mode_spec(name: str, root: Path, keep_last: int, shape: StateShape) -> ModeSpec:
    base = root / name
    return ModeSpec(name=name, shared=str(base / "shared"),
                    cache=str(base / "cache") if name == "upload" else "",
                    keep_last=keep_last, shape=shape)


# --- the worker: saves until it is killed ---------------------------------------------------

class Reporter:
    """One line per event to the parent: ``<kind> <value> <monotonic time>``."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, kind: str, value: object = "") -> None:
        with self._lock:
            self._conn.send_bytes(f"{kind} {value} {time.monotonic():.6f}".encode())


def worker_main(spec: ModeSpec, conn: multiprocessing.connection.Connection) -> None:
    """Resume from the newest checkpoint, then save step after step until SIGKILL."""
    logging.getLogger("slurmft").setLevel(logging.CRITICAL + 10)   # errors go to the parent
    report = Reporter(conn)
    report.send("B", "start")
    try:
        mgr = spec.manager(writer=True, fault_hook=lambda label: report.send("P", label),
                           on_event=lambda name, _fields: report.send("P", EVENT_PHASES.get(name, name)))
        try:
            mgr.load()
        except CheckpointError as exc:          # the parent counts it as lost; start over
            report.send("E", f"resume: {exc}".replace("\n", " "))
        start = mgr.latest_loaded.step + 1 if mgr.latest_loaded is not None else 0
        report.send("R", start)
        for step in range(start, start + MAX_SAVES):
            state = expected_state(step, spec.shape)
            report.send("S", step)
            full = (step % FULL_EVERY == 0) if spec.differential else None
            info = mgr.save(state, step, full=full).result()
            report.send("V", info.step)
    except BrokenPipeError:
        return
    except Exception as exc:  # noqa: BLE001 - a save that fails without a kill is a finding
        report.send("E", f"{type(exc).__name__}: {exc}".replace("\n", " "))


@dataclass
class WorkerLog:
    """What the worker reported before it died."""

    verified: list[int] = field(default_factory=list)
    phase: str = "startup"                       # where the kill landed (last phase entered)
    start_step: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    save_starts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, line: bytes) -> None:
        kind, rest = line.decode().split(" ", 1)
        value, _, stamp = rest.rpartition(" ")
        t = float(stamp)
        if kind == "B":
            self.started_at = t
        elif kind == "R":
            self.start_step, self.ready_at, self.phase = int(value), t, "resumed"
        elif kind == "S":
            self.save_starts.append(t)
            self.phase = "snapshot"
        elif kind == "P":
            self.phase = value
        elif kind == "V":
            self.verified.append(int(value))
            self.phase = "reported"
        elif kind == "E":
            self.errors.append(value)


# --- the checker: a separate process that never saves --------------------------------------

@dataclass
class View:
    """What ``load()`` gave one reader."""

    name: str                    # "dest" (the destination alone) or "node" (cache + dest)
    loaded_step: int | None = None
    error: str = ""              # load() raised
    mismatch: str = ""           # loaded state differs from the step it claims


@dataclass
class Observation:
    views: list[View]
    present: dict[int, str]      # step at the destination -> '' (loads, exact) or why not
    fallbacks: int = 0           # load() skipped a checkpoint that failed verification

    @property
    def dest(self) -> View:
        return next(v for v in self.views if v.name == "dest")


def observe(spec: ModeSpec) -> Observation:
    """Load as a new job would, then every checkpoint at the destination, with fresh managers."""
    events: Counter = Counter()

    def count(name: str, _fields: dict) -> None:
        events[name] += 1

    views = []
    readers = [("dest", False)] + ([("node", True)] if spec.cache else [])
    present: dict[int, str] = {}
    for view_name, with_cache in readers:
        view = View(view_name)
        mgr = spec.manager(writer=False, cache=with_cache, on_event=count)
        try:
            try:
                state = mgr.load()
            except CheckpointError as exc:
                view.error = str(exc)
                state = None
            if state is not None and mgr.latest_loaded is not None:
                view.loaded_step = mgr.latest_loaded.step
                view.mismatch = state_mismatch(state, view.loaded_step, spec.shape)
            elif state is not None:
                view.mismatch = "load() returned a state but latest_loaded is None"
            if view_name == "dest":
                for info in mgr.list():
                    if info.error:
                        present[info.step] = f"corrupt: {info.error}"
                        continue
                    try:
                        _, loaded = mgr.load_info(info.name)
                    except CheckpointError as exc:
                        present[info.step] = f"corrupt: {exc}"
                        continue
                    wrong = state_mismatch(loaded, info.step, spec.shape)
                    present[info.step] = f"mismatch: {wrong}" if wrong else ""
        finally:
            mgr.close()
        views.append(view)
    return Observation(views=views, present=present, fallbacks=events["fallback"])


def checker_main(conn: multiprocessing.connection.Connection) -> None:
    logging.getLogger("slurmft").setLevel(logging.CRITICAL + 10)
    while True:
        spec = conn.recv()
        if spec is None:
            return
        try:
            conn.send(observe(spec))
        except Exception as exc:  # noqa: BLE001 - handed to the parent as a finding
            conn.send(f"{type(exc).__name__}: {exc}")


class Checker:
    """The checker process (forked before this process starts any thread)."""

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=checker_main, args=(child,), name="crash-checker", daemon=True)
        self._proc.start()
        child.close()

    def observe(self, spec: ModeSpec) -> Observation:
        self._conn.send(spec)
        got = self._conn.recv()
        if isinstance(got, str):
            raise RuntimeError(f"checker failed on {spec.name}: {got}")
        return got

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# --- judging one trial ----------------------------------------------------------------------

@dataclass
class Verdict:
    torn: list[str] = field(default_factory=list)
    lost: dict[int, str] = field(default_factory=dict)     # step -> why
    corrupt: list[str] = field(default_factory=list)       # on disk but failing verification


def judge(obs: Observation, verified: Sequence[int], keep_last: int) -> Verdict:
    """Apply the torn and lost rules of the module docstring (``verified``: all steps the
    workers reported in this directory, oldest first)."""
    out = Verdict()
    for view in obs.views:
        if view.mismatch:
            out.torn.append(f"load() ({view.name}) claimed step {view.loaded_step}: {view.mismatch}")
    for step, why in sorted(obs.present.items()):
        if why.startswith("mismatch"):
            out.torn.append(f"load_info of step {step}: {why}")
        elif why:
            out.corrupt.append(f"step {step}: {why}")
    if not verified:
        return out
    dest = obs.dest
    newest = max(verified)
    if dest.loaded_step is None or dest.loaded_step < newest:
        got = dest.error or ("nothing" if dest.loaded_step is None else f"step {dest.loaded_step}")
        out.lost[newest] = f"newest verified step {newest}, but load() gave {got}"
    good = sorted(s for s, why in obs.present.items() if not why)
    for step in sorted(set(verified))[-keep_last:]:
        if obs.present.get(step) == "":
            continue
        newer = [s for s in good if s > step]
        if len(newer) < keep_last:
            state = obs.present.get(step, "missing")
            out.lost.setdefault(step, f"verified step {step} is {state or 'missing'} and only "
                                      f"{len(newer)} newer good checkpoint(s) {newer} (keep_last={keep_last})")
    return out


# --- the campaign ---------------------------------------------------------------------------

@dataclass
class Failure:
    mode: str
    trial: int
    phase: str
    what: str
    on_disk: dict[str, list[str]]


@dataclass
class ModeResult:
    mode: str
    trials: int = 0
    saves_verified: int = 0
    torn: int = 0
    lost: int = 0
    corrupt_seen: int = 0
    fallbacks: int = 0
    worker_errors: int = 0
    seconds: float = 0.0
    kills_by_phase: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ms_per_trial(self) -> float:
        return 1000 * self.seconds / self.trials if self.trials else 0.0

    @property
    def ok(self) -> bool:
        return self.torn == 0 and self.lost == 0 and self.worker_errors == 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ms_per_trial"] = round(self.ms_per_trial, 2)
        d["seconds"] = round(self.seconds, 3)
        return d


def listing(spec: ModeSpec) -> dict[str, list[str]]:
    """What was on disk: every entry of the mode's directories, with file sizes."""
    out: dict[str, list[str]] = {}
    for label, d in (("shared", spec.shared), ("cache", spec.cache)):
        if not d:
            continue
        rows = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            rel = os.path.relpath(dirpath, d)
            for f in sorted(filenames):
                p = os.path.join(dirpath, f)
                try:
                    size = os.path.getsize(p)
                except OSError:
                    size = -1
                rows.append(f"{os.path.normpath(os.path.join(rel, f))} {size}")
        out[label] = rows
    return out


class ModeCampaign:
    """One mode's directory, its history of verified steps and its counters."""

    def __init__(self, spec: ModeSpec, fresh_every: int) -> None:
        self.spec = spec
        self.fresh_every = fresh_every
        self.result = ModeResult(spec.name)
        self.verified: list[int] = []
        self.lost_steps: set[int] = set()
        self.cycle_s = 0.03           # save cycle estimate, refined from the workers' reports
        self.startup_s = 0.02
        self.phases: Counter = Counter()
        spec.fresh()

    def run_trial(self, ctx: multiprocessing.context.BaseContext, checker: Checker,
                  rng: random.Random) -> None:
        spec, res = self.spec, self.result
        if self.fresh_every and res.trials and res.trials % self.fresh_every == 0:
            spec.fresh()
            self.verified.clear()
        t0 = time.perf_counter()
        log = self._kill_worker(ctx, rng)
        obs = checker.observe(spec)
        verdict = judge(obs, self.verified + log.verified, spec.keep_last)
        res.seconds += time.perf_counter() - t0
        res.trials += 1
        self.verified += log.verified
        res.saves_verified += len(log.verified)
        self.phases[log.phase] += 1
        res.kills_by_phase = dict(self.phases.most_common())
        res.fallbacks += obs.fallbacks
        res.corrupt_seen += len(verdict.corrupt)
        res.worker_errors += len(log.errors)
        new_lost = {s: why for s, why in verdict.lost.items() if s not in self.lost_steps}
        self.lost_steps.update(new_lost)
        res.lost = len(self.lost_steps)
        res.torn += len(verdict.torn)
        problems = verdict.torn + list(new_lost.values()) + [f"worker: {e}" for e in log.errors]
        if verdict.corrupt and (verdict.torn or new_lost):
            problems += [f"corrupt on disk: {c}" for c in verdict.corrupt]
        for what in problems:
            if len(res.failures) < 20:
                res.failures.append(Failure(spec.name, res.trials, log.phase, what, listing(spec)))
        self._learn(log)

    def _kill_worker(self, ctx: multiprocessing.context.BaseContext, rng: random.Random) -> WorkerLog:
        conn, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker_main, args=(self.spec, child), name=f"crash-{self.spec.name}",
                           daemon=True)
        log = WorkerLog()
        proc.start()
        child.close()
        try:
            if rng.random() < STARTUP_KILL_SHARE:
                time.sleep(rng.uniform(0, self.startup_s))
            else:
                self._read_until_ready(conn, log)
                time.sleep(rng.uniform(0, 2 * self.cycle_s))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        while True:                                  # everything it sent before it died
            try:
                log.add(conn.recv_bytes())
            except (EOFError, OSError):
                break
        conn.close()
        return log

    @staticmethod
    def _read_until_ready(conn: multiprocessing.connection.Connection, log: WorkerLog) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while log.ready_at is None:
            left = deadline - time.monotonic()
            if left <= 0 or not conn.poll(left):
                raise RuntimeError(f"worker did not resume within {READY_TIMEOUT_S}s")
            try:
                log.add(conn.recv_bytes())
            except EOFError:
                raise RuntimeError(f"worker died before it resumed: {log.errors}") from None

    def _learn(self, log: WorkerLog) -> None:
        """Refine the cycle and startup estimates that spread the kills (moving averages)."""
        starts = log.save_starts
        if len(starts) >= 2:
            cycle = statistics.median(b - a for a, b in zip(starts, starts[1:]))
            self.cycle_s = 0.8 * self.cycle_s + 0.2 * cycle
        if log.started_at is not None and log.ready_at is not None:
            self.startup_s = 0.8 * self.startup_s + 0.2 * (log.ready_at - log.started_at)


def run_campaign(trials: int, root: str | os.PathLike, modes: Iterable[str] = MODES, *,
                 seed: int = 0, keep_last: int = 3, size_kb: int = 384,
                 fresh_every: int = 50) -> list[ModeResult]:
    """Kill ``trials`` workers in all, round-robin over ``modes``; one ModeResult per mode.

    Call it from a process that runs no other threads: workers are forked from it.
    """
    ctx = multiprocessing.get_context("fork")
    shape = StateShape.from_kb(size_kb)
    campaigns = [ModeCampaign(mode_spec(m, Path(root), keep_last, shape), fresh_every) for m in modes]
    if not campaigns:
        raise ValueError("no modes to run")
    rng = random.Random(seed)
    checker = Checker(ctx)
    try:
        for i in range(trials):
            campaigns[i % len(campaigns)].run_trial(ctx, checker, rng)
    finally:
        checker.close()
    return [c.result for c in campaigns]


# --- output ---------------------------------------------------------------------------------

def format_table(results: Sequence[ModeResult]) -> str:
    head = ("mode", "trials", "saves verified", "torn loaded", "lost verified", "corrupt seen", "ms/trial")
    rows = [(r.mode, r.trials, r.saves_verified, r.torn, r.lost, r.corrupt_seen, f"{r.ms_per_trial:.1f}")
            for r in results]
    total_trials = sum(r.trials for r in results)
    total_s = sum(r.seconds for r in results)
    rows.append(("all", total_trials, sum(r.saves_verified for r in results), sum(r.torn for r in results),
                 sum(r.lost for r in results), sum(r.corrupt_seen for r in results),
                 f"{1000 * total_s / total_trials:.1f}" if total_trials else "0.0"))
    return _table(head, rows)


def format_phases(results: Sequence[ModeResult]) -> str:
    seen = {p for r in results for p in r.kills_by_phase}
    phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))
    head = ("kill landed in", *(r.mode for r in results))
    rows = [(p, *(r.kills_by_phase.get(p, 0) for r in results)) for p in phases]
    return _table(head, rows)


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [tuple(str(c) for c in head)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def format_failures(results: Sequence[ModeResult], limit: int = 6) -> str:
    """The first ``limit`` findings, with the top of each directory as it was (all in --json)."""
    found = [f for r in results for f in r.failures]
    out = []
    for f in found[:limit]:
        out.append(f"{f.mode} trial {f.trial} (its kill landed in '{f.phase}'): {f.what}")
        for label, rows in f.on_disk.items():
            top = sorted({row.split("/", 1)[0].split(" ", 1)[0] for row in rows})
            out.append(f"    {label}/: {', '.join(top) or '(empty)'}")
    if len(found) > limit:
        out.append(f"... {len(found) - limit} more (each with its directory listing) in --json")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=300, help="kills in all, shared by the modes (default 300)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--seed", type=int, default=0, help="random seed of the kill delays (default 0)")
    p.add_argument("--keep-last", type=int, default=3, help="the policy's keep_last (default 3)")
    p.add_argument("--size-kb", type=int, default=384, help="state size in KB (default 384)")
    p.add_argument("--fresh-every", type=int, default=50,
                   help="start a mode over in an empty directory every N of its trials; 0: never")
    p.add_argument("--dir", default=None, help="where the checkpoint directories go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint directories")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: unknown mode {bad[0] if bad else '(none)'}; choose from {', '.join(MODES)}")
    if args.trials < 1 or args.keep_last < 1 or args.size_kb < 1 or args.fresh_every < 0:
        p.error("--trials, --keep-last and --size-kb must be >= 1, --fresh-every >= 0")
    if args.dir is not None and not os.path.isdir(args.dir):
        p.error(f"--dir {args.dir}: not a directory")
    args.modes = modes
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="slurmft-crash-", dir=args.dir)
    t0 = time.perf_counter()
    try:
        results = run_campaign(args.trials, root, args.modes, seed=args.seed, keep_last=args.keep_last,
                               size_kb=args.size_kb, fresh_every=args.fresh_every)
    except KeyboardInterrupt:
        print("crash_campaign: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as exc:
        print(f"crash_campaign: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    print(f"kill-during-save campaign: {args.trials} SIGKILLs, state {args.size_kb} KB, "
          f"keep_last={args.keep_last}, seed {args.seed}, {'kept in ' + root if args.keep else 'in ' + root}")
    print(format_table(results))
    print()
    print(format_phases(results))
    print(f"\nwall time {wall:.1f} s")
    failures = format_failures(results)
    if failures:
        print("\nFAILURES (torn loads, lost checkpoints, worker errors):\n" + failures)
    if args.json:
        doc = {"trials": args.trials, "seed": args.seed, "keep_last": args.keep_last, "size_kb": args.size_kb,
               "fresh_every": args.fresh_every, "wall_s": round(wall, 2),
               "modes": [r.as_dict() for r in results]}
        try:
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            print(f"crash_campaign: cannot write --json {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:               # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
