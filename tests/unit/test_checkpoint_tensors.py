"""Torch tensors through the plain CheckpointManager API take the array path: sizes on disk,
differential saves and an exact round trip (bfloat16 included), as through TorchCheckpointer."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.checkpoint.store import (  # noqa: E402
    DATA, META, Store, TensorRef, join_state, split_state, step_name,
)


def policy(**kw):
    kw.setdefault("interval", 0)
    kw.setdefault("step_interval", 0)
    return CheckpointPolicy(**kw)


def model_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(256, 128, generator=g),
        "layer.bias": torch.randn(128, generator=g).to(torch.bfloat16),
        "half": torch.randn(64, generator=g).to(torch.float16),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(32, generator=g) > 0.5,
        "nested": {"list": [torch.arange(10), np.arange(5.0)], "tuple": (torch.ones(3, 3).t(),)},
        "lr": 0.1,
    }


def tensor_bytes(state) -> int:
    _, arrays = split_state(state)
    return sum(a.nbytes for a in arrays.values())


def assert_same(loaded, original):
    if isinstance(original, torch.Tensor):
        assert isinstance(loaded, torch.Tensor), type(loaded)
        assert loaded.dtype == original.dtype and loaded.device.type == "cpu"
        assert torch.equal(loaded, original.detach().cpu())
    elif isinstance(original, np.ndarray):
        assert isinstance(loaded, np.ndarray) and np.array_equal(loaded, original)
    elif isinstance(original, dict):
        assert loaded.keys() == original.keys()
        for k in original:
            assert_same(loaded[k], original[k])
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) and len(loaded) == len(original)
        for a, b in zip(loaded, original):
            assert_same(a, b)
    else:
        assert loaded == original


def test_split_state_turns_tensors_into_array_views():
    state = model_state()
    skeleton, arrays = split_state(state)
    assert isinstance(skeleton["layer.weight"], TensorRef)
    assert skeleton["layer.bias"].dtype == "torch.bfloat16"
    assert arrays["/layer.bias"].dtype == np.int16              # numpy has no bfloat16
    # CPU tensors are not copied here: the manager's snapshot is the one copy
    assert np.shares_memory(arrays["/layer.weight"], state["layer.weight"].numpy())
    assert skeleton["lr"] == 0.1
    assert_same(join_state(skeleton, arrays), state)


def test_plain_state_dict_is_written_as_arrays_and_round_trips(tmp_path):
    state = model_state()
    with CheckpointManager(tmp_path, policy()) as mgr:
        info = mgr.save(state, 1, wait=True).result()
        loaded = mgr.load()
    expected = tensor_bytes(state)
    assert info.bytes_written >= expected > 128 * 1024   # the tensors are in data.bin ...
    ckpt = tmp_path / step_name(1)
    assert (ckpt / DATA).stat().st_size == info.bytes_written
    assert (ckpt / META).stat().st_size < 4096           # ... not pickled into meta.pkl
    assert Store(tmp_path).list()[0].bytes_written == info.bytes_written
    assert_same(loaded, state)


def test_differential_saves_of_tensors_write_only_what_changed(tmp_path):
    state = model_state()
    with CheckpointManager(tmp_path, policy(full_interval=1000)) as mgr:
        full = mgr.save(state, 1, wait=True).result()
        state["layer.bias"] += 1                          # bf16 tensor changes, rest does not
        diff = mgr.save(state, 2, wait=True).result()
    assert (full.kind, diff.kind) == ("full", "diff")
    assert 0 < diff.bytes_written < full.bytes_written / 10
    with CheckpointManager(tmp_path, policy()) as mgr:
        assert_same(mgr.load(), state)


def test_tensors_requiring_grad_and_parameters(tmp_path):
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    state = {"model": layer.state_dict(), "param": layer.weight}    # a Parameter itself too
    with CheckpointManager(tmp_path, policy()) as mgr:
        assert mgr.save(state, 3, wait=True).result().bytes_written > 0
        loaded = mgr.load()
    assert loaded["param"].dtype == torch.bfloat16
    assert torch.equal(loaded["param"], layer.weight.detach())
    fresh = torch.nn.Linear(8, 4).to(torch.bfloat16)
    fresh.load_state_dict(loaded["model"])
    assert torch.equal(fresh.weight, layer.weight)


def test_a_tensor_numpy_cannot_view_stays_pickled(tmp_path):
    sparse = torch.eye(4).to_sparse()
    with CheckpointManager(tmp_path, policy()) as mgr:
        mgr.save({"s": sparse, "w": torch.ones(4)}, 1, wait=True)
        loaded = mgr.load()
    assert loaded["s"].is_sparse and torch.equal(loaded["s"].to_dense(), torch.eye(4))


def test_without_torch_a_tensor_loads_as_its_stored_array(monkeypatch):
    skeleton, arrays = split_state({"w": torch.arange(4, dtype=torch.int32)})
    monkeypatch.setitem(sys.modules, "slurmft.checkpoint.torch", None)   # import fails
    loaded = join_state(skeleton, arrays)
    assert isinstance(loaded["w"], np.ndarray) and loaded["w"].tolist() == [0, 1, 2, 3]
