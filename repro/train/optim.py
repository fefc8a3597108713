"""Optimiser and schedule for an ensemble of M independent models trained in one process.

Every parameter carries a leading member dimension M.  Adam is elementwise, so one update over
the stacked tensors is M independent Adam updates; only the learning rate differs per member,
which ``torch.optim.Adam`` cannot express (its lr is one scalar per param group).  The update
below reproduces ``torch.optim.Adam`` (default betas/eps, no weight decay) operation for
operation, so a 1-member ensemble matches it exactly (tested).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine decay from 1 to 0 over the run, no warm-up (docs/protocol.md §2.5)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


class EnsembleAdam:
    """Adam over stacked parameters with one learning rate per ensemble member.

    Parameters
    ----------
    params:
        Tensors of shape (M, ...) that require grad.
    lrs:
        Base learning rate per member, length M.
    """

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.n_members = len(lrs)
        for p in self.params:
            if p.shape[0] != self.n_members:
                raise ValueError(f"parameter of shape {tuple(p.shape)} has no member dimension of size {self.n_members}")
        device = self.params[0].device if self.params else torch.device("cpu")
        self.base_lrs = torch.tensor(list(lrs), dtype=torch.float32, device=device)  # (M,)
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One update with learning rate ``lr_factor * base_lr[m]`` for member m."""
        self.step_count += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1 ** self.step_count
        bias2_sqrt = math.sqrt(1.0 - beta2 ** self.step_count)
        step_size = self.base_lrs * (lr_factor / bias1)  # (M,)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            # step_size (M,) -> (M, 1, ..., 1) to broadcast over the member's parameter block.
            p.addcdiv_(m * step_size.view(-1, *([1] * (p.dim() - 1))), denom, value=-1.0)
