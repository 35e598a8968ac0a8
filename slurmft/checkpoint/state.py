"""A training state split into a small picklable skeleton and its large arrays, and joined again.

Numpy arrays and torch tensors are stored as raw bytes; tensors are recognised without
importing torch, and converted (both ways) by torch.py, imported only when a state holds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArrayRef:
    """Placeholder for an array inside the pickled state skeleton."""

    key: str


@dataclass(frozen=True)
class TensorRef(ArrayRef):
    """Placeholder for a torch tensor: its bytes are stored as an array (dtypes numpy lacks,
    such as bfloat16, as same-width integers) and ``dtype`` ("torch.bfloat16") brings it back."""

    dtype: str = ""


def _is_torch_tensor(obj: Any) -> bool:
    # Duck-typed, so this module never imports torch: torch.Tensor or a subclass of it.
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(obj).__mro__)


#: What a ``map_tree`` visitor returns for a value it does not replace: walk into it.
DESCEND = object()


def map_tree(obj: Any, visit: Callable[[Any, str], Any], path: str = "") -> Any:
    """``obj`` rebuilt top-down with ``visit(value, path)`` in place of each value: where
    ``visit`` returns DESCEND, a mapping (rebuilt as a dict), list or tuple (not a named
    tuple) is walked into and any other value kept. ``path``: ``<parent path>/<key or index>``."""
    out = visit(obj, path)
    if out is not DESCEND:
        return out
    if isinstance(obj, Mapping):
        return {k: map_tree(v, visit, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_tree(v, visit, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_tree(v, visit, f"{path}/{i}") for i, v in enumerate(obj))
    return obj


def split_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """Replace every numpy array and torch tensor in nested dicts/lists/tuples by an ArrayRef
    (TensorRef); return the skeleton and the arrays (CPU tensors as views, no copy)."""
    arrays: dict[str, np.ndarray] = {}

    def visit(obj: Any, path: str) -> Any:
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            arrays[path] = obj
            return ArrayRef(path)
        if _is_torch_tensor(obj):
            # torch is loaded already (this is a tensor): its adapter converts, as for
            # TorchCheckpointer.
            from slurmft.checkpoint.torch import tensor_to_numpy
            try:
                arr, dtype = tensor_to_numpy(obj)
            except (TypeError, RuntimeError):
                return obj             # sparse, quantized, meta...: pickled as they are
            arrays[path] = arr
            return TensorRef(path, dtype)
        return DESCEND

    return map_tree(state, visit, prefix), arrays


def join_state(skeleton: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Put the arrays back into the skeleton; a TensorRef becomes a CPU torch tensor of its
    dtype again (a process without torch gets the stored numpy array)."""
    def visit(obj: Any, path: str) -> Any:  # noqa: ARG001
        if isinstance(obj, TensorRef):
            return _tensor_from_numpy(arrays[obj.key], obj.dtype)
        if isinstance(obj, ArrayRef):
            return arrays[obj.key]
        return DESCEND

    return map_tree(skeleton, visit)


def _tensor_from_numpy(arr: np.ndarray, dtype: str) -> Any:
    try:
        from slurmft.checkpoint.torch import tensor_from_numpy   # imports torch
    except ImportError:
        return arr
    return tensor_from_numpy(arr, dtype)


def bytes_view(arr: np.ndarray) -> memoryview:
    """The raw bytes of ``arr`` (a contiguous copy only when it is not contiguous)."""
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))
