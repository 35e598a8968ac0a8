"""Keras 3 adapter: a callback with the same policy and guarantees as the PyTorch one.

Works with any Keras 3 backend; tested with ``KERAS_BACKEND=torch`` (tensorflow-cpu is not
installed here: too heavy). Optional: ``pip install keras``. Usage::

    mgr = CheckpointManager(policy.resolve_path(), policy)
    mgr.install_signal_handlers()
    cb = SlurmFTCheckpoint(mgr)
    start = cb.restore(model)                      # builds the optimizer, loads weights
    model.fit(x, y, epochs=10, initial_epoch=start.epoch, callbacks=[cb])

The callback asks the manager at every batch end (global step = optimizer iterations), saves
weights + optimizer variables + epoch/step, and stops training cleanly after a signal save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from slurmft.checkpoint.manager import CheckpointManager
from slurmft.core.errors import CheckpointError


@dataclass
class KerasResumePoint:
    step: int = 0          # optimizer iterations already done
    epoch: int = 0         # pass as fit(initial_epoch=...)
    checkpoint: str = ""


def _numpy(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


class SlurmFTCheckpoint(keras.callbacks.Callback):
    """Save on the manager's policy at batch ends; stop after a signal-triggered save."""

    def __init__(self, manager: CheckpointManager) -> None:
        super().__init__()
        self.manager = manager
        self.epoch = 0
        self.last_handle = None

    def _ensure_optimizer(self, model: keras.Model) -> None:
        opt = model.optimizer
        if opt is not None and not opt.built:
            opt.build(model.trainable_variables)

    def state(self, model: keras.Model, step: int) -> dict:
        state: dict[str, Any] = {
            "weights": [_numpy(v) for v in model.weights],
            "step": step, "epoch": self.epoch,
        }
        if model.optimizer is not None and self.manager.policy.save_optimizer:
            state["optimizer"] = [_numpy(v) for v in model.optimizer.variables]
        return state

    def restore(self, model: keras.Model) -> KerasResumePoint:
        """Load the newest valid checkpoint into ``model``; where to continue."""
        self._ensure_optimizer(model)
        state = self.manager.load()
        if state is None:
            return KerasResumePoint()
        info = self.manager.latest_loaded
        name = info.name if info else ""
        _assign(model.weights, state["weights"], f"{name}: model weights")
        if "optimizer" in state and model.optimizer is not None:
            _assign(model.optimizer.variables, state["optimizer"], f"{name}: optimizer")
        self.epoch = int(state["epoch"])
        return KerasResumePoint(step=int(state["step"]), epoch=self.epoch, checkpoint=name)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        step = int(_numpy(self.model.optimizer.iterations))
        if self.manager.should_save(step):
            self.last_handle = self.manager.save(self.state(self.model, step), step,
                                                 meta={"epoch": self.epoch})
        if self.manager.should_stop:
            self.model.stop_training = True

    def on_train_end(self, logs: Any = None) -> None:
        self.manager.wait()


def _assign(variables: list, values: list, what: str) -> None:
    if len(variables) != len(values):
        raise CheckpointError(f"{what}: checkpoint has {len(values)} variables, model {len(variables)}")
    for var, val in zip(variables, values):
        if tuple(var.shape) != tuple(np.shape(val)):
            raise CheckpointError(
                f"{what}: {var.path} has shape {tuple(var.shape)}, checkpoint {tuple(np.shape(val))}")
        var.assign(val)
