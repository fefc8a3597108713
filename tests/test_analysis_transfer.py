"""Transfer metrics against closed forms for an analytic pair of curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import laws
from analysis.fits import fit_saturating
from synthetic_store import E3_SHIFTS
from analysis.transfer import catch_up, data_transferred, multiplier, shift_magnitude, transfer_metrics

# Same exponent and floor, transfer's coefficient 9x smaller: N_t(eps) = N_s(eps) / 9^(1/alpha).
SCRATCH = (0.01, 2.0, 0.5)
TRANSFER = (0.01, 2.0 / 9.0, 0.5)


def test_n_at_error_inverts_the_law() -> None:
    n = np.array([8.0, 100.0, 5000.0])
    assert laws.n_at_error(laws.saturating(n, *SCRATCH), *SCRATCH) == pytest.approx(n)
    assert np.isinf(laws.n_at_error(0.005, *SCRATCH))  # below the floor: never reached


def test_multiplier_is_exact_for_the_analytic_pair() -> None:
    eps = np.array([0.5, 0.1, 0.02])
    m, censored = multiplier(eps, SCRATCH, TRANSFER)
    assert m == pytest.approx(np.full(3, 81.0)) and not censored.any()


def test_data_transferred_is_exact_for_the_analytic_pair() -> None:
    n = np.array([8.0, 64.0, 1024.0])
    # err_t(N) = E + (A/9) N^-1/2 = E + A (81 N)^-1/2  =>  N_scratch(err_t(N)) = 81 N
    d_t, censored = data_transferred(n, SCRATCH, TRANSFER)
    assert d_t == pytest.approx(80.0 * n) and not censored.any()
    d_t, direction = data_transferred(n, SCRATCH, TRANSFER, horizon=(1.0, 1e4))  # 81 N > 1e4 at N = 1024
    assert d_t == pytest.approx([640.0, 5120.0, 1e4 - 1024]) and direction.tolist() == [0, 0, 1]


def test_catch_up_is_where_the_curves_cross() -> None:
    scratch = (0.01, 2.0, 0.5)
    transfer = (0.03, 0.5, 0.5)  # better at small N, worse floor
    # 0.01 + 2/sqrt(N) = 0.03 + 0.5/sqrt(N)  =>  sqrt(N) = 1.5 / 0.02 = 75
    assert catch_up(scratch, transfer, 8.0, 1e9)[0] == pytest.approx(75.0 ** 2, rel=0.02)
    assert np.isinf(catch_up(scratch, transfer, 8.0, 5000.0)[0])  # beyond the horizon searched
    assert np.isinf(catch_up(SCRATCH, TRANSFER, 8.0, 1e9)[0])


def test_transfer_metrics_propagate_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    n = np.repeat(2.0 ** np.arange(3, 12), 4)
    noise = np.exp(0.02 * rng.standard_normal((2, n.size)))
    s = fit_saturating(n, laws.saturating(n, *SCRATCH) * noise[0], n_boot=100)
    t = fit_saturating(n, laws.saturating(n, *TRANSFER) * noise[1], n_boot=100)
    m = transfer_metrics(s, t, task="poisson(5,10)", shift="poisson(1,5) -> poisson(5,10)", model="xs")
    defined = np.isfinite(m.multiplier.value)  # the paper's 1e-2 equals both floors: never reached
    inside = (m.multiplier.lo <= m.multiplier.value) & (m.multiplier.value <= m.multiplier.hi)
    assert defined.sum() >= 3 and inside[defined].all()
    assert np.median(m.multiplier.value[defined]) == pytest.approx(81.0, rel=0.3)
    assert len(m.eps_frame()) == len(m.eps) and len(m.n_frame()) == len(m.n)


def test_shift_magnitude_orders_the_e3_ladder() -> None:
    mags = [shift_magnitude(u, d) for u, d in E3_SHIFTS[:4]]
    assert mags[1] < mags[0] < mags[2] < mags[3]
    assert shift_magnitude(("poisson", 1, 5), ("poisson", 2, 4)) == 0.0  # inside: no shift
    assert math.isnan(shift_magnitude("mixed", ("poisson", 5, 10)))


def test_undefined_bootstrap_multipliers_are_left_out_and_counted() -> None:
    """Replicates where neither arm reaches eps (nan) do not pull the lower end to 0 (F5)."""
    from analysis.transfer import censored_interval

    x = np.array([[np.nan, 2.0, np.nan]] * 4 + [[v, 3.0, np.nan] for v in (10.0, 11.0, 12.0, 13.0, 14.0, np.inf)])
    iv = censored_interval(x, 0.8)
    assert iv.lo[0] >= 10.0 and np.isinf(iv.hi[0])  # inf (only transfer reaches eps) is kept
    assert (iv.lo[1], iv.hi[1]) == (2.0, 3.0)
    assert np.isnan(iv.lo[2]) and np.isnan(iv.hi[2])
    assert iv.undefined.tolist() == [0.4, 0.0, 1.0]


def test_transfer_metrics_report_the_undefined_share() -> None:
    rng = np.random.default_rng(1)
    n = np.repeat(2.0 ** np.arange(3, 12), 4)
    noise = np.exp(0.02 * rng.standard_normal((2, n.size)))
    s = fit_saturating(n, laws.saturating(n, *SCRATCH) * noise[0], n_boot=50)
    t = fit_saturating(n, laws.saturating(n, *TRANSFER) * noise[1], n_boot=50)
    m = transfer_metrics(s, t, task="a", shift="b -> a", model="xs", eps=[0.001, 0.05])  # 0.001: below both E
    assert m.multiplier.undefined[0] == 1.0 and np.isnan(m.multiplier.lo[0])
    assert m.multiplier.undefined[1] == 0.0 and m.multiplier.lo[1] > 0
    assert "multiplier_undefined" in m.eps_frame()


def test_multiplier_is_clipped_to_the_extrapolation_horizon() -> None:
    """Both N are clipped to the horizon; each clipped ratio says which way it is off."""
    from analysis.transfer import EITHER, EXACT, LOWER_BOUND, UPPER_BOUND

    # N_scratch: 16.7, 1.6e7, 1.6e9 (N_transfer = N_scratch / 81), never
    eps = np.array([0.5, 0.0105, 0.01005, 0.005])
    m, direction = multiplier(eps, SCRATCH, TRANSFER, horizon=(0.1, 1e6))
    assert m[0] == pytest.approx(81.0) and direction[0] == EXACT
    assert m[1] == pytest.approx(1e6 / laws.n_at_error(0.0105, *TRANSFER)) and direction[1] == LOWER_BOUND
    assert m[2] == 1.0 and direction[2] == EITHER  # both clipped at the top: the ratio says nothing
    assert np.isnan(m[3]) and direction[3] == EXACT  # neither arm ever gets there: undefined
    m, direction = multiplier(0.5, SCRATCH, TRANSFER, horizon=(1.0, 1e6))  # N_transfer 0.21 raised to 1
    assert m == pytest.approx(laws.n_at_error(0.5, *SCRATCH)) and direction == LOWER_BOUND
    m, direction = multiplier(0.5, TRANSFER, SCRATCH, horizon=(1.0, 1e6))  # swapped: N_scratch 0.21 raised
    assert m == pytest.approx(1.0 / laws.n_at_error(0.5, *SCRATCH)) and direction == UPPER_BOUND
    only_scratch = (0.02, 2.0, 0.5)  # transfer's floor above eps: only scratch gets there
    m, direction = multiplier(0.015, SCRATCH, only_scratch, horizon=(1.0, 1e6))
    assert m == pytest.approx(laws.n_at_error(0.015, *SCRATCH) / 1e6) and direction == UPPER_BOUND  # true: 0
    m, direction = multiplier(0.015, only_scratch, TRANSFER, horizon=(1.0, 1e6))
    assert np.isfinite(m) and direction == LOWER_BOUND  # true: inf
    m, direction = multiplier(0.5, (np.nan, 2.0, 0.5), TRANSFER, horizon=(1.0, 1e6))  # a failed bootstrap fit
    assert np.isnan(m) and direction == EXACT


def test_interval_ends_are_bounds_only_when_a_clipped_replicate_reaches_them() -> None:
    from analysis.transfer import EITHER, EXACT, LOWER_BOUND, UPPER_BOUND, censored_interval

    x = np.array([[v] for v in (2.0, 3.0, 4.0, 5.0, 100.0)])
    lower = np.array([[EXACT]] * 4 + [[LOWER_BOUND]])  # the 100 is really more
    iv = censored_interval(x, 0.6, lower)
    assert (iv.lo[0], iv.hi[0]) == (2.0, 5.0) and iv.lo_bound[0] == EXACT and iv.hi_bound[0] == EXACT
    assert iv.censored[0] == pytest.approx(0.2)
    iv = censored_interval(x, 0.99, lower)  # the upper end is the clipped replicate
    assert iv.hi[0] == 100.0 and iv.hi_bound[0] == LOWER_BOUND and iv.lo_bound[0] == EXACT
    upper = np.array([[UPPER_BOUND]] + [[EXACT]] * 3 + [[LOWER_BOUND]])  # the 2 is really less
    iv = censored_interval(x, 0.99, upper)
    assert iv.lo_bound[0] == UPPER_BOUND and iv.hi_bound[0] == LOWER_BOUND
    iv = censored_interval(x, 0.6, np.array([[EXACT], [LOWER_BOUND], [EXACT], [UPPER_BOUND], [EXACT]]))
    assert iv.hi[0] == 5.0 and iv.hi_bound[0] == EITHER  # 3 may rise past 5 and 5 may fall


def test_flat_scratch_curve_gives_a_bounded_interval() -> None:
    """A nearly flat scratch curve no longer sends the upper end to 1e50: it is capped and flagged."""
    rng = np.random.default_rng(3)
    n = np.repeat(2.0 ** np.arange(3, 8), 2)
    s = fit_saturating(n, laws.saturating(n, 0.3, 0.1, 0.3) * np.exp(0.05 * rng.standard_normal(n.size)), n_boot=200)
    t = fit_saturating(n, laws.saturating(n, 0.05, 0.8, 0.5) * np.exp(0.05 * rng.standard_normal(n.size)), n_boot=200)
    unbounded = transfer_metrics(s, t, task="a", shift="b -> a", model="xs", below=math.inf, above=math.inf)
    assert np.nanmax(unbounded.multiplier.hi) > 1e6  # the failure this guards against
    m = transfer_metrics(s, t, task="a", shift="b -> a", model="xs")
    # never below N_min = 8, at most 2x above N_max = 128
    assert np.all(m.multiplier.hi <= 256 / 8) and np.all(m.multiplier.lo >= 8 / 256)
    assert np.nanmin(unbounded.multiplier.lo) < 1e-6  # the lower end extrapolated as wildly, before
    assert m.multiplier.hi_bound.any() and m.multiplier.censored.max() > 0
    assert np.array_equal(m.multiplier.hi_bound == 1, m.multiplier.hi < unbounded.multiplier.hi)
    assert np.all(m.d_t.hi <= 256) and np.all(m.d_t.hi_bound == (m.d_t.hi < unbounded.d_t.hi))
    assert m.horizon == (8.0, 256.0) and unbounded.horizon == (0.0, math.inf)


def test_default_levels_are_the_paper_level_levels_inside_both_ranges_and_eps_star() -> None:
    from analysis.transfer import LEVEL_INSIDE, LEVEL_PAPER, LEVEL_STAR, PAPER_EPS

    n = np.repeat(2.0 ** np.arange(3, 12), 3)
    unit = np.tile(np.arange(3), 9)
    rng = np.random.default_rng(4)
    noise = np.exp(0.02 * rng.standard_normal((2, n.size)))
    s = fit_saturating(n, laws.saturating(n, *SCRATCH) * noise[0], unit=unit, n_boot=50)
    t = fit_saturating(n, laws.saturating(n, *TRANSFER) * noise[1], unit=unit, n_boot=50)
    m = transfer_metrics(s, t, task="a", shift="b -> a", model="xs", zero_shot=0.05)
    assert list(m.level) == [LEVEL_PAPER, LEVEL_INSIDE, LEVEL_INSIDE, LEVEL_INSIDE, LEVEL_STAR]
    assert m.eps[0] == PAPER_EPS and m.eps[-1] == pytest.approx(float(s.predict(np.array([2048.0]))[0]))
    inside = m.eps[1:4]
    assert np.all(inside >= t.predict(np.array([2048.0]))[0]) and np.all(inside <= s.predict(np.array([8.0]))[0])
    assert np.all(m.n_transfer[1:4] >= 8) and np.all(m.multiplier.bound[1:4] == 0)  # inside: exact inversions
    assert m.zero_shot_reaches.tolist() == [False] + [bool(e >= 0.05) for e in m.eps[1:]]
