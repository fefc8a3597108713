"""The training step through ``torch.compile`` (inductor), and the eager fallback.

Whether a unit compiles is :func:`repro.compilation.compiles`'s decision; this module only makes
the compiled callables -- a batch's loss (the model's forward and the loss as one graph; its
backward comes with it) and the optimiser's update -- and says which failures are the compiler's.
The compiled loss shares the model's parameters, so the optimiser, the best-state copies and the
(eager) evaluations see the same tensors.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

#: ``(x, y) -> (per-member loss (M,), the scalar to differentiate)``: see :func:`repro.train.loop.batch_loss`.
BatchLoss = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

__all__ = ["compile_batch_loss", "compile_failed", "compile_update", "is_out_of_memory"]

log = logging.getLogger(__name__)


def compile_batch_loss(batch_loss: BatchLoss) -> BatchLoss:
    """A batch's loss (:func:`repro.train.loop.batch_loss`: the model's forward, the loss and the
    masked sum that is differentiated) compiled for fixed shapes as one graph (a unit's batch shape
    does not change, except a last partial batch, which compiles once more).  With the loss inside,
    inductor fuses its element-wise work into the forward's last kernels and its gradient into the
    backward's first (one thread, 16², batch 32, xxs-m8 / xs-m8 / s: 8 / 7 / 3 % faster per step
    than the forward compiled alone, timed side by side).

    Dynamo's per-process caches are cleared first: a worker trains many units, each a new model
    of its own shapes, and past 8 variants of one function dynamo silently runs it eagerly
    (``recompile_limit``).  Inductor's on-disk cache is kept, so a shape compiled before, in any
    process, compiles again in seconds.
    """
    torch._dynamo.reset()
    return torch.compile(batch_loss, dynamic=False)


def compile_update(update: Callable[..., None]) -> Callable[..., None]:
    """An in-place optimiser update compiled as one graph (:func:`repro.train.optim.adam_update`).

    Its per-parameter loop becomes a few fused kernels instead of eight passes over every tensor
    (xs-m8, one thread, CPU time: 0.86 -> 0.40 ms per update with 1 member, 3.3 -> 0.95 ms with 4).
    Make it after :func:`compile_batch_loss`: that one's dynamo reset, after a first call, would make
    it compile again.  Values that change every step must reach it as tensors, so it compiles once.
    """
    return torch.compile(update, dynamic=False, fullgraph=True)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's refusal.

    Such a failure is not the compiler's: it goes to the engine's memory handling (smaller
    ensembles) instead of an eager retry.
    """
    text = str(err).lower()
    return (isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def compile_failed(err: BaseException, what: str) -> None:
    """Say once, at warning level, why part of a unit trains eagerly after all."""
    log.warning("torch.compile of the training %s failed (%s: %s); it runs eagerly for this unit", what,
                type(err).__name__, str(err).splitlines()[0] if str(err) else "")
