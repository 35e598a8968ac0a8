"""PyTorch adapter: full training state round trip, RNG, sampler re-derivation, bf16."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.checkpoint.torch import (  # noqa: E402
    TorchCheckpointer, from_numpy_tree, resume, shard_remaining, to_numpy_tree,
)
from slurmft.core.errors import CheckpointError  # noqa: E402


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train_step(model, opt, sched):
    x = torch.randn(4, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def policy(**kw):
    kw.setdefault("interval", 0)
    kw.setdefault("step_interval", 0)
    return CheckpointPolicy(**kw)


def test_resume_continues_bit_identically(tmp_path):
    model, opt, sched = make()
    with CheckpointManager(tmp_path, policy()) as mgr:
        ck = TorchCheckpointer(mgr, model, opt, sched)
        for step in range(1, 4):
            train_step(model, opt, sched)
        ck.save(3, epoch=1, samples_seen=12, extra={"best": 0.5}).result()
        random.random()
        np.random.rand()
        expected = [train_step(model, opt, sched) for _ in range(3)]   # steps 4..6
        expected_py = random.random()
    model2, opt2, sched2 = make(seed=99)
    with CheckpointManager(tmp_path, policy()) as mgr:
        point = resume(mgr, model2, opt2, sched2)
    assert (point.step, point.epoch, point.samples_seen) == (4, 1, 12)
    assert point.extra == {"best": 0.5} and point.checkpoint == "step_000000000003"
    random.random()
    np.random.rand()
    got = [train_step(model2, opt2, sched2) for _ in range(3)]
    assert got == expected                    # model, Adam moments, LR schedule and RNG
    assert random.random() == expected_py
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_fresh_start(tmp_path):
    model, opt, _ = make()
    with CheckpointManager(tmp_path, policy()) as mgr:
        point = TorchCheckpointer(mgr, model, opt).resume()
    assert point.fresh and point.step == 0


def test_save_optimizer_false(tmp_path):
    model, opt, _ = make()
    train_step(model, opt, torch.optim.lr_scheduler.StepLR(opt, 1))
    with CheckpointManager(tmp_path, policy(save_optimizer=False)) as mgr:
        ck = TorchCheckpointer(mgr, model, opt)
        assert "optimizer" not in ck.state(1)
        full = CheckpointManager  # noqa: F841
    with CheckpointManager(tmp_path / "b", policy()) as mgr:
        assert "optimizer" in TorchCheckpointer(mgr, model, opt).state(1)


def test_wrong_model_is_clear_error(tmp_path):
    model, opt, sched = make()
    with CheckpointManager(tmp_path, policy()) as mgr:
        TorchCheckpointer(mgr, model, opt, sched).save(1).result()
    other = torch.nn.Linear(3, 3)
    with CheckpointManager(tmp_path, policy()) as mgr, pytest.raises(CheckpointError, match="does not fit"):
        TorchCheckpointer(mgr, other).resume()


def test_bfloat16_and_non_contiguous():
    t = torch.randn(4, 6).to(torch.bfloat16)
    tree = {"a": t, "b": torch.randn(5, 3).t(), "s": torch.tensor(3)}
    back = from_numpy_tree(to_numpy_tree(tree))
    assert back["a"].dtype == torch.bfloat16 and torch.equal(back["a"], t)
    assert torch.equal(back["b"], tree["b"]) and back["s"].item() == 3


def test_differential_torch_round_trip(tmp_path):
    model, opt, sched = make()
    model[0].weight.requires_grad_(False)      # frozen layer: never rewritten by a diff
    now = [0.0]
    with CheckpointManager(tmp_path, policy(full_interval=60), clock=lambda: now[0]) as mgr:
        ck = TorchCheckpointer(mgr, model, opt, sched)
        full = ck.save(1).result()
        train_step(model, opt, sched)
        now[0] += 600
        diff = ck.save(2).result()
        weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert diff.kind == "diff" and diff.bytes_written < full.bytes_written
    model2, opt2, sched2 = make(seed=5)
    with CheckpointManager(tmp_path, policy()) as mgr:
        assert resume(mgr, model2, opt2, sched2).step == 3
    for k, v in model2.state_dict().items():
        assert torch.equal(v, weights[k])


@pytest.mark.parametrize("old,new", [(4, 3), (3, 2), (2, 4)])
def test_sampler_rederived_for_new_world_size(old, new):
    n, seen = 103, 40
    consumed = shard_remaining(n, 0, 0, 1, epoch=2, seed=7)[:seen]
    rest = [shard_remaining(n, seen, r, new, epoch=2, seed=7) for r in range(new)]
    flat = [i for part in rest for i in part]
    assert sorted(flat + consumed) == list(range(n))      # each sample exactly once
    assert max(len(p) for p in rest) - min(len(p) for p in rest) <= 1
    with pytest.raises(CheckpointError):
        shard_remaining(n, seen, new, new)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_staged_through_pinned_buffers(tmp_path):
    model = torch.nn.Linear(64, 64).cuda()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 64, device="cuda")).sum().backward()
    opt.step()
    with CheckpointManager(tmp_path, policy()) as mgr:
        ck = TorchCheckpointer(mgr, model, opt)
        ck.save(1).result()
        first = dict(ck._staging)
        ck.save(2).result()
        assert first and all(ck._staging[k] is v and v.is_pinned() for k, v in first.items())
    m2 = torch.nn.Linear(64, 64).cuda()
    with CheckpointManager(tmp_path, policy()) as mgr:
        assert TorchCheckpointer(mgr, m2, torch.optim.Adam(m2.parameters())).resume().step == 3
    assert torch.equal(m2.weight, model.weight)


def test_resume_by_name_starts_a_branch_that_owns_latest(tmp_path):
    """TorchCheckpointer.resume(name=...) goes back to an older checkpoint: the next save
    records it as parent, becomes latest, and the next resume continues from it."""
    model, opt, sched = make()
    with CheckpointManager(tmp_path, policy()) as mgr:
        ck = TorchCheckpointer(mgr, model, opt, sched)
        for step in (1, 2, 3):
            train_step(model, opt, sched)
            ck.save(step).result()
    model2, opt2, sched2 = make(seed=5)
    with CheckpointManager(tmp_path, policy()) as mgr:
        ck = TorchCheckpointer(mgr, model2, opt2, sched2)
        point = ck.resume(name="step_000000000001")
        assert point.step == 2
        train_step(model2, opt2, sched2)
        info = ck.save(2).result()
    assert info.parent == "step_000000000001" and info.name != "step_000000000002"
    model3, opt3, sched3 = make(seed=6)
    with CheckpointManager(tmp_path, policy()) as mgr:
        point = resume(mgr, model3, opt3, sched3)
    assert point.checkpoint == info.name and point.step == 3
    for a, b in zip(model2.parameters(), model3.parameters()):
        assert torch.equal(a, b)
