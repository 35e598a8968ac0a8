"""Shared state of the rescheduler: retry records, per-job locks, the audit log.

Layout under ``reschedule.state_dir`` (shared storage, so every node and the controller see
the same records)::

    jobs/<original>.json     the retry record of a job and all its resubmissions; it names the
                             job by id + submit time, so a rebuilt cluster that hands out the
                             same job ids again starts fresh (the old record is kept as
                             jobs/<original>@<submit time>.json)
    jobs/<original>.lock     filelock: one reschedule per job at a time (mode 0664, whatever
                             the umask or the filelock release: see LOCK_MODE)
    alias/<job id>           the original job id a resubmitted job belongs to
    audit.jsonl              one JSON line per action (and per dry-run plan)

Records are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock

from slurmft.core.atomic import atomic_write
from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger
from slurmft.observe.events import AUDIT_FILE, AuditFile, Event, LogSink
from slurmft.recovery.policy import History

log = get_logger(__name__)

#: Mode of the per-job lock files. The epilog (SlurmUser) and the watcher (its own user) share
#: the state dir through a setgid group folder; a lock file one of them created must stay
#: writable by the other, or the other can never take the lock. filelock releases before 3.21
#: set 0644 on the files they create whatever the umask; an explicit mode is applied by every
#: release since 3.10 (setup.cfg asks for 3.12), after the lock is held.
LOCK_MODE = 0o664


class LockBusyError(SlurmFTError):
    """Another reschedule of the same job holds the lock for longer than lock_timeout."""


class StateError(SlurmFTError):
    """The state directory cannot be used."""


@dataclass
class Attempt:
    time: float
    job_id: int
    outcome: str
    failed: list[str] = field(default_factory=list)
    new_job_id: int | None = None


@dataclass
class RetryRecord:
    original_job_id: int
    job_ids: list[int] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    last_nodes: list[str] = field(default_factory=list)
    exhausted: bool = False
    train_cmd: str = ""
    checkpoint_dir: str = ""
    # Submit times Slurm gave the original job: the first, then one per requeue (a requeue
    # sets a new one). Empty in records written before slurmft keyed them by submit time.
    submit_times: list[int] = field(default_factory=list)
    # A regain in flight: the size asked for and the nodes still excluded. Saved before the
    # job is requeued-held (the job's own reschedule dies with it), so that the next
    # reschedule of the held job (the watcher's, the epilog's) finishes it: size, release.
    regain_nodes: int | None = None
    regain_exclude: list[str] = field(default_factory=list)
    # The most nodes the job held as slurmft saw it: a failure requeue of a job that shrank
    # takes its excluded nodes back up to this size when they are idle and healthy again.
    full_nodes: int = 0

    def belongs_to(self, submit_time: int | None, restart_count: int = 0) -> bool:
        """Whether a job with this id, ``submit_time`` and ``restart_count`` is the job this
        record was written for: a submit time seen before, or a later one on a job Slurm has
        requeued since (restart count > 0). A job that was never requeued with another
        submit time is a new job that reuses the id (a rebuilt cluster)."""
        if submit_time is None or not self.submit_times or submit_time in self.submit_times:
            return True
        return restart_count > 0 and submit_time > self.submit_times[-1]

    def history(self, job_id: int) -> History:
        """The policy's view of this record, asked about ``job_id``."""
        return History(
            attempts=len(self.attempts),
            attempts_on_job=sum(1 for a in self.attempts if a.job_id == job_id),
            excluded=tuple(self.excluded),
            last_nodes=tuple(self.last_nodes),
            exhausted=self.exhausted,
            regain_nodes=self.regain_nodes,
            regain_exclude=tuple(self.regain_exclude),
            full_nodes=self.full_nodes,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> RetryRecord:
        attempts = [Attempt(**a) for a in doc.get("attempts", [])]
        rest = {k: v for k, v in doc.items() if k != "attempts" and k in cls.__dataclass_fields__}
        return cls(attempts=attempts, **rest)


class StateStore:
    """Retry records, locks and the audit log in one directory."""

    def __init__(self, state_dir: str | os.PathLike, lock_timeout: float = 30.0) -> None:
        self.root = Path(state_dir)
        self.lock_timeout = lock_timeout

    def _ensure(self) -> None:
        """Create ``jobs/`` and ``alias/``. In a state directory shared through a group
        (setgid, as render deploy sets it up), they are made group-writable whatever this
        process's umask, so the epilog's user and the watcher's can both create files there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shared = bool(self.root.stat().st_mode & stat.S_ISGID)
            for name in ("jobs", "alias"):
                sub = self.root / name
                try:
                    sub.mkdir()
                except FileExistsError:
                    continue
                if shared:
                    os.chmod(sub, 0o2775)
        except OSError as exc:
            raise StateError(f"cannot use state directory {self.root}: {exc.strerror}; "
                             "set reschedule.state_dir (SLURMFT_RESCHEDULE_STATE_DIR)") from None

    def original_id(self, job_id: int) -> int:
        """The first job id of the chain ``job_id`` belongs to (itself if never resubmitted)."""
        path = self.root / "alias" / str(int(job_id))
        try:
            return int(path.read_text().strip())
        except FileNotFoundError:
            return int(job_id)
        except (OSError, ValueError):
            log.warning("unreadable alias %s; treating job %s as original", path, job_id)
            return int(job_id)

    def original_ids(self, job_ids: Iterable[int]) -> dict[int, int]:
        """``{job id: original id}`` for many jobs at once: ONE listing of ``alias/``, then a
        read of the alias of each given job that has one (a restart job slurmft submitted);
        every other job is its own original. The sharded watcher asks this once per cycle."""
        ids = [int(j) for j in job_ids]
        try:
            aliased = {int(n) for n in os.listdir(self.root / "alias") if n.isdigit()}
        except FileNotFoundError:
            aliased = set()
        except OSError as exc:
            raise StateError(f"cannot list {self.root / 'alias'}: {exc.strerror}; check "
                             "reschedule.state_dir (SLURMFT_RESCHEDULE_STATE_DIR)") from None
        return {j: (self.original_id(j) if j in aliased else j) for j in ids}

    @contextlib.contextmanager
    def lock(self, job_id: int, timeout: float | None = None) -> Iterator[int]:
        """Hold the per-job lock (keyed by the original id, which is yielded).

        An flock (filelock's UnixFileLock): the kernel drops it when the holder dies, however
        it dies (SIGKILL, OOM), so a crashed watcher or epilog never leaves a job locked; the
        file stays and is reused. The original id is read again once the lock is held: a
        restart job whose alias was written while we waited locks its chain's file instead."""
        self._ensure()
        wait = self.lock_timeout if timeout is None else timeout
        original = self.original_id(job_id)
        for _ in range(3):
            lock = filelock.FileLock(str(self.root / "jobs" / f"{original}.lock"),
                                     mode=LOCK_MODE)
            try:
                lock.acquire(timeout=wait)
            except filelock.Timeout:
                raise LockBusyError(f"another reschedule of job {job_id} is still running "
                                    f"after {wait:g} s; nothing done") from None
            now = self.original_id(job_id)
            if now == original:
                break
            lock.release()               # aliased meanwhile: take the chain's lock instead
            original = now
        else:
            raise LockBusyError(f"job {job_id}'s original id keeps changing under "
                                f"{self.root / 'alias'}; nothing done")
        try:
            yield original
        finally:
            lock.release()

    def load(self, job_id: int, submit_time: int | None = None,
             restart_count: int = 0, *, read_only: bool = False) -> RetryRecord:
        """The retry record of ``job_id`` (a fresh one if there is none). With the job's
        ``submit_time`` (and restart count): a record written for an earlier job with the same
        id (a rebuilt cluster) is set aside (not with ``read_only``) and a fresh one returned."""
        original = self.original_id(job_id)
        path = self.root / "jobs" / f"{original}.json"
        fresh = RetryRecord(original_job_id=original, job_ids=[original],
                            submit_times=[submit_time] if submit_time is not None else [])
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError) as exc:
            raise StateError(f"retry record {path} is unreadable: {exc}") from None
        record = RetryRecord.from_dict(doc)
        if original != int(job_id) or submit_time is None:   # a resubmission of ours
            return record
        if not record.belongs_to(submit_time, restart_count):
            log.warning("retry record of job %s was written for an earlier job %s (submitted "
                        "%s, now %s): starting a fresh one", job_id, original,
                        record.submit_times[0], submit_time)
            if not read_only:
                self._set_aside(path, record.submit_times[0])
            return fresh
        if not record.submit_times or record.submit_times[-1] != submit_time:
            if submit_time not in record.submit_times:
                record.submit_times.append(submit_time)
        return record

    def _set_aside(self, path: Path, submit_time: int) -> None:
        try:
            os.replace(path, path.with_name(f"{path.stem}@{submit_time}.json"))
        except OSError as exc:
            log.warning("cannot set aside %s: %s", path, exc)

    def save(self, record: RetryRecord) -> None:
        self._ensure()
        path = self.root / "jobs" / f"{record.original_job_id}.json"
        atomic_write(path, json.dumps(record.to_dict(), indent=1))

    def add_alias(self, new_job_id: int, original: int) -> None:
        self._ensure()
        atomic_write(self.root / "alias" / str(int(new_job_id)), f"{int(original)}\n")

    @property
    def audit_file(self) -> AuditFile:
        return AuditFile(self.root / AUDIT_FILE)

    def audit(self, event: Event) -> None:
        """Append ``event`` to audit.jsonl (and show it in the debug log)."""
        self._ensure()
        self.audit_file.emit(event)
        LogSink(log).emit(event)

    def audit_lines(self) -> list[dict]:
        """Every audit line as written."""
        return self.audit_file.records()


