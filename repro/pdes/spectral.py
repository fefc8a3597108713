"""Exact Fourier solves of the general steady operator on the periodic unit square.

All three systems are special cases of

    L u = -div(K grad u) + v . grad u - omega u = f,

with constant coefficients per sample.  For ``u = exp(2 pi i k.x)`` (k integer), ``L`` acts as the
symbol

    L(k) = 4 pi^2 (K11 kx^2 + K22 ky^2 + 2 K12 kx' ky') + 2 pi i (v1 kx' + v2 ky') - omega.

Grid and axes: ``x_i = i/n``; array axis -1 is x and axis -2 is y (authors' layout), so ``K11``
pairs with ``kx`` along the last axis.  We use ``rfft2`` over the last two axes: ``kx = 0..n/2``
(last axis, length n/2+1), ``ky = 0..n/2-1, -n/2..-1`` (second-to-last axis).

Nyquist convention (stated once, used everywhere): at the Nyquist row/column (``|k| = n/2``) a
first derivative of a real grid function has no real value, so **first-derivative wavenumbers
``kx', ky'`` are zero there** (the advection term and the mixed ``K12`` term vanish on those
modes), while the pure second derivatives keep ``kx^2 = (n/2)^2``.  This keeps the symbol
Hermitian, so solutions are exactly real.  The authors take ``k = +n/2`` instead; the two
conventions differ only on the Nyquist modes, which residual checks therefore leave out.

Modes where the symbol vanishes (``k = 0`` for SYS-1/SYS-2, where mean(u) = 0 is imposed; an exact
Helmholtz resonance, e.g. ``omega = 0``) get ``u_hat = 0`` and are removed from the returned
consistent source, so that ``L u = f`` holds for the stored pair.
"""

from __future__ import annotations

import math

import numpy as np

from repro.pdes.xp import Array, namespace

TWO_PI = 2.0 * math.pi
#: |L(k)| below this counts as an exact resonance (the smallest non-zero |L| here is ~1e-2).
RESONANCE_TOL = 1e-12


