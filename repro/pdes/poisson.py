"""SYS-1: anisotropic Poisson ``-div(kappa K grad u) = f``, mean(u) = 0 (docs/protocol.md §1.2).

``K = R(-theta) diag(1, e) R(theta)``, ``theta ~ U(0, 2 pi)``, ``e ~ U(low, high)``; the stored
coefficients are ``kappa K11, kappa K22, kappa K12`` (authors' utils/gen_data_poisson.py).
"""

from __future__ import annotations

import numpy as np

from repro.config import KAPPA
from repro.pdes.common import Batch, Stream
from repro.pdes.sources import draw_amplitudes, make_source
from repro.pdes.spectral import solve_general
from repro.pdes.xp import Array, namespace


def diffusion_tensor(theta: Array, e: Array) -> tuple[Array, Array, Array]:
    """Entries ``(K11, K22, K12)`` of ``K = R(-theta) diag(1, e) R(theta)``, each shape (B,).

    With ``R(theta) = [[c, -s], [s, c]]``: ``K11 = c^2 + e s^2``, ``K22 = s^2 + e c^2``,
    ``K12 = (e - 1) s c``; the eigenvalues are exactly {1, e}.
    """
    xp = namespace(theta, e)
    c, s = xp.cos(theta), xp.sin(theta)
    return c * c + e * s * s, s * s + e * c * c, (e - 1.0) * s * c


def solve(f: Array, k11: Array, k22: Array, k12: Array) -> Array:
    """Solve ``-div(K grad u) = f`` (K already includes kappa) with mean(u) = 0; f (B, n, n)."""
    return solve_general(f, k11, k22, k12)[0]


def generate(
    stream: Stream,
    vf: np.ndarray,
    n: int,
    low: float,
    high: float,
    *,
    draw_size: int | None = None,
    like: Array | None = None,
) -> Batch:
    """Draw and solve ``len(vf)`` SYS-1 instances with anisotropy ``e ~ U(low, high)``.

    Parameters
    ----------
    stream
        Random streams per redraw round (SYS-1 uses round 0 only).
    vf
        Void fraction per sample, shape (B,).
    n
        Grid size.
    low, high
        Range of the eigenvalue e.
    draw_size
        Draw random numbers for this many samples (>= B) and keep the first B (prefix property).
    like
        An array whose backend/device/dtype the computation uses (default numpy float64).

    Returns
    -------
    Batch
        ``tensor`` = (kappa K11, kappa K22, kappa K12), shape (B, 3).
    """
    rng = stream(0)
    b = len(vf)
    m = max(b, draw_size or b)
    amplitudes = draw_amplitudes(rng, vf, m)
    theta = rng.uniform(0.0, 2.0 * np.pi, m)[:b]
    e = rng.uniform(low, high, m)[:b]
    tensor = KAPPA * np.stack(diffusion_tensor(theta, e), axis=1)  # (B, 3)
    ref = np.zeros((), dtype=np.float64) if like is None else like
    xp = namespace(ref)
    f = make_source(xp.asarray(amplitudes, like=ref), n, remove_mean=True)
    t = xp.asarray(tensor, like=ref)
    u, f = solve_general(f, t[:, 0], t[:, 1], t[:, 2])
    return Batch(source=f, solution=u, tensor=t)
