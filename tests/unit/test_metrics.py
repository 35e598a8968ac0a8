"""Metrics definitions, the training-side recorder and the exporter's readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.cli import cli
from slurmft.core.errors import SlurmFTError
from slurmft.observe import metrics as m
from slurmft.observe.events import Acted, Decided, Detected, Recovered
from slurmft.observe.exporter import AuditTail, ExporterCollector, build_registry, read_checkpoints
from slurmft.recovery.state import StateStore


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from exposition text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def scrape(registry) -> dict[tuple, float]:
    return samples(m.render_text(registry))


def test_registry_is_private_and_complete():
    a, b = m.build_metrics(), m.build_metrics()
    assert a.registry is not b.registry          # no global default registry: two can coexist
    names = m.exported_names(a.registry)
    for name in ("slurmft_checkpoint_last_timestamp_seconds", "slurmft_checkpoint_last_step",
                 "slurmft_checkpoint_age_seconds", "slurmft_checkpoint_last_duration_seconds",
                 "slurmft_checkpoint_last_size_bytes",
                 "slurmft_checkpoint_verification_failures_total",
                 "slurmft_checkpoint_upload_backlog", "slurmft_reschedules_total",
                 "slurmft_node_health", "slurmft_detection_seconds_bucket",
                 "slurmft_recovery_seconds_sum", "slurmft_recovery_seconds_count"):
        assert name in names
    reg = CollectorRegistry()
    m.build_metrics(reg)
    with pytest.raises(ValueError):             # duplicate definitions are refused, not merged
        m.build_metrics(reg)


def test_training_metrics_events_and_age():
    clock = Clock()
    rec = m.TrainingMetrics("/ckpt/job1", clock=clock)
    d = (("dir", "/ckpt/job1"),)
    age = scrape(rec.registry)[("slurmft_checkpoint_age_seconds", *d)]
    assert age != age                                # NaN before the first save
    rec.on_event("save", {"step": 100, "time": clock.now - 5, "write_s": 1.0, "verify_s": 0.5,
                          "bytes_total": 4096, "bytes_written": 1024})
    clock.now += 10
    got = scrape(rec.registry)
    assert got[("slurmft_checkpoint_last_step", *d)] == 100
    assert got[("slurmft_checkpoint_age_seconds", *d)] == 15
    assert got[("slurmft_checkpoint_last_duration_seconds", *d)] == 1.5
    assert got[("slurmft_checkpoint_last_size_bytes", *d)] == 4096
    rec.on_event("save", {"step": 200})              # no time: the recorder's clock
    assert scrape(rec.registry)[("slurmft_checkpoint_age_seconds", *d)] == 0
    rec.on_event("verify_failed", {"name": "step_00000200", "error": "x"})
    rec.on_event("backlog", {"count": 2, "bytes": 10})
    rec.on_event("step", {"step": 201})              # unknown: ignored
    rec.on_event("save", {"step": "not a number"})   # odd data: recorded what it could
    got = scrape(rec.registry)
    assert got[("slurmft_checkpoint_verification_failures_total", *d)] == 1
    assert got[("slurmft_checkpoint_upload_backlog", *d)] == 2
    assert got[("slurmft_checkpoint_last_step", *d)] == 200


def test_training_metrics_with_real_checkpoint_manager(tmp_path):
    prom = tmp_path / "train.prom"
    ckpt = tmp_path / "ckpt"
    with m.TrainingMetrics(ckpt, textfile=prom) as rec:
        with CheckpointManager(ckpt, CheckpointPolicy(path=str(ckpt)), on_event=rec.on_event) as mgr:
            mgr.save({"w": np.arange(1000, dtype=np.float32), "epoch": 3}, 7, wait=True)
        # The manager's own "save" event set the metrics.
        got = scrape(rec.registry)
        d = ("dir", str(ckpt))
        assert got[("slurmft_checkpoint_last_step", d)] == 7
        assert got[("slurmft_checkpoint_last_size_bytes", d)] == 4000
        assert got[("slurmft_checkpoint_last_duration_seconds", d)] > 0
    assert samples(prom.read_text())[("slurmft_checkpoint_last_step", ("dir", str(ckpt)))] == 7


def test_training_metrics_never_writes_per_step(tmp_path, monkeypatch):
    writes = []
    real = m.write_textfile
    monkeypatch.setattr(m, "write_textfile", lambda reg, path: (writes.append(path), real(reg, path)))
    rec = m.TrainingMetrics(tmp_path, textfile=tmp_path / "t.prom")
    for step in range(1000):
        rec.on_event("step", {"step": step})
    assert writes == []                              # step events never reach the disk
    rec.close()                                      # one final write on close
    assert len(writes) == 1


def test_training_metrics_writes_textfile_on_events_only(tmp_path):
    path = tmp_path / "slurmft.prom"
    with m.TrainingMetrics(tmp_path, textfile=path) as rec:
        rec.on_event("step", {"step": 1})
        rec.on_event("save", {"step": 10, "bytes_total": 10})
    text = path.read_text()
    assert samples(text)[("slurmft_checkpoint_last_step", ("dir", str(tmp_path)))] == 10
    assert not list(tmp_path.glob("*.prom.*"))      # written atomically, no temp file left


def test_textfile_errors_are_typed(tmp_path):
    with pytest.raises(SlurmFTError, match="does not exist"):
        m.write_textfile(m.build_metrics().registry, tmp_path / "nope" / "x.prom")


def test_node_health_counts_every_state():
    met = m.build_metrics()
    m.set_node_health(met, ["HEALTHY", "healthy", "UNREACHABLE"])
    got = scrape(met.registry)
    assert got[("slurmft_node_health", ("state", "healthy"))] == 2
    assert got[("slurmft_node_health", ("state", "unreachable"))] == 1
    assert got[("slurmft_node_health", ("state", "degraded"))] == 0


def _save(directory: Path, step: int) -> None:
    with CheckpointManager(directory, CheckpointPolicy(path=str(directory))) as mgr:
        mgr.load()
        mgr.save({"w": np.full(256, step, dtype=np.float64)}, step, wait=True)


def test_read_checkpoints_through_the_store(tmp_path):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    s = read_checkpoints(str(tmp_path))
    assert (s.count, s.last_step, s.last_size, s.broken) == (2, 20, 2048, ())
    assert abs(s.last_time - __import__("time").time()) < 3600
    manifest = next(tmp_path.glob("*20/manifest.json"))
    manifest.write_text(manifest.read_text().replace('"step": 20', '"step": 21'))
    s = read_checkpoints(str(tmp_path))
    assert s.last_step == 10 and len(s.broken) == 1      # an altered manifest is not trusted
    with pytest.raises(SlurmFTError, match="does not exist"):
        read_checkpoints(str(tmp_path / "nope"))


def test_audit_tail_reads_whole_lines_once(tmp_path):
    path = tmp_path / "audit.jsonl"
    tail = AuditTail(path)
    assert tail.read_new() == ([], 0, False)            # missing file: nothing yet
    with path.open("w") as fh:
        fh.write('{"outcome": "requeued"}\nnot json\n{"outcome": "ref')
    assert tail.read_new() == ([{"outcome": "requeued"}], 1, False)
    with path.open("a") as fh:
        fh.write('used"}\n')
    assert tail.read_new() == ([{"outcome": "refused"}], 0, False)
    assert tail.read_new() == ([], 0, False)
    path.write_text('{"outcome": "failed"}\n')          # replaced (shorter): start over
    assert tail.read_new() == ([{"outcome": "failed"}], 0, True)


def test_exporter_collector_moves_with_sources(tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    clock = Clock()
    collector = ExporterCollector([ckpt], state_dir=state, clock=clock)
    reg = build_registry(collector)
    d = ("dir", str(ckpt))
    got = scrape(reg)
    assert got[("slurmft_checkpoint_count", d)] == 0
    assert ("slurmft_checkpoint_age_seconds", d) not in got
    _save(ckpt, 1)
    t1 = read_checkpoints(str(ckpt)).last_time
    clock.now = t1 + 5
    assert scrape(reg)[("slurmft_checkpoint_age_seconds", d)] == pytest.approx(5)
    clock.now = t1 + 105
    assert scrape(reg)[("slurmft_checkpoint_age_seconds", d)] == pytest.approx(105)  # per scrape
    _save(ckpt, 2)
    clock.now = read_checkpoints(str(ckpt)).last_time + 1
    got = scrape(reg)
    assert got[("slurmft_checkpoint_age_seconds", d)] == pytest.approx(1)   # reset by the save
    assert got[("slurmft_checkpoint_last_step", d)] == 2

    store = StateStore(state)               # the rescheduler's own audit writer
    store.audit(Decided(job_id=42, outcome="requeue", failed=("node2",),
                        health={"node1": "HEALTHY", "node2": "UNREACHABLE"}))
    store.audit(Acted(job_id=42, op="drain", result="ok"))
    store.audit(Detected(job_id=42, nodes=("node2",), detection_seconds=3.0))
    store.audit(Recovered(job_id=42, recovery_seconds=45.0))
    with (state / "audit.jsonl").open("a") as fh:    # lines of an older writer parse too
        fh.write('{"outcome": "refused"}\n{"event": "detected", "detection_seconds": true}\n')
    got = scrape(reg)
    assert got[("slurmft_reschedules_total", ("outcome", "requeue"))] == 1
    assert got[("slurmft_reschedules_total", ("outcome", "refused"))] == 1
    assert ("slurmft_reschedules_total", ("outcome", "unknown")) not in got  # actions don't count
    assert got[("slurmft_detection_seconds_count",)] == 1          # a bool is not a duration
    assert got[("slurmft_detection_seconds_bucket", ("le", "5.0"))] == 1
    assert got[("slurmft_recovery_seconds_sum",)] == 45
    assert got[("slurmft_node_health", ("state", "unreachable"))] == 1
    assert scrape(reg)[("slurmft_reschedules_total", ("outcome", "requeue"))] == 1  # no recount

    latest = (ckpt / "latest").read_text().strip()
    (ckpt / latest / "manifest.json").write_text("{")
    got = scrape(reg)
    assert got[("slurmft_checkpoint_verification_failures_total", d)] == 1
    assert got[("slurmft_checkpoint_last_step", d)] == 1               # fell back to step 1
    assert scrape(reg)[("slurmft_checkpoint_verification_failures_total", d)] == 1  # once


def test_exporter_cli_textfile_once(tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    _save(ckpt, 5)
    StateStore(state).audit(Decided(outcome="resubmit"))
    out = tmp_path / "slurmft.prom"
    res = CliRunner().invoke(cli, ["exporter", "--textfile", str(out), "--once",
                                   "--checkpoint-dir", str(ckpt), "--state-dir", str(state)])
    assert res.exit_code == 0, res.output
    got = samples(out.read_text())
    assert got[("slurmft_checkpoint_last_step", ("dir", str(ckpt)))] == 5
    assert got[("slurmft_reschedules_total", ("outcome", "resubmit"))] == 1


@pytest.mark.parametrize("args, message", [
    ([], "give --port"),
    (["--port", "9", "--once"], "--once goes with --textfile"),
    (["--port", "0", "--bind", "1.2.3.4;x"], "--bind"),
    (["--port", "70000"], "70000"),
])
def test_exporter_cli_usage_errors(args, message):
    res = CliRunner().invoke(cli, ["exporter", *args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def _with_samples(metrics):
    metrics.reschedules.labels(outcome="requeue").inc()
    metrics.recovery_seconds.observe(12)
    metrics.verification_failures.labels(dir="/c").inc()
    return m.render_text(metrics.registry)


def test_no_created_series_unless_asked(monkeypatch):
    monkeypatch.delenv(m.CREATED_ENV, raising=False)
    try:
        text = _with_samples(m.build_metrics())
        assert "slurmft_reschedules_total" in text and "slurmft_recovery_seconds_count" in text
        assert "_created" not in text
        assert not any(n.endswith("_created") for n in m.exported_names(m.build_metrics().registry))
        monkeypatch.setenv(m.CREATED_ENV, "1")          # asked for: they come back
        text = _with_samples(m.build_metrics())
        created = [line for line in text.splitlines() if "_created" in line and line[0] != "#"]
        assert {line.split("{")[0].split(" ")[0] for line in created} == {
            "slurmft_reschedules_created", "slurmft_recovery_seconds_created",
            "slurmft_detection_seconds_created",
            "slurmft_checkpoint_verification_failures_created"}
        assert "slurmft_recovery_seconds_created" in m.exported_names(m.build_metrics().registry)
        assert "_created" not in _with_samples(m.build_metrics(created=False))  # flag wins
    finally:
        m.apply_created_setting(False)


def test_exporter_scrape_and_textfile_have_no_created_series(tmp_path, monkeypatch):
    monkeypatch.delenv(m.CREATED_ENV, raising=False)
    state = tmp_path / "state"
    StateStore(state).audit(Decided(job_id=1, outcome="requeue"))
    StateStore(state).audit(Recovered(job_id=1, recovery_seconds=30.0))
    text = m.render_text(build_registry(ExporterCollector([], state_dir=state)))
    assert 'slurmft_reschedules_total{outcome="requeue"} 1.0' in text
    assert "slurmft_recovery_seconds_count 1.0" in text
    assert "_created" not in text
    out = tmp_path / "slurmft.prom"
    res = CliRunner().invoke(cli, ["exporter", "--textfile", str(out), "--once",
                                   "--state-dir", str(state)])
    assert res.exit_code == 0, res.output
    assert "slurmft_reschedules_total" in out.read_text()
    assert "_created" not in out.read_text()
