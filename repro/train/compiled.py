"""The training forward through ``torch.compile`` (inductor), and the eager fallback.

Whether a unit compiles is :func:`repro.compilation.compiles`'s decision; this module only makes
the compiled callable.  It shares the model's parameters, so the optimiser, the best-state copies
and the (eager) evaluations see the same tensors.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["compile_failed", "compile_forward"]

log = logging.getLogger(__name__)


def compile_forward(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model``'s forward compiled for fixed shapes (a unit's batch shape does not change, except
    a last partial batch, which compiles once more).

    Dynamo's per-process caches are cleared first: a worker trains many units, each a new model
    of its own shapes, and past 8 variants of one function dynamo silently runs it eagerly
    (``recompile_limit``).  Inductor's on-disk cache is kept, so a shape compiled before, in any
    process, compiles again in seconds.
    """
    torch._dynamo.reset()
    return torch.compile(model, dynamic=False)


def compile_failed(err: BaseException) -> None:
    """Say once, at warning level, why a unit trains eagerly after all."""
    log.warning("torch.compile failed (%s: %s); this unit trains eagerly", type(err).__name__,
                str(err).splitlines()[0] if str(err) else "")
