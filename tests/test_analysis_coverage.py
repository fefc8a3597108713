"""Nominal 95 % intervals cover planted truths when a seed shifts its whole curve (issue 9 §2).

The planted data are what a grid really produces: a saturating law, a per-seed log offset
(sd 0.15) that persists across every N of that seed (one initialisation + one nested-subset
chain), and per-point noise (sd 0.05).  Two designs: the quick grid's (N = 8..128, 2 seeds) and
the paper grids' (N = 8..32768, 3 seeds up to N = 1024, one above).  Resampling points within
each N covered the multiplier in 25-35 % of such trials; the seed-curve bootstrap must reach
>= 90 % for both the multiplier and err(N).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import laws
from analysis.fits import fit_curve
from analysis.transfer import transfer_metrics

SCRATCH = (0.02, 1.5, 0.5)
BENEFIT = 2.0
TRANSFER = (0.02, 1.5 / BENEFIT, 0.5)  # multiplier BENEFIT^(1/alpha) = 4 at every error level
TRUE_MULTIPLIER = BENEFIT ** (1 / SCRATCH[2])
SEED_SD, POINT_SD = 0.15, 0.05

DESIGNS = {
    # name: (N values, seeds at N, N where eps is taken on scratch, N at which err(N) is checked)
    "quick": (2.0 ** np.arange(3, 8), lambda n: 2, 128.0, 32.0),
    "paper": (2.0 ** np.arange(3, 16), lambda n: 3 if n <= 1024 else 1, 4096.0, 64.0),
}


def _sample(law: tuple[float, float, float], sizes: np.ndarray, seeds_at, rng: np.random.Generator):
    n, err, unit = [], [], []
    offsets = SEED_SD * rng.standard_normal(max(seeds_at(x) for x in sizes))
    for x in sizes:
        for s in range(seeds_at(x)):
            n.append(x)
            unit.append(s)
            err.append(laws.saturating(x, *law) * math.exp(offsets[s] + POINT_SD * rng.standard_normal()))
    return np.array(n), np.array(err), np.array(unit)


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_intervals_cover_with_persistent_seed_effects(design: str) -> None:
    sizes, seeds_at, n_eps, n_check = DESIGNS[design]
    eps = float(laws.saturating(n_eps, *SCRATCH))
    rng = np.random.default_rng(20261201)
    trials, hit_m, hit_err = 30, 0, 0
    for i in range(trials):
        n, err, unit = _sample(SCRATCH, sizes, seeds_at, rng)
        s = fit_curve(n, err, unit=unit, n_boot=100, seed=2 * i, heldout=False)
        n, err, unit = _sample(TRANSFER, sizes, seeds_at, rng)
        t = fit_curve(n, err, unit=unit, n_boot=100, seed=2 * i + 1, heldout=False)
        m = transfer_metrics(s, t, task="a", shift="b -> a", model="xs", eps=[eps])
        hit_m += int(m.multiplier.lo[0] <= TRUE_MULTIPLIER <= m.multiplier.hi[0])
        lo, hi = s.band(np.array([n_check]))
        hit_err += int(lo[0] <= laws.saturating(n_check, *SCRATCH) <= hi[0])
    assert hit_m / trials >= 0.9, f"multiplier coverage {hit_m}/{trials}"
    assert hit_err / trials >= 0.9, f"err(N) coverage {hit_err}/{trials}"


def test_one_seed_gives_no_interval_instead_of_a_zero_width_one() -> None:
    rng = np.random.default_rng(1)
    sizes = 2.0 ** np.arange(3, 9)
    n, err, unit = _sample(SCRATCH, sizes, lambda x: 1, rng)
    fit = fit_curve(n, err, unit=unit, n_boot=50)
    assert fit.bootstrap.shape[0] == 0 and "one seed" in fit.interval_note
    lo, hi = fit.band(np.array([64.0]))
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    assert all(math.isnan(v) for v in fit.intervals["alpha"])


def test_seed_offsets_are_estimated_not_absorbed_by_the_law() -> None:
    """A seed observed alone at large N does not bend the fitted curve towards its own offset."""
    rng = np.random.default_rng(2)
    sizes = 2.0 ** np.arange(3, 16)
    sd = []
    for _ in range(20):
        n, err, unit = _sample(SCRATCH, sizes, DESIGNS["paper"][1], rng)
        sd.append(fit_curve(n, err, unit=unit, n_boot=0).seed_effects.sigma_seed)
    # sample sd of 3 offsets: median ~0.83 sigma; absorbing the lone seed's offset would shrink it further
    assert 0.6 * SEED_SD < float(np.median(sd)) < 1.4 * SEED_SD
