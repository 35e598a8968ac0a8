"""The exporter reports the newest checkpoint that verifies, counts the ones that do not, and
publishes the uploads' health from the manager's upload_status.json."""

from __future__ import annotations

import os

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slurmft.checkpoint.destinations import MountedDestination
from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.store import DATA, step_name
from slurmft.checkpoint.upload import RetrySchedule
from slurmft.core.errors import CheckpointError
from slurmft.observe import metrics as m
from slurmft.observe.exporter import CheckpointReader, ExporterCollector, build_registry

FAST = RetrySchedule(attempts=2, backoff_initial=0, backoff_max=0, cycle_interval=3600)


def scrape(registry) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(m.render_text(registry)):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def save_steps(directory, *steps):
    with CheckpointManager(directory, CheckpointPolicy(interval=0, step_interval=0)) as mgr:
        for step in steps:
            mgr.save({"w": np.full(4096, step, dtype=np.float32)}, step, wait=True)


def test_truncated_newest_checkpoint_is_not_reported(tmp_path):
    save_steps(tmp_path, 1, 2, 3)
    reg = build_registry(ExporterCollector([tmp_path]))
    d = ("dir", str(tmp_path))
    got = scrape(reg)
    assert got[("slurmft_checkpoint_last_step", d)] == 3
    assert got[("slurmft_checkpoint_verification_failures_total", d)] == 0
    good_time = got[("slurmft_checkpoint_last_timestamp_seconds", d)]

    os.truncate(tmp_path / step_name(3) / DATA, 100)         # truncate -s 100 .../data.bin
    got = scrape(reg)
    assert got[("slurmft_checkpoint_last_step", d)] == 2
    assert got[("slurmft_checkpoint_last_timestamp_seconds", d)] < good_time
    assert got[("slurmft_checkpoint_verification_failures_total", d)] == 1
    assert got[("slurmft_checkpoint_count", d)] == 2
    got = scrape(reg)                                          # counted once, not per scrape
    assert got[("slurmft_checkpoint_verification_failures_total", d)] == 1


def test_same_size_corruption_is_caught_when_the_file_changes(tmp_path):
    save_steps(tmp_path, 1, 2)
    reader = CheckpointReader()
    assert reader(str(tmp_path)).last_step == 2
    data = tmp_path / step_name(2) / DATA
    st = data.stat()
    with open(data, "r+b") as f:                                # same size, new mtime
        f.write(b"\x00\x01\x02\x03")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    summary = reader(str(tmp_path))                             # the cached result is not reused
    assert summary.last_step == 1 and summary.broken == (step_name(2),)


def test_no_checkpoint_verifies(tmp_path):
    save_steps(tmp_path, 1)
    os.truncate(tmp_path / step_name(1) / DATA, 10)
    summary = CheckpointReader()(str(tmp_path))
    assert (summary.count, summary.last_step, summary.broken) == (0, None, (step_name(1),))


def test_upload_backlog_and_failures_from_the_status_file(tmp_path):
    class Down(MountedDestination):
        down = True

        def upload(self, src, info):
            if self.down:
                raise OSError(113, "No route to host (injected)")
            super().upload(src, info)

    cache, shared = tmp_path / "cache", tmp_path / "shared"
    mgr = CheckpointManager(shared, CheckpointPolicy(interval=0, step_interval=0),
                            local_cache=cache, upload_retry=FAST)
    dest = Down(shared)
    mgr._dest = mgr._uploader.destination = dest
    reg = build_registry(ExporterCollector([cache]))
    d = ("dir", str(cache))
    for step in (1, 2):
        with pytest.raises(CheckpointError):
            mgr.save({"w": np.ones(1000, np.float32)}, step).result(30)
    got = scrape(reg)
    assert got[("slurmft_checkpoint_upload_backlog", d)] == 2
    assert got[("slurmft_checkpoint_upload_backlog_bytes", d)] >= 2 * 4000
    assert got[("slurmft_checkpoint_upload_failing", d)] == 1
    failures = got[("slurmft_checkpoint_upload_failures_total", d)]
    assert failures >= 2 * FAST.attempts
    assert scrape(reg)[("slurmft_checkpoint_upload_failures_total", d)] == failures  # no recount
    assert got[("slurmft_checkpoint_last_step", d)] == 2       # saved locally all the same

    dest.down = False
    mgr.close(30)
    got = scrape(reg)
    assert got[("slurmft_checkpoint_upload_backlog", d)] == 0
    assert got[("slurmft_checkpoint_upload_failing", d)] == 0
    assert got[("slurmft_checkpoint_upload_failures_total", d)] == failures
    assert got[("slurmft_checkpoint_last_upload_timestamp_seconds", d)] > 0


def test_training_metrics_count_upload_failures(tmp_path):
    rec = m.TrainingMetrics(tmp_path)
    rec.on_event("upload_failed", {"name": "step_1", "failures_total": 3})
    rec.on_event("upload_failed", {"name": "step_2", "failures_total": 5})
    rec.on_event("upload", {"name": "step_2"})
    got = scrape(rec.registry)
    d = ("dir", str(tmp_path))
    assert got[("slurmft_checkpoint_upload_failures_total", d)] == 5
    assert got[("slurmft_checkpoint_upload_failing", d)] == 0
