"""Policy loading/validation, save triggers with an injected clock, save on signal."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy
from slurmft.core.errors import ConfigError


def test_defaults():
    p = CheckpointPolicy()
    assert (p.interval, p.step_interval, p.keep_last, p.save_optimizer) == (30.0, 1000, 5, True)
    assert p.checksum == "xxh3" and p.full_interval == 0 and p.signals == ("SIGUSR1", "SIGTERM")


def test_from_dict_yaml_env(tmp_path):
    p = CheckpointPolicy.from_dict({"interval": "15", "keep_last": 2, "signals": ["usr2"]})
    assert p.interval == 15.0 and p.keep_last == 2 and p.signals == ("SIGUSR2",)
    f = tmp_path / "c.yaml"
    f.write_text("checkpoint:\n  full_interval: 60\n  interval: 15\n  checksum: sha256\n")
    p = CheckpointPolicy.from_yaml(f, env={"SLURMFT_CHECKPOINT_KEEP_LAST": "9",
                                           "CHECKPOINT_PATH": "/ckpt/x"})
    assert (p.full_interval, p.interval, p.checksum, p.keep_last, p.path) == (60, 15, "sha256", 9, "/ckpt/x")


def test_default_path():
    env = {"USER": "alice", "SLURM_JOB_ID": "42", "SLURMFT_CHECKPOINT_ROOT": "/shared/ckpt"}
    assert CheckpointPolicy().resolve_path(env) == "/shared/ckpt/alice/42"
    assert CheckpointPolicy().resolve_path({"CHECKPOINT_PATH": "/x"}) == "/x"
    assert CheckpointPolicy(path="/y").resolve_path(env) == "/y"


@pytest.mark.parametrize("values,match", [
    ({"checksum": "md5"}, "checkpoint.checksum must be one of xxh3, sha256, not 'md5'"),
    ({"keep_last": 0}, "checkpoint.keep_last must be >= 1"),
    ({"interval": -1}, "checkpoint.interval"),
    ({"step_interval": "ten"}, "checkpoint.step_interval must be int"),
    ({"full_interval": -5}, "checkpoint.full_interval"),
    ({"signals": "SIGKILL"}, "not a catchable signal"),
    ({"signals": "SIGNOPE"}, "not a catchable signal"),
    ({"colour": "red"}, "unknown setting checkpoint.colour"),
    ({"save_optimizer": "maybe"}, "checkpoint.save_optimizer must be bool"),
])
def test_validation(values, match):
    with pytest.raises(ConfigError, match=match):
        CheckpointPolicy.from_dict(values)


def test_remote_needs_local_cache(tmp_path):
    with pytest.raises(ConfigError, match="local_cache"):
        CheckpointManager("node1:/ckpt", CheckpointPolicy())


def state(step):
    return {"w": np.full(8, step, np.float32), "step": step}


def test_step_trigger(tmp_path):
    with CheckpointManager(tmp_path, CheckpointPolicy(interval=0, step_interval=10),
                           clock=lambda: 0.0) as mgr:
        hits = [s for s in range(1, 36) if mgr.should_save(s) and mgr.save(state(s), s)]
    assert hits == [10, 20, 30]


def test_time_trigger_injected_clock(tmp_path):
    now = [1000.0]
    with CheckpointManager(tmp_path, CheckpointPolicy(interval=30, step_interval=0),
                           clock=lambda: now[0]) as mgr:
        assert not mgr.should_save(1)
        now[0] += 29 * 60
        assert not mgr.should_save(2)
        now[0] += 60
        assert mgr.should_save(3)
        mgr.save(state(3), 3)
        assert not mgr.should_save(4)
        now[0] += 30 * 60
        assert mgr.should_save(5)


def test_hybrid_full_and_diff(tmp_path):
    now = [0.0]
    pol = CheckpointPolicy(interval=15, step_interval=0, full_interval=60)
    kinds = []
    with CheckpointManager(tmp_path, pol, clock=lambda: now[0]) as mgr:
        for step in range(1, 200):
            now[0] += 60                       # one minute per step
            if mgr.should_save(step):
                kinds.append(mgr.save(state(step), step).kind)
        mgr.wait()
    # hourly full, 15-minute differential in between
    assert kinds[:8] == ["full", "diff", "diff", "diff", "full", "diff", "diff", "diff"]


def test_resume_restarts_step_counter(tmp_path):
    pol = CheckpointPolicy(interval=0, step_interval=100)
    with CheckpointManager(tmp_path, pol) as mgr:
        mgr.save(state(250), 250, wait=True)
    with CheckpointManager(tmp_path, pol) as mgr:
        assert mgr.load()["step"] == 250
        assert not mgr.should_save(300)
        assert mgr.should_save(350)


def test_signal_triggers_save_then_stop(tmp_path):
    pol = CheckpointPolicy(interval=0, step_interval=0, signals="SIGUSR1")
    with CheckpointManager(tmp_path, pol) as mgr:
        mgr.install_signal_handlers()
        saved, stopped_at = [], None
        for step in range(1, 100):
            if step == 7:
                os.kill(os.getpid(), signal.SIGUSR1)
            if mgr.should_save(step):
                saved.append(step)
                mgr.save(state(step), step)
            if mgr.should_stop:
                stopped_at = step
                break
        mgr.wait()
        assert saved == [7] and stopped_at == 7
        assert mgr.latest().step == 7
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL   # restored by close()


def test_sigterm_too(tmp_path):
    with CheckpointManager(tmp_path, CheckpointPolicy()) as mgr:
        mgr.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        assert mgr.should_stop and mgr.should_save(1)
