"""Nested random training subsets (docs/protocol.md §2.9): N = 2^k is contained in 2^(k+1)."""

from __future__ import annotations

import numpy as np


def nested_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """Indices of an n-sample subset of ``range(n_total)``, nested across n for a fixed seed.

    The subset is the first ``n`` entries of one permutation drawn from a generator seeded by
    ``seed`` alone, so for the same seed every smaller subset is contained in every larger one
    (and both arms of an experiment see the same samples).

    Parameters
    ----------
    n_total
        Size of the training split.
    n
        Subset size, ``0 <= n <= n_total``.
    seed
        Subset seed (the run's seed).

    Returns
    -------
    numpy.ndarray
        ``n`` distinct int64 indices, in permutation order (not sorted).
    """
    if isinstance(n_total, bool) or int(n_total) != n_total or n_total < 0:
        raise ValueError(f"n_total = {n_total!r} is invalid: expected an integer >= 0")
    if isinstance(n, bool) or int(n) != n or n < 0 or n > n_total:
        raise ValueError(f"n = {n!r} is invalid: expected an integer in [0, {n_total}] (the split's size)")
    rng = np.random.default_rng(int(seed))
    return rng.permutation(int(n_total))[: int(n)].astype(np.int64)
