"""The three PDE systems of docs/protocol.md §1: batched sources, exact spectral solves, sampling.

Pure numpy (FFTs via scipy.fft); every function also accepts torch tensors and then runs on
their device (see :mod:`repro.pdes.xp`) -- this package never imports torch itself.

Public API
----------
- :func:`generate` -- draw and solve a batch of one system (dispatches to the modules below).
- :mod:`repro.pdes.poisson`, :mod:`repro.pdes.advdiff`, :mod:`repro.pdes.helmholtz` -- per system
  ``generate`` and ``solve`` (plus ``advdiff.ratio`` / ``advdiff.solve_lambda``).
- :mod:`repro.pdes.spectral` -- the general operator's symbol, ``solve_general`` and the
  Nyquist convention.
- :mod:`repro.pdes.sources` -- the 12 x 12 Gaussian-bump sources and sparsity blocks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from repro.pdes import advdiff, helmholtz, poisson
from repro.pdes.common import Batch, Stream, single_stream
from repro.pdes.xp import Array

__all__ = ["Batch", "Stream", "GENERATORS", "generate", "single_stream", "poisson", "advdiff", "helmholtz"]

#: One batched generator per single system, all with the same signature.
GENERATORS: dict[str, Callable[..., Batch]] = {
    "poisson": poisson.generate,
    "advdiff": advdiff.generate,
    "helmholtz": helmholtz.generate,
}


def generate(
    pde: str,
    stream: Stream,
    vf: np.ndarray,
    n: int,
    low: float,
    high: float,
    *,
    draw_size: int | None = None,
    like: Array | None = None,
    psi_targeting: str = "exact",
) -> Batch:
    """Draw and exactly solve ``len(vf)`` instances of one system.

    Parameters
    ----------
    pde
        ``"poisson"``, ``"advdiff"`` or ``"helmholtz"``.
    stream
        ``stream(r)`` -> ``numpy.random.Generator`` for redraw round r (see :data:`Stream`).
    vf
        Void fraction (sparsity) per sample, shape (B,).
    n
        Grid size (n x n, x_i = i/n).
    low, high
        Range of the physics parameter (e, Psi or integer omega).
    draw_size
        Random numbers are drawn for this many samples (>= B) and the first B kept.
    like
        Array (numpy or torch, any device) fixing backend, device and dtype; default numpy float64.
    psi_targeting
        SYS-2 only: ``"exact"`` (lam solved so that the realised Psi is the target) or
        ``"authors"`` (lam from the authors' lookup table), see :mod:`repro.pdes.advdiff`.

    Returns
    -------
    Batch
        Sources, solutions, native coefficients (and realised Psi for SYS-2).
    """
    if pde not in GENERATORS:
        raise ValueError(f"pde = {pde!r} is invalid: allowed: {', '.join(GENERATORS)}")
    if pde == "advdiff":
        return advdiff.generate(stream, vf, n, low, high, draw_size=draw_size, like=like, psi_targeting=psi_targeting)
    if psi_targeting != "exact":
        raise ValueError(f"psi_targeting = {psi_targeting!r} is invalid for {pde}: only advdiff draws a Psi")
    return GENERATORS[pde](stream, vf, n, low, high, draw_size=draw_size, like=like)
