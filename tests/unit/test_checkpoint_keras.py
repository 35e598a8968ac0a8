"""Keras 3 callback (torch backend): periodic saves, resume, signal stop."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
pytest.importorskip("torch")

from slurmft.checkpoint.keras import SlurmFTCheckpoint  # noqa: E402
from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.core.errors import CheckpointError  # noqa: E402

# Keras' torch backend calls np.array(tensor) internally (numpy 2 copy-keyword notice).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def model(units=3):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(units)])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return m


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, x[:, :3] * 2


def policy(**kw):
    kw.setdefault("interval", 0)
    return CheckpointPolicy(**kw)


def test_periodic_save_and_resume(tmp_path):
    x, y = data()
    m = model()
    with CheckpointManager(tmp_path, policy(step_interval=4)) as mgr:
        cb = SlurmFTCheckpoint(mgr)
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
        assert [i.step for i in mgr.list()][:4] == [16, 12, 8, 4]
    weights = [w.copy() for w in m.get_weights()]
    m2 = model()
    with CheckpointManager(tmp_path, policy(step_interval=4)) as mgr:
        start = SlurmFTCheckpoint(mgr).restore(m2)
    assert (start.step, start.epoch, start.checkpoint) == (16, 1, "step_000000000016")
    for a, b in zip(m2.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert int(m2.optimizer.iterations.numpy()) == 16
    # both continue identically: optimizer moments were restored too
    m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    m2.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(m2.get_weights(), m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_signal_saves_and_stops(tmp_path):
    x, y = data()
    m = model()

    class Kill(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    with CheckpointManager(tmp_path, policy(step_interval=0, signals="SIGUSR1")) as mgr:
        mgr.install_signal_handlers()
        m.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[Kill(), SlurmFTCheckpoint(mgr)])
        assert mgr.latest().step == 4
    assert int(m.optimizer.iterations.numpy()) == 4        # stopped right after the save


def test_restore_into_wrong_model(tmp_path):
    x, y = data()
    m = model()
    with CheckpointManager(tmp_path, policy(step_interval=8)) as mgr:
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[SlurmFTCheckpoint(mgr)])
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    other.compile(optimizer="adam", loss="mse")
    with CheckpointManager(tmp_path, policy()) as mgr, pytest.raises(CheckpointError, match="shape"):
        SlurmFTCheckpoint(mgr).restore(other)
