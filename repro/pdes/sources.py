"""Gaussian-bump sources of docs/protocol.md §1.5, built for a whole batch at once.

The source is ``f(x, y) = sum_{j,k} A[j, k] g(y - c_j) g(x - c_k)`` with ``g(d) = exp(-d^2/(2 sigma^2))``,
``sigma = 1/32`` and centres ``c_j = 0.5 + (j - 5.5) * 2 sigma`` (12 per axis, spacing 2 sigma, centred
at 0.5), as in the authors' ``rbf`` (utils/gen_data_*.py).  Because each bump is a product of a
y-factor and an x-factor, the 144-bump sum is the separable matrix product ``G^T A G`` with the
(12, n) factor matrix ``G`` -- 12 exponentials per grid line instead of 144 full-grid ones.

Periodicity: the outermost centres sit at 0.156 from the boundary, i.e. 5 sigma, where a bump has
decayed to exp(-12.5) = 3.7e-6.  We use the *periodic* (minimum-image) distance anyway, so that
the sampled source is exactly a smooth periodic function (what the FFT solve assumes); it differs
from the authors' non-periodic sum by at most 3.7e-6 of a bump's peak.
"""

from __future__ import annotations

import numpy as np

from repro.pdes.xp import Array, namespace

#: Bump width (physical units, unit square).
SIGMA: float = 1.0 / 32.0
#: Bumps per axis (12 x 12 = 144).
BUMPS_PER_AXIS: int = 12
#: Distance between neighbouring centres.
SPACING: float = 2.0 * SIGMA
#: Amplitude range of an active bump (authors: min_act = 1e-3, max_act = 1).
AMP_LOW: float = 1e-3
AMP_HIGH: float = 1.0
#: Probability that a bump is inactive, one value per sparsity block (docs/protocol.md §1.5).
VOID_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)


def bump_centres() -> np.ndarray:
    """Centre coordinates along one axis, shape (12,): spacing 2 sigma, centred at 0.5."""
    offsets = np.arange(BUMPS_PER_AXIS) - (BUMPS_PER_AXIS - 1) / 2.0
    return 0.5 + offsets * SPACING


def void_fractions(index: np.ndarray) -> np.ndarray:
    """Sparsity of sample ``index``: the four blocks interleaved, ``VOID_FRACTIONS[i % 4]``.

    Interleaving (rather than four contiguous quarters as the authors do) keeps the four blocks
    exactly equal in every split *and* makes sample ``i`` independent of the split's size, so a
    smaller dataset is a prefix of a larger one and every prefix is balanced.
    """
    return np.asarray(VOID_FRACTIONS)[np.asarray(index) % len(VOID_FRACTIONS)]


def draw_amplitudes(rng: np.random.Generator, vf: np.ndarray, draw_size: int | None = None) -> np.ndarray:
    """Random bump amplitudes, shape (B, 12, 12) float64, ``[b, iy, ix]``.

    Each bump is inactive with probability ``vf[b]`` and otherwise has amplitude
    U(1e-3, 1); a sample with no active bump gets one random bump switched on (as the authors do).

    Parameters
    ----------
    rng
        The stream to draw from (never the global RNG).
    vf
        Void fraction per sample, shape (B,).
    draw_size
        Draw this many samples' worth of random numbers (>= B) and keep the first B, so that
        sample b's values do not depend on B (prefix property of the datasets).
    """
    vf = np.asarray(vf, dtype=np.float64)
    b = vf.shape[0]
    m = max(b, draw_size or b)
    n_bumps = BUMPS_PER_AXIS**2
    # Always the same four calls with the same shapes: the stream layout is fixed.
    keep_u = rng.random((m, n_bumps))[:b]
    amp = rng.uniform(AMP_LOW, AMP_HIGH, (m, n_bumps))[:b]
    rescue_idx = rng.integers(0, n_bumps, m)[:b]
    rescue_amp = rng.uniform(AMP_LOW, AMP_HIGH, m)[:b]
    active = keep_u > vf[:, None]  # authors: active when U(0,1) > vf
    a = np.where(active, amp, 0.0)
    none = ~active.any(axis=1)
    a[none, rescue_idx[none]] = rescue_amp[none]
    return a.reshape(b, BUMPS_PER_AXIS, BUMPS_PER_AXIS)  # (B, 144) -> (B, iy, ix), row-major like the authors' meshgrid


def bump_factors(n: int, like: Array | None = None) -> Array:
    """The (12, n) matrix ``G[j, i] = exp(-d(x_i, c_j)^2 / (2 sigma^2))`` on the grid ``x_i = i/n``.

    ``d`` is the periodic (minimum-image) distance; see the module docstring.
    """
    x = np.arange(n) / n
    d = x[None, :] - bump_centres()[:, None]  # (12, n)
    d = (d + 0.5) % 1.0 - 0.5
    g = np.exp(-(d**2) / (2.0 * SIGMA**2))
    xp = namespace(like)
    return xp.asarray(g, like=like) if like is not None else g


def make_source(amplitudes: Array, n: int, *, remove_mean: bool) -> Array:
    """Sources on the n x n grid from bump amplitudes, shape (B, n, n), axis 1 = y, axis 2 = x.

    ``f <- f / max f`` per sample, then ``f <- f - mean f`` when ``remove_mean`` (SYS-1, SYS-2).
    Runs on numpy or torch depending on the type of ``amplitudes``.
    """
    xp = namespace(amplitudes)
    g = bump_factors(n, like=amplitudes)  # (12, n)
    # f[b, y, x] = sum_jk g[j, y] A[b, j, k] g[k, x]: (B,12,12)@(12,n) -> (B,12,n); (n,12)@(B,12,n) -> (B,n,n)
    f = xp.matmul(g.T, xp.matmul(amplitudes, g))
    f = f / xp.amax(f, axis=(-2, -1))[:, None, None]
    if remove_mean:
        f = f - xp.mean(f, axis=(-2, -1), keepdims=True)
    return f
