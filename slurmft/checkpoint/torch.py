"""PyTorch adapter: the ONLY module of slurmft that imports torch.

A plain ``CheckpointManager.save(model.state_dict(), step)`` works too: the store recognises
tensors and converts them with ``tensor_to_numpy``/``tensor_from_numpy`` below.

``TorchCheckpointer`` captures model, optimizer, LR scheduler, RNG states (python, numpy,
torch, CUDA when present), epoch, step and sampler position, and hands them to a
CheckpointManager as numpy views (no copy here: the manager's snapshot is the one copy).

Data parallel: model and optimizer state are replicated, so a checkpoint taken with N ranks
resumes with any number of ranks. Rank-specific sampler state is not stored; it is derived
from the global ``samples_seen`` with ``shard_remaining`` (every sample of the epoch that was
not consumed yet is dealt out exactly once across the new ranks).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from slurmft.checkpoint.manager import CheckpointManager, SaveHandle
from slurmft.checkpoint.state import DESCEND, map_tree
from slurmft.core.errors import CheckpointError

_MARK = "__torch_tensor__"
# dtypes numpy lacks are stored as same-width integers and viewed back on load.
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def tensor_to_numpy(tensor: torch.Tensor, staging: dict[str, torch.Tensor] | None = None,
                    path: str = "") -> tuple[np.ndarray, str]:
    """A CPU numpy view of ``tensor`` (no copy for a contiguous CPU tensor) and its dtype name
    ("torch.bfloat16"). Dtypes numpy lacks are viewed as same-width integers.

    Device tensors are copied (non-blocking) into ``staging[path]`` when given: pinned host
    buffers reused across saves; call ``torch.cuda.synchronize()`` before reading them.
    """
    t = tensor.detach()
    if t.device.type != "cpu":
        if staging is None:
            t = t.cpu()
        else:
            buf = staging.get(path)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available())
                staging[path] = buf
            buf.copy_(t, non_blocking=True)
            t = buf
    if not t.is_contiguous():
        t = t.contiguous()
    dtype = str(t.dtype)
    try:
        arr = t.numpy()
    except TypeError:
        arr = t.view(_INT_VIEW[t.element_size()]).numpy()
    return arr, dtype


def tensor_from_numpy(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of ``tensor_to_numpy``: a CPU tensor of ``dtype`` sharing ``arr``'s memory."""
    torch_dtype = getattr(torch, dtype.split(".", 1)[1])
    # Not np.ascontiguousarray: it turns a 0-d array (e.g. Adam's step) into shape (1,).
    t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy(order="C"))
    return t.view(torch_dtype) if t.dtype != torch_dtype else t


def to_numpy_tree(obj: Any, staging: dict[str, torch.Tensor] | None = None,
                  _path: str = "") -> Any:
    """Replace every tensor by ``{__torch_tensor__: ndarray, dtype: str}`` (CPU view; see
    ``tensor_to_numpy`` for ``staging``)."""
    def visit(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            arr, dtype = tensor_to_numpy(value, staging, path)
            return {_MARK: arr, "dtype": dtype}
        return DESCEND

    return map_tree(obj, visit, _path)


def from_numpy_tree(obj: Any) -> Any:
    """Inverse of ``to_numpy_tree``."""
    def visit(value: Any, path: str) -> Any:  # noqa: ARG001
        if isinstance(value, dict) and _MARK in value and len(value) == 2:
            return tensor_from_numpy(value[_MARK], value["dtype"])
        return DESCEND

    return map_tree(obj, visit)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuples(v) for v in obj)
    return obj


@dataclass
class ResumePoint:
    """Where to continue after ``resume``."""

    step: int = 0                  # the next step to run
    epoch: int = 0
    samples_seen: int = 0          # global samples consumed in ``epoch``
    checkpoint: str = ""           # the checkpoint loaded ("" for a fresh start)
    world_size: int = 1            # world size of the run that saved it
    extra: dict = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        return not self.checkpoint


def shard_remaining(num_samples: int, samples_seen: int, rank: int, world_size: int,
                    epoch: int = 0, seed: int = 0, shuffle: bool = True) -> list[int]:
    """This rank's share of the epoch's samples not yet consumed, for any world size.

    The epoch order is a permutation seeded by ``seed + epoch`` (as DistributedSampler does);
    the first ``samples_seen`` are done, the rest are dealt round-robin to the ranks.
    """
    if not 0 <= rank < world_size:
        raise CheckpointError(f"rank {rank} out of range for world size {world_size}")
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(num_samples, generator=g).tolist()
    else:
        order = list(range(num_samples))
    return order[samples_seen:][rank::world_size]


class TorchCheckpointer:
    """Save and resume a PyTorch training loop through a CheckpointManager."""

    def __init__(self, manager: CheckpointManager, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        self.manager = manager
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._staging: dict[str, torch.Tensor] = {}   # pinned host copies of GPU tensors

    def state(self, step: int, epoch: int = 0, samples_seen: int = 0,
              extra: Mapping[str, Any] | None = None) -> dict:
        """The full training state as numpy views (no copy)."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "step": step, "epoch": epoch, "samples_seen": samples_seen,
            "world_size": self.manager.world_size,
            "rng": rng_state(),
            "extra": dict(extra or {}),
        }
        if self.optimizer is not None and self.manager.policy.save_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        tree = to_numpy_tree(state, self._staging)
        if self._staging and torch.cuda.is_available():
            torch.cuda.synchronize()        # the non-blocking device-to-host copies are done
        return tree

    def save(self, step: int, epoch: int = 0, samples_seen: int = 0,
             extra: Mapping[str, Any] | None = None, **kwargs: Any) -> SaveHandle:
        """Checkpoint after ``step`` completed; the loop continues at ``step + 1``."""
        return self.manager.save(self.state(step, epoch, samples_seen, extra), step,
                                 meta={"epoch": epoch, "samples_seen": samples_seen}, **kwargs)

    def resume(self, restore_rng: bool = True, name: str | None = None) -> ResumePoint:
        """Load the newest valid checkpoint (or ``name``) into model/optimizer/scheduler."""
        if name is None:
            raw = self.manager.load()
            if raw is None:
                return ResumePoint()
            info = self.manager.latest_loaded
        else:
            info, raw = self.manager.load_info(name)
        return self.apply(raw, info.name if info else "", restore_rng)

    def apply(self, raw: Any, checkpoint: str, restore_rng: bool = True) -> ResumePoint:
        """Put a loaded state into the model, optimizer, scheduler and RNGs."""
        state = from_numpy_tree(raw)
        try:
            self.model.load_state_dict(state["model"])
            if self.optimizer is not None and "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint} does not fit this model: {exc}") from None
        if restore_rng:
            set_rng_state(state["rng"])
        return ResumePoint(step=int(state["step"]) + 1, epoch=int(state["epoch"]),
                           samples_seen=int(state["samples_seen"]), checkpoint=checkpoint,
                           world_size=int(state.get("world_size", 1)),
                           extra=dict(state.get("extra") or {}))


def resume(manager: CheckpointManager, model: torch.nn.Module,
           optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
           restore_rng: bool = True) -> ResumePoint:
    """Shortcut: ``TorchCheckpointer(manager, model, optimizer, scheduler).resume()``."""
    return TorchCheckpointer(manager, model, optimizer, scheduler).resume(restore_rng)
