"""Optimiser and schedule for an ensemble of M independent models trained in one process.

Every parameter carries a leading member dimension M.  Adam is elementwise, so one update over
the stacked tensors is M independent Adam updates; only the learning rate differs per member,
which ``torch.optim.Adam`` cannot express (its lr is one scalar per param group).  The update
below reproduces ``torch.optim.Adam`` (default betas/eps, no weight decay) operation for
operation, so a 1-member ensemble matches it exactly (tested).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from repro.train.compiled import compile_failed, compile_update, is_out_of_memory


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine decay from 1 to 0 over the run, no warm-up (docs/protocol.md §2.5)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def adam_update(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
                exp_avg_sqs: Sequence[torch.Tensor], step_size: torch.Tensor, bias2_sqrt: float | torch.Tensor, *,
                beta1: float, beta2: float, eps: float) -> None:
    """One Adam update of every parameter in place (``torch.optim.Adam``'s single-tensor arithmetic).

    ``step_size`` (M,) is each member's ``lr / (1 - beta1^t)``; ``bias2_sqrt`` is
    ``sqrt(1 - beta2^t)``: a Python float eagerly, a 0-d tensor for the compiled update
    (:func:`repro.train.compiled.compile_update`), so that it is one graph for every step.
    """
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / bias2_sqrt).add_(eps)
        # step_size (M,) -> (M, 1, ..., 1) to broadcast over the member's parameter block.
        p.addcdiv_(m * step_size.view(-1, *([1] * (p.dim() - 1))), denom, value=-1.0)


class EnsembleAdam:
    """Adam over stacked parameters with one learning rate per ensemble member.

    Parameters
    ----------
    params:
        Tensors of shape (M, ...) that require grad.
    lrs:
        Base learning rate per member, length M.
    compiled:
        Run the update through :func:`repro.train.compiled.compile_update` (long CPU units,
        :mod:`repro.compilation`); if compiling fails for another reason than memory, this and
        every later update run eagerly (:attr:`compiled` turns False).
    """

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, compiled: bool = False) -> None:
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
        self._update: Callable[..., None] = compile_update(adam_update) if compiled else adam_update
        self._compiled_ran = False

    @property
    def compiled(self) -> bool:
        """Whether the updates run compiled (asked for, and compiling has not failed)."""
        return self._update is not adam_update

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
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        tensors = ([self.params[i] for i in live], [self.params[i].grad for i in live],
                   [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live], step_size)
        hyper = dict(beta1=beta1, beta2=beta2, eps=self.eps)
        if self.compiled:
            # A value that changes every step reaches the graph as a tensor (a float would be a
            # constant that recompiles); eagerly it stays a Python float, as it always was.
            divisor = torch.tensor(bias2_sqrt, dtype=step_size.dtype, device=step_size.device)
            try:
                self._update(*tensors, divisor, **hyper)
                self._compiled_ran = True
                return
            except Exception as err:
                # Only a first call falls back: a compiler failure comes before the graph runs, so
                # nothing was written; after one good run a failure may follow partial writes.
                if self._compiled_ran or is_out_of_memory(err):
                    raise
                compile_failed(err, "optimiser update")
                self._update = adam_update
        adam_update(*tensors, bias2_sqrt, **hyper)
