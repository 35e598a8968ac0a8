"""Which jobs one ``slurmft watch`` owns when a site runs several (``--shard I/N``,
``--partition NAME``).

Pure: no Slurm, no files. A job's shard is a stable hash of its ORIGINAL job id
(``StateStore.original_id``: a restart job slurmft submitted for job 100 hashes as 100), so a
job and every resubmission of it stay with one watcher. The hash is Lamping and Veach's jump
consistent hash over the first 8 bytes of BLAKE2b of the id in decimal:

  * stable across processes, hosts and Python releases (Python's own ``hash`` of a str is
    salted per process);
  * balanced: every shard gets 1/N of the ids, sequential or not (an array job's ids are);
  * consistent: going from N to N+1 watchers moves only about 1/(N+1) of the jobs, each to
    the new shard; no job moves between two old shards.

With ``partitions`` a watcher owns only the jobs that run in one of them; with both, the jobs
in its partitions AND its shard (``--partition gpu --shard 0/2`` and ``--partition gpu --shard
1/2`` split partition gpu between two watchers). Owning decides only what a watcher looks at:
two watchers that both look at one job (overlapping options, or one taking over a dead one's
shard) are kept from acting twice by the per-job lock (``StateStore.lock``) and the re-read of
the job under it (``Rescheduler``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from slurmft.core.errors import ConfigError

#: Most shards a site may split its jobs into (one watcher each).
MAX_SHARDS = 4096
#: A Slurm partition name: what ``--partition`` accepts (no commas, spaces or shell characters).
PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _key(job_id: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(int(job_id)).encode(), digest_size=8).digest(),
                          "little")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping and Veach 2014): ``key`` (64-bit) -> 0..buckets-1."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, not {buckets}")
    b, j = -1, 0
    key &= 0xFFFFFFFFFFFFFFFF
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(original_job_id: int, count: int) -> int:
    """The shard (0..count-1) that owns the job chain starting at ``original_job_id``."""
    return jump_hash(_key(original_job_id), count)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``I/N`` on the command line, I from 0)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"shard count must be 1-{MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard index must be 0-{self.count - 1} for {self.count} "
                              f"shard(s), not {self.index} (shards count from 0: "
                              f"0/{self.count} ... {self.count - 1}/{self.count})")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> Shard(I, N); ConfigError with what is allowed otherwise."""
        m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text or "")
        if not m:
            raise ConfigError(f"shard must be I/N (this watcher's share I of N, I from 0), "
                              f"e.g. 0/2 and 1/2 for two watchers; not {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, original_job_id: int) -> bool:
        return shard_of(original_job_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_partition(name: str) -> str:
    if not PARTITION_RE.match(name or ""):
        raise ConfigError(f"invalid partition name {name!r}: letters, digits, '.', '_', '-' "
                          "(one name per --partition; repeat it for more)")
    return name


@dataclass(frozen=True)
class Ownership:
    """What one watcher owns: jobs in ``partitions`` (empty: any) whose original id falls
    in ``shard`` (None: any). ``Ownership()`` owns every job."""

    shard: Shard | None = None
    partitions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, shard: str | Shard | None = None, partitions: Iterable[str] = ()) -> Ownership:
        parsed = Shard.parse(shard) if isinstance(shard, str) else shard
        if parsed is not None and parsed.count == 1:
            parsed = None                       # 0/1 owns everything
        return cls(parsed, frozenset(check_partition(p) for p in partitions))

    @property
    def everything(self) -> bool:
        return self.shard is None and not self.partitions

    @property
    def needs_original_ids(self) -> bool:
        """Whether ``owns`` looks at the original id (only a shard does)."""
        return self.shard is not None

    def owns(self, original_job_id: int, partition: str = "") -> bool:
        """Whether the job (its chain's first id, the partition it runs in) is this
        watcher's. A pending job may name several partitions (``a,b``): any of them counts."""
        if self.partitions and not self.partitions & set(partition.split(",")):
            return False
        return self.shard is None or self.shard.owns(original_job_id)

    def describe(self) -> str:
        parts = []
        if self.shard is not None:
            parts.append(f"shard {self.shard}")
        if self.partitions:
            parts.append(f"partition(s) {','.join(sorted(self.partitions))}")
        return " in ".join(parts) if parts else "all jobs"

    def to_dict(self) -> dict:
        return {"shard": str(self.shard) if self.shard else None,
                "partitions": sorted(self.partitions)}
