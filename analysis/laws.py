"""Scaling laws as plain vectorised functions (natural parameters).

- saturating: err(N) = E + A * N^-alpha (irreducible error E; Hoffmann et al. 2022 style)
- pure:       err(N) = A * N^-alpha (a straight line in log-log; the comparison law)
- joint:      err(N, P) = E + A * P^-a + B * N^-b (model size P = parameter count)

All functions broadcast over their arguments, so a bootstrap sample of parameters (arrays of
shape (B, 1)) evaluated on a grid of N (shape (n,)) gives a (B, n) array.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def saturating(n: ArrayLike, E: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """err(N) = E + A * N^-alpha."""
    return np.asarray(E) + np.asarray(A) * np.asarray(n, dtype=float) ** -np.asarray(alpha)


def pure(n: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """err(N) = A * N^-alpha."""
    return np.asarray(A) * np.asarray(n, dtype=float) ** -np.asarray(alpha)


def joint(n: ArrayLike, p: ArrayLike, E: ArrayLike, A: ArrayLike, a: ArrayLike, B: ArrayLike,
          b: ArrayLike) -> np.ndarray:
    """err(N, P) = E + A * P^-a + B * N^-b."""
    return (np.asarray(E) + np.asarray(A) * np.asarray(p, dtype=float) ** -np.asarray(a)
            + np.asarray(B) * np.asarray(n, dtype=float) ** -np.asarray(b))


def n_at_error(eps: ArrayLike, E: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """Inverse of :func:`saturating`: the N at which err(N) = eps.

    ``inf`` where eps <= E (the curve never gets there).
    """
    eps, E, A, alpha = (np.asarray(x, dtype=float) for x in (eps, E, A, alpha))
    gap = eps - E
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = (A / gap) ** (1.0 / alpha)
    return np.where(gap > 0, out, np.inf)
