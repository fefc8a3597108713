"""What every system's generator returns, and how it receives its random streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from repro.pdes.xp import Array

#: ``stream(r)`` is the generator for redraw round ``r`` of one batch (round 0 = first draw).
#: A separate stream per round keeps sample b's values independent of which *other* samples
#: needed a redraw, and of the batch size.
Stream = Callable[[int], np.random.Generator]


@dataclass(frozen=True)
class Batch:
    """A batch of solved PDE instances (numpy or torch arrays, float64 unless noted).

    Attributes
    ----------
    source
        (B, n, n) right-hand sides f, axis 1 = y, axis 2 = x.
    solution
        (B, n, n) exact solutions u.
    tensor
        (B, T) coefficient values in the order of ``repro.config.COEFFICIENTS[pde]``.
    ratio
        (B,) realised advection-to-diffusion ratio Psi (SYS-2 only), else ``None``.
    """

    source: Array
    solution: Array
    tensor: Array
    ratio: Array | None = None


def single_stream(rng: np.random.Generator) -> Stream:
    """A :data:`Stream` that hands out one generator for every round (tests, ad-hoc use)."""
    return lambda _round: rng
