"""The examples' data: a synthetic, seeded regression set and the global batch of each step.

Shared by ``train.py`` (MPI) and ``train_torchft.py`` (torchft replica groups), so both train
the same model on the same samples in the same order whatever the world size: their loss
curves can be compared, and a run resumed on fewer ranks continues the same curve.
"""

from __future__ import annotations

import torch

FEATURES = 16


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of FEATURES inputs and one target (tanh of a random projection, noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def batch_indices(step: int, global_batch: int, n: int, seed: int) -> torch.Tensor:
    """The global batch of ``step``: a seeded permutation per epoch, independent of ranks."""
    per_epoch = n // global_batch
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return order[offset * global_batch:(offset + 1) * global_batch]


def make_model() -> torch.nn.Module:
    """The examples' MLP (seed torch first: every rank and group starts from the same weights)."""
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 1))
