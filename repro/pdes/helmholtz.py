"""SYS-3: Helmholtz ``-kappa Laplace(u) - omega u = f`` (sign as in the authors' code).

``omega`` is an integer drawn uniformly from ``{low, ..., high}``; sources are *not* mean-free
(authors' utils/gen_data_helmholtz.py).  Near resonance, ``kappa (2 pi |k|)^2 ~ omega``, the
solution blows up; like the authors we redraw the source and omega of every sample with
``max |u| > 2``.  The redraw loop touches only the failing samples and uses a fresh stream per
round.  An *exact* resonance (symbol = 0; with integer omega only ``omega = 0`` at ``k = 0``) is
handled by the solver: that mode is removed from the stored source and set to 0 in u.
"""

from __future__ import annotations

import numpy as np

from repro.config import KAPPA
from repro.pdes.common import Batch, Stream
from repro.pdes.sources import draw_amplitudes, make_source
from repro.pdes.spectral import solve_general
from repro.pdes.xp import Array, namespace

#: Samples with a larger peak |u| are redrawn (authors: ``while sol_max > 2``).
MAX_ABS_U: float = 2.0
#: Give up after this many redraw rounds (a range where almost every omega resonates).
MAX_ROUNDS: int = 500


def solve(f: Array, kappa: Array | float, omega: Array) -> tuple[Array, Array]:
    """Solve ``-kappa Laplace(u) - omega u = f``; f (B, n, n), omega (B,).

    Returns ``(u, f_consistent)``: exactly resonant modes are removed from the source.
    """
    return solve_general(f, kappa, kappa, None, None, None, omega)


def _draw(rng: np.random.Generator, vf: np.ndarray, m: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes (B, 12, 12) and integer omega (B,) for one round (draw layout fixed by ``m``)."""
    b = len(vf)
    amplitudes = draw_amplitudes(rng, vf, m)
    omega = rng.integers(int(low), int(high) + 1, m)[:b].astype(np.float64)
    return amplitudes, omega


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
    """Draw and solve ``len(vf)`` SYS-3 instances with integer ``omega`` in ``[low, high]``.

    Parameters are as in :func:`repro.pdes.poisson.generate`; ``low``/``high`` are integers
    (inclusive).  ``tensor`` = (kappa, omega), shape (B, 2); every sample has max|u| <= 2.

    Raises
    ------
    RuntimeError
        When some sample still violates max|u| <= 2 after :data:`MAX_ROUNDS` redraws.
    """
    b = len(vf)
    m = max(b, draw_size or b)
    ref = np.zeros((), dtype=np.float64) if like is None else like
    xp = namespace(ref)
    amplitudes, omega = _draw(stream(0), vf, m, low, high)
    f, u = _solve_rows(amplitudes, omega, n, ref)
    bad = xp.to_numpy(xp.amax(xp.abs(u), axis=(-2, -1)) > MAX_ABS_U)
    for r in range(1, MAX_ROUNDS + 1):
        if not bad.any():
            break
        # Redraw only the failing rows; candidates for row i come from row i of round r's draw.
        rows = np.flatnonzero(bad)
        cand_amp, cand_omega = _draw(stream(r), vf, m, low, high)
        amplitudes[rows], omega[rows] = cand_amp[rows], cand_omega[rows]
        f_new, u_new = _solve_rows(amplitudes[rows], omega[rows], n, ref)
        idx = xp.index(rows, ref)
        f[idx], u[idx] = f_new, u_new
        still = xp.to_numpy(xp.amax(xp.abs(u_new), axis=(-2, -1)) > MAX_ABS_U)
        bad[:] = False
        bad[rows[still]] = True
    if bad.any():
        raise RuntimeError(
            f"helmholtz omega in [{low:g}, {high:g}]: {int(bad.sum())} samples still have max|u| > "
            f"{MAX_ABS_U:g} after {MAX_ROUNDS} redraws (range too close to resonance)"
        )
    tensor = np.stack([np.full(b, KAPPA), omega], axis=1)  # (B, 2) = [kappa, omega]
    return Batch(source=f, solution=u, tensor=xp.asarray(tensor, like=ref))


def _solve_rows(amplitudes: np.ndarray, omega: np.ndarray, n: int, ref: Array) -> tuple[Array, Array]:
    """Sources and solutions (each (B, n, n)) for the given amplitudes and omegas."""
    xp = namespace(ref)
    f = make_source(xp.asarray(amplitudes, like=ref), n, remove_mean=False)
    u, f = solve(f, KAPPA, xp.asarray(omega, like=ref))
    return f, u
