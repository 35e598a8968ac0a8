"""The real `slurmft exporter` process, scraped over HTTP while checkpoints and recoveries happen.

Checkpoints are written by the real CheckpointManager into a temp dir; the recovery is a real
audit record appended through slurmft.recovery.state.StateStore (the rescheduler's own
writer), not a reschedule driven on the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.checkpoint.upload import RetrySchedule
from slurmft.core.errors import CheckpointError
from slurmft.observe.events import Decided, Detected, Recovered
from slurmft.recovery.state import StateStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[tuple, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:     # 127.0.0.1 only
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def exporter(tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmft", "exporter", "--port", "0", "--bind", "127.0.0.1",
         "--checkpoint-dir", str(ckpt), "--state-dir", str(state)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), (line, proc.stderr.read())
        yield line.split(" ", 1)[1], ckpt, state
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def save(directory: Path, step: int) -> None:
    with CheckpointManager(directory, CheckpointPolicy(path=str(directory))) as mgr:
        mgr.load()
        mgr.save({"w": np.full(1 << 16, step, dtype=np.float32)}, step, wait=True)


def test_scrape_sees_checkpoint_age_reset_and_reschedules_rise(exporter):
    url, ckpt, state = exporter
    d = ("dir", str(ckpt))
    first = scrape(url)
    assert first[("slurmft_checkpoint_count", d)] == 0

    save(ckpt, 100)
    time.sleep(1.2)
    old = scrape(url)
    assert old[("slurmft_checkpoint_last_step", d)] == 100
    assert old[("slurmft_checkpoint_last_size_bytes", d)] == 4 << 16
    assert old[("slurmft_checkpoint_age_seconds", d)] >= 1.0

    save(ckpt, 200)
    new = scrape(url)
    assert new[("slurmft_checkpoint_last_step", d)] == 200
    assert new[("slurmft_checkpoint_age_seconds", d)] < old[("slurmft_checkpoint_age_seconds", d)]
    assert new[("slurmft_checkpoint_count", d)] == 2

    key = ("slurmft_reschedules_total", ("outcome", "requeue"))
    assert new.get(key, 0) == 0
    store = StateStore(state)
    store.audit(Decided(job_id=42, outcome="requeue", failed=("node3",),
                        health={"node1": "HEALTHY", "node2": "HEALTHY", "node3": "UNREACHABLE"}))
    store.audit(Detected(job_id=42, nodes=("node3",), detection_seconds=2.5))
    store.audit(Recovered(job_id=42, recovery_seconds=30.0))
    after = scrape(url)
    assert after[key] == 1
    assert after[("slurmft_node_health", ("state", "unreachable"))] == 1
    assert after[("slurmft_node_health", ("state", "healthy"))] == 2
    assert after[("slurmft_detection_seconds_count",)] == 1
    assert after[("slurmft_recovery_seconds_sum",)] == 30.0

    store.audit(Decided(job_id=42, outcome="requeue"))
    assert scrape(url)[key] == 2


def test_scrape_skips_a_truncated_newest_checkpoint_and_shows_the_upload_backlog(exporter):
    url, ckpt, _state = exporter
    d = ("dir", str(ckpt))
    for step in (1, 2, 3):
        save(ckpt, step)
    assert scrape(url)[("slurmft_checkpoint_last_step", d)] == 3
    data = ckpt / "step_000000000003" / "data.bin"
    os.truncate(data, 100)                                   # truncate -s 100 .../data.bin
    got = scrape(url)
    assert got[("slurmft_checkpoint_last_step", d)] == 2
    assert got[("slurmft_checkpoint_verification_failures_total", d)] == 1
    assert scrape(url)[("slurmft_checkpoint_verification_failures_total", d)] == 1

    # a manager whose destination is a file (uploads fail) writes its status into this dir
    shared = ckpt.parent / "shared-is-a-file"
    shared.write_text("not a directory")
    mgr = CheckpointManager(shared, CheckpointPolicy(path=str(shared)), local_cache=ckpt,
                            upload_retry=RetrySchedule(attempts=1, backoff_initial=0,
                                                       cycle_interval=3600))
    handle = mgr.save({"w": np.ones(1 << 10, dtype=np.float32)}, 4)
    with pytest.raises(CheckpointError, match="cannot create"):
        handle.result(30)
    got = scrape(url)
    assert got[("slurmft_checkpoint_upload_backlog", d)] == 1
    assert got[("slurmft_checkpoint_upload_failures_total", d)] >= 1
    assert got[("slurmft_checkpoint_upload_failing", d)] == 1
    with pytest.raises(CheckpointError, match="newest checkpoint step_000000000004"):
        mgr.close(10)