def wavenumbers(n: int, like: Array | None = None) -> tuple[Array, Array, Array, Array]:
    """Integer wavenumbers of ``rfft2`` on an n x n grid.

    Returns
    -------
    ky, kx, ky1, kx1
        ``ky`` (n, 1) and ``kx`` (1, n/2+1) for second derivatives (Nyquist kept: ky = -n/2,
        kx = +n/2); ``ky1``, ``kx1`` the same with the Nyquist entries set to 0, for first
        derivatives (see the module docstring).
    """
    ky = np.fft.fftfreq(n, d=1.0 / n).reshape(n, 1)
    kx = np.fft.rfftfreq(n, d=1.0 / n).reshape(1, n // 2 + 1)
    ky1 = np.where(np.abs(ky) == n // 2, 0.0, ky)
    kx1 = np.where(np.abs(kx) == n // 2, 0.0, kx)
    if like is None:
        return ky, kx, ky1, kx1
    xp = namespace(like)
    return tuple(xp.asarray(k, like=like) for k in (ky, kx, ky1, kx1))  # type: ignore[return-value]


def parseval_weights(n: int, like: Array | None = None) -> Array:
    """Weights (1, n/2+1) turning a sum over the rfft half-spectrum into one over the full one.

    Columns ``kx = 0`` and ``kx = n/2`` appear once in the full spectrum, all others twice.
    """
    w = np.full((1, n // 2 + 1), 2.0)
    w[0, 0] = 1.0
    w[0, -1] = 1.0
    return w if like is None else namespace(like).asarray(w, like=like)


def _col(c: Array | float | None, like: Array) -> Array | None:
    """A per-sample coefficient (B,) or scalar as a (B, 1, 1) array broadcasting over modes."""
    if c is None:
        return None
    xp = namespace(like)
    c = xp.asarray(c, like=like)
    return c.reshape(-1, 1, 1) if c.ndim else c


def symbol_parts(
    n: int,
    like: Array,
    k11: Array | float,
    k22: Array | float,
    k12: Array | float | None = None,
    v1: Array | float | None = None,
    v2: Array | float | None = None,
    omega: Array | float | None = None,
) -> tuple[Array, Array | None]:
    """Real and imaginary parts of ``L(k)``, each (B, n, n/2+1) (imaginary ``None`` when v = 0).

    Coefficients are per-sample arrays (B,) or scalars; ``None`` means the term is absent.
    """
    ky, kx, ky1, kx1 = wavenumbers(n, like)
    c = TWO_PI**2
    re = c * (_col(k11, like) * kx**2 + _col(k22, like) * ky**2)  # (B, n, n/2+1)
    if k12 is not None:
        re = re + (2.0 * c) * _col(k12, like) * (kx1 * ky1)
    if omega is not None:
        re = re - _col(omega, like)
    im = None
    if v1 is not None or v2 is not None:
        im = TWO_PI * (_col(0.0 if v1 is None else v1, like) * kx1 + _col(0.0 if v2 is None else v2, like) * ky1)
        im = im + 0.0 * re  # broadcast to (B, n, n/2+1)
    return re, im


def solve_general(
    f: Array,
    k11: Array | float,
    k22: Array | float,
    k12: Array | float | None = None,
    v1: Array | float | None = None,
    v2: Array | float | None = None,
    omega: Array | float | None = None,
) -> tuple[Array, Array]:
    """Solve ``-div(K grad u) + v.grad u - omega u = f`` exactly in Fourier space, batched.

    Parameters
    ----------
    f
        Sources, shape (B, n, n), real (numpy or torch).
    k11, k22, k12, v1, v2, omega
        Per-sample coefficients, shape (B,) or scalars; ``None`` = absent term.

    Returns
    -------
    u, f_consistent
        The solution (B, n, n) and the source with the modes where ``L(k) = 0`` removed (equal to
        ``f`` up to rounding for mean-free SYS-1/SYS-2 sources).  ``L u = f_consistent`` holds
        exactly in the convention of the module docstring; mean(u) = 0 where L(0) = 0.
    """
    xp = namespace(f)
    n = f.shape[-1]
    re, im = symbol_parts(n, f, k11, k22, k12, v1, v2, omega)
    f_hat = xp.rfft2(f)  # (B, n, n/2+1)
    mag2 = re * re if im is None else re * re + im * im
    resonant = mag2 <= RESONANCE_TOL**2
    # 1/L with 0 at resonant modes; conj(L)/|L|^2 avoids a complex division when L is real.
    safe = xp.where(resonant, 1.0, mag2)
    if im is None:
        inv = xp.where(resonant, 0.0, re / safe)
        u_hat = f_hat * inv
    else:
        inv_re = xp.where(resonant, 0.0, re / safe)
        inv_im = xp.where(resonant, 0.0, -im / safe)
        u_hat = f_hat * (inv_re + 1j * inv_im)
    u = xp.irfft2(u_hat, n)
    return u, _remove_resonant_modes(f, f_hat, resonant)


def _remove_resonant_modes(f: Array, f_hat: Array, resonant: Array) -> Array:
    """``f`` minus its components on resonant modes (cheap when only k = 0 is resonant)."""
    xp = namespace(f)
    n = f.shape[-1]
    off_zero = resonant[:, 1:, :].any() or resonant[:, :1, 1:].any()
    if bool(off_zero):  # never seen with integer omega, kept for exactness
        return xp.irfft2(xp.where(resonant, 0.0 * f_hat, f_hat), n)
    zero = resonant[:, 0, 0]  # (B,)
    mean = f_hat[:, 0, 0].real / (n * n)  # (B,) the k = 0 coefficient is n^2 * mean
    return f - xp.where(zero, mean, 0.0 * mean)[:, None, None]
