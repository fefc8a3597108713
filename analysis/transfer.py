"""Transfer metrics of docs/protocol.md §4.2.

N_arm(eps), multiplier, D_T(N), catch-up N, OOD shift size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis import laws
from analysis.fits import PowerLawFit, percentile_interval

#: Points of the numerical integral in :func:`shift_magnitude`.
_SHIFT_GRID = 513


def shift_magnitude(upstream: tuple[str, float, float] | str, downstream: tuple[str, float, float]) -> float:
    """Size of an out-of-distribution shift between two physics-parameter ranges.

    The mean, over the downstream range, of the distance in log parameter from the upstream
    range (0 inside it).  Log because the physics parameters are scale-like (anisotropy e,
    advection ratio Psi, wavenumber omega).  Orders the E3 ladder as
    (1,5)->(2.5,7.5) 0.11 < (1,2.5)->(1,5) 0.24 < (1,5)->(5,10) 0.39 < (1,5)->(10,20) 1.08.

    Returns ``nan`` for a mixed upstream or a change of PDE (no common parameter).
    """
    if isinstance(upstream, str) or upstream[0] != downstream[0]:
        return math.nan
    tiny = 1e-3  # Helmholtz omega and Psi may start at 0
    _, ul, uh = upstream
    _, dl, dh = downstream
    x = np.log(np.maximum(np.linspace(dl, dh, _SHIFT_GRID), tiny))
    lo, hi = math.log(max(ul, tiny)), math.log(max(uh, tiny))
    dist = np.clip(lo - x, 0, None) + np.clip(x - hi, 0, None)
    return float(np.mean(dist))


#: Catch-up is never searched past this many samples, even with an unbounded horizon.
CATCH_UP_MAX = 1e9
_CATCH_UP_GRID = 1200


#: A fitted law is never inverted below the smallest N run (docs/protocol.md §4.3): where
#: transfer at N_min already beats eps, the multiplier is the lower bound N_scratch(eps) / N_min.
EXTRAPOLATION_BELOW = 1.0
#: ... and at most this factor above the largest N run (one more doubling): further out, every
#: bootstrap replicate extrapolates in its own way, and a value there is reported as a bound.
EXTRAPOLATION_ABOVE = 2.0
#: The paper's headline error level (docs/protocol.md §4.3): the multiplier is reported there
#: when both arms reach it inside the horizon.
PAPER_EPS = 1e-2
#: Error levels inside both arms' fitted ranges at which the multiplier is also reported.
N_INSIDE_LEVELS = 3

#: What an error level of the multiplier table is (the ``level`` column).
LEVEL_PAPER, LEVEL_INSIDE, LEVEL_STAR = "paper 1e-2", "inside both ranges", "scratch at N_max"


#: Direction of a value clipped to the horizon: the true (unclipped) value is at least it
#: (LOWER_BOUND), at most it (UPPER_BOUND), or either, for an interval end reached by both kinds.
EXACT, LOWER_BOUND, UPPER_BOUND, EITHER = 0, 1, -1, 2


def _law_n(eps: ArrayLike, law: Sequence[ArrayLike]) -> np.ndarray:
    """N at which ``law`` reaches ``eps``; ``nan`` for a law with non-finite parameters (a failed
    bootstrap fit), not the ``inf`` of a curve that never gets there."""
    n = laws.n_at_error(eps, *law)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(np.asarray(law[0], float) + np.asarray(law[1], float) + np.asarray(law[2], float))
    return np.where(bad, np.nan, n)


def _direction(true: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """LOWER_BOUND where clipping lowered the value, UPPER_BOUND where it raised it, else EXACT."""
    with np.errstate(invalid="ignore"):
        step = np.sign(true - clipped)  # inf - finite = inf: a cap on an infinite value is a lower bound
    return np.where(np.isnan(step), EXACT, step).astype(np.int8)


def multiplier(eps: ArrayLike, scratch: Sequence[ArrayLike], transfer: Sequence[ArrayLike],
               horizon: tuple[float, float] = (0.0, math.inf),
               transfer_horizon: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Data-efficiency multiplier N_scratch(eps) / N_transfer(eps), both N kept inside ``horizon``.

    ``scratch`` and ``transfer`` are (E, A, alpha) of the saturating law, scalars or arrays
    that broadcast with ``eps`` (e.g. bootstrap columns of shape (B, 1)).

    Inverting a law far outside the N it was fitted on is not evidence: a nearly flat scratch
    curve puts N_scratch(eps) at 1e50 (or 1e-33) in some bootstrap replicates, and the interval
    with it.  So both N are clipped to ``horizon`` = (n_low, n_high) before the ratio is taken,
    and each clipped ratio says which way it is off: a lower bound of the true ratio (e.g. scratch
    capped at n_high, or only transfer reaching eps) or an upper bound.

    ``transfer_horizon`` (default: ``horizon``) is transfer's own range, when its N differ.

    Returns
    -------
    (multiplier, direction)
        ``nan`` where neither arm ever reaches ``eps`` (or a fit failed); ``inf`` where only
        transfer does and the horizon is unbounded; ``direction`` per value is EXACT,
        LOWER_BOUND, UPPER_BOUND, or EITHER where both N were clipped at the same end (the ratio
        of two clipped values says nothing about the true one).
    """
    t_low, t_high = transfer_horizon or horizon
    n_s, n_t = _law_n(eps, scratch), _law_n(eps, transfer)
    cs, ct = np.clip(n_s, *horizon), np.clip(n_t, t_low, t_high)
    with np.errstate(invalid="ignore", divide="ignore"):
        true = n_s / n_t  # inf / inf = nan: neither arm gets there
        ratio = cs / ct
    undefined = np.isnan(true)
    direction = _direction(true, ratio)
    same_end = ((n_s > horizon[1]) & (n_t > t_high)) | ((n_s < horizon[0]) & (n_t < t_low))
    direction = np.where(same_end, EITHER, direction)
    return np.where(undefined, np.nan, ratio), np.where(undefined, EXACT, direction).astype(np.int8)


@dataclass(frozen=True)
class CensoredInterval:
    """Percentile interval of bootstrap replicates, some of them bounds only, per column."""

    lo: np.ndarray
    hi: np.ndarray
    undefined: np.ndarray  # share of replicates that are nan (left out)
    censored: np.ndarray  # share of replicates clipped to the extrapolation horizon
    lo_bound: np.ndarray  # direction of the lower end: EXACT, LOWER_BOUND, UPPER_BOUND or EITHER
    hi_bound: np.ndarray  # direction of the upper end


def _end_direction(samples: np.ndarray, direction: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Which way an interval end may move once clipped replicates take their true values.

    Raising replicates (lower bounds) can only raise a quantile, and only if one of them lies at
    or below it; lowering replicates (upper bounds) can only lower it, if one lies at or above it.
    """
    up = np.any(np.isin(direction, (LOWER_BOUND, EITHER)) & (samples <= end), axis=0)
    down = np.any(np.isin(direction, (UPPER_BOUND, EITHER)) & (samples >= end), axis=0)
    return np.select([up & down, up, down], [EITHER, LOWER_BOUND, UPPER_BOUND], EXACT).astype(np.int8)


def censored_interval(samples: np.ndarray, confidence: float,
                      direction: np.ndarray | None = None) -> CensoredInterval:
    """Percentile interval of bootstrap replicates (on axis 0), ignoring undefined ones.

    A replicate is undefined (``nan``) e.g. where neither arm's curve reaches the error level; it
    is left out of the percentiles (counting it as 0 would drag the lower end down) and reported.
    ``inverted_cdf`` picks observed values, so an end is never interpolated with ``inf``.
    ``direction`` (same shape, from :func:`multiplier`) marks replicates that are bounds only;
    each end then says whether it is exact or which way it may be off.  ``nan`` ends where every
    replicate is undefined.
    """
    samples = np.asarray(samples, dtype=float)
    direction = np.zeros(samples.shape, np.int8) if direction is None else np.asarray(direction, np.int8)
    undefined = np.isnan(samples).mean(axis=0)
    tail = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns give nan, as they should
        lo, hi = np.nanquantile(samples, [tail, 1.0 - tail], axis=0, method="inverted_cdf")
    return CensoredInterval(lo=lo, hi=hi, undefined=undefined, censored=(direction != EXACT).mean(axis=0),
                            lo_bound=_end_direction(samples, direction, lo),
                            hi_bound=_end_direction(samples, direction, hi))


def data_transferred(n: ArrayLike, scratch: Sequence[ArrayLike], transfer: Sequence[ArrayLike],
                     horizon: tuple[float, float] = (0.0, math.inf)) -> tuple[np.ndarray, np.ndarray]:
    """Effective data transferred D_T(N) = N_scratch(err_transfer(N)) - N (Hernandez et al. 2021).

    N_scratch is clipped to ``horizon`` as in :func:`multiplier`.

    Returns
    -------
    (d_t, direction)
        ``inf`` where the transfer error at N is below anything scratch can reach and the
        horizon is unbounded; ``direction`` per value as in :func:`multiplier`.
    """
    n = np.asarray(n, dtype=float)
    n_s = _law_n(laws.saturating(n, *transfer), scratch)
    clipped = np.clip(n_s, *horizon)
    return clipped - n, _direction(n_s, clipped)


def catch_up(scratch: Sequence[ArrayLike], transfer: Sequence[ArrayLike], n_min: float,
             n_max: float) -> np.ndarray:
    """Smallest N in [n_min, n_max] where scratch error <= transfer error; ``inf`` if none.

    Vectorised over parameter arrays of shape (R,): a log-spaced scan finds the first sign
    change of err_scratch - err_transfer and linear interpolation in log N places it (grid
    spacing 1.5 % in N).  ``n_min`` means scratch is already as good at the smallest N.
    """
    s = [np.atleast_1d(np.asarray(x, dtype=float))[:, None] for x in scratch]  # (R, 1)
    t = [np.atleast_1d(np.asarray(x, dtype=float))[:, None] for x in transfer]
    log_n = np.linspace(math.log(n_min), math.log(n_max), _CATCH_UP_GRID)  # (G,)
    gap = laws.saturating(np.exp(log_n), *s) - laws.saturating(np.exp(log_n), *t)  # (R, G)
    below = gap <= 0
    first = below.argmax(axis=1)
    found = below.any(axis=1)
    prev = np.maximum(first - 1, 0)
    rows = np.arange(gap.shape[0])
    g0, g1 = gap[rows, prev], gap[rows, first]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(first > 0, g0 / (g0 - g1), 0.0)
    out = np.exp(log_n[prev] + frac * (log_n[first] - log_n[prev]))
    return np.where(found, out, np.inf)


@dataclass(frozen=True, kw_only=True, eq=False)
class Estimate(CensoredInterval):
    """A point estimate per column (eps or N) with its censored bootstrap interval.

    The one place the column names of a bounded quantity are made: ``columns("multiplier")`` gives
    ``multiplier``, ``multiplier_lo``, ``multiplier_hi``, ``multiplier_undefined``,
    ``multiplier_censored``, ``multiplier_bound``, ``multiplier_lo_bound``, ``multiplier_hi_bound``.
    """

    value: np.ndarray
    bound: np.ndarray  # direction of the point estimate: EXACT, LOWER_BOUND, UPPER_BOUND or EITHER
    replicates: np.ndarray  # (B, columns) the paired bootstrap replicates, clipped to the horizon

    def columns(self, name: str, at: int | None = None) -> dict[str, Any]:
        """The estimate as named columns: arrays, or the scalars of column ``at``."""
        parts = {"": self.value, "_lo": self.lo, "_hi": self.hi, "_undefined": self.undefined,
                 "_censored": self.censored, "_bound": self.bound, "_lo_bound": self.lo_bound,
                 "_hi_bound": self.hi_bound}
        if at is None:
            return {name + suffix: v for suffix, v in parts.items()}
        return {name + suffix: (int(v[at]) if suffix.endswith("bound") else float(v[at]))
                for suffix, v in parts.items()}


@dataclass(frozen=True)
class Interval:
    """A scalar with a plain percentile interval (nothing clipped)."""

    value: float
    lo: float
    hi: float

    def columns(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}_lo": self.lo, f"{name}_hi": self.hi}


@dataclass(frozen=True, kw_only=True, eq=False)
class TransferMetrics:
    """Transfer vs scratch for one (task, shift, model size), with bootstrap intervals.

    Arrays over ``eps``: the errors scratch reaches at its observed N (so N_scratch is an
    interpolation, never an extrapolation); arrays over ``n``: the observed N.  Intervals are
    percentile intervals over paired bootstrap replicates.
    """

    task: str
    shift: str
    model: str
    eps: np.ndarray
    level: np.ndarray  # LEVEL_PAPER | LEVEL_INSIDE | LEVEL_STAR (or "" for caller-given levels)
    zero_shot_reaches: np.ndarray  # the zero-shot model's error is already <= eps (the N = 0 anchor)
    n_scratch: np.ndarray
    n_transfer: np.ndarray
    multiplier: Estimate  # over eps
    transfer_extrapolated: np.ndarray  # N_transfer(eps) below the smallest observed N
    n: np.ndarray
    d_t: Estimate  # over n
    horizon: tuple[float, float]  # the N range laws are inverted in (and catch-up searched)
    n_range: tuple[float, float]  # the N range both arms were run at
    zero_shot: float  # the zero-shot error on this task (nan if not run)
    catch_up: Interval
    confidence: float

    def eps_frame(self) -> pd.DataFrame:
        """One row per eps: N_scratch, N_transfer, multiplier and its interval."""
        return pd.DataFrame({"task": self.task, "shift": self.shift, "model": self.model, "eps": self.eps,
                             "level": self.level, "zero_shot_reaches": self.zero_shot_reaches,
                             "n_scratch": self.n_scratch, "n_transfer": self.n_transfer,
                             **self.multiplier.columns("multiplier"), "extrapolated": self.transfer_extrapolated})

    def n_frame(self) -> pd.DataFrame:
        """One row per observed N: D_T(N) and its interval."""
        return pd.DataFrame({"task": self.task, "shift": self.shift, "model": self.model, "n_train": self.n,
                             **self.d_t.columns("d_t")})


def _columns(params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return params[:, 0:1], params[:, 1:2], params[:, 2:3]


def error_levels(scratch: PowerLawFit, transfer: PowerLawFit,
                 n_inside: int = N_INSIDE_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """The error levels of the multiplier table, and what each is.

    - ``PAPER_EPS`` (1e-2), the paper's headline level;
    - ``n_inside`` log-spaced levels inside both arms' fitted error ranges over the N they were
      run at (none where the ranges do not overlap: transfer at its smallest N already beats
      scratch at its largest, and every multiplier is a bound);
    - eps* = scratch's fitted error at its largest N.
    """
    s_hi, s_lo = (float(v) for v in scratch.predict(np.array(scratch.n_range)))
    t_hi, t_lo = (float(v) for v in transfer.predict(np.array(transfer.n_range)))
    lo, hi = max(s_lo, t_lo), min(s_hi, t_hi)
    inside = np.geomspace(lo, hi, n_inside + 2)[1:-1] if lo < hi else np.empty(0)
    eps = np.concatenate([[PAPER_EPS], inside, [s_lo]])
    level = np.array([LEVEL_PAPER, *[LEVEL_INSIDE] * inside.size, LEVEL_STAR])
    return eps, level


def transfer_metrics(scratch: PowerLawFit, transfer: PowerLawFit, *, task: str, shift: str, model: str,
                     n: ArrayLike | None = None, eps: ArrayLike | None = None, zero_shot: float = math.nan,
                     below: float = EXTRAPOLATION_BELOW, above: float = EXTRAPOLATION_ABOVE) -> TransferMetrics:
    """Multiplier, D_T and catch-up N of one transfer curve against its scratch curve.

    Parameters
    ----------
    scratch, transfer
        Fits of the two arms on the same task and model size.  Their bootstrap replicates are
        combined by index; each curve draws its own independent stream (the analysis does not
        assume the arms' seed effects correlated, which errs towards wider intervals).
    task, shift, model
        Labels carried into the result.
    n
        N values for D_T (default: the union of the two fits' N ranges on a log2 grid).
    eps
        Error levels for the multiplier (default: :func:`error_levels`).
    zero_shot
        The zero-shot error on the task: levels it already reaches are flagged (the N = 0 anchor).
    below, above
        The horizon: N_scratch and N_transfer are kept within [N_min / below, N_max * above] of
        the two fits' N range (:func:`multiplier`), and catch-up is searched up to its top; a
        clipped multiplier, D_T or interval end carries the direction in which it is a bound.
    """
    lo_n = min(scratch.n_range[0], transfer.n_range[0])
    hi_n = max(scratch.n_range[1], transfer.n_range[1])
    # each arm is inverted only within its own N range (a transfer curve run from N = 32 is never
    # inverted at N = 8 because scratch was run there)
    t_horizon = (transfer.n_range[0] / below, transfer.n_range[1] * above)
    s_horizon = (scratch.n_range[0] / below, scratch.n_range[1] * above)
    if n is None:
        n = np.unique(np.exp2(np.arange(math.floor(math.log2(lo_n)), math.ceil(math.log2(hi_n)) + 1)))
    n = np.asarray(n, dtype=float)
    s, t = _point(scratch), _point(transfer)
    if eps is None:
        eps, level = error_levels(scratch, transfer)
    else:
        eps = np.atleast_1d(np.asarray(eps, dtype=float))
        level = np.full(eps.shape, "", dtype=object)
    conf = min(scratch.confidence, transfer.confidence)
    horizon = (lo_n / below, hi_n * above)
    m, m_bound = multiplier(eps, s, t, s_horizon, t_horizon)
    d, d_bound = data_transferred(n, s, t, s_horizon)
    search_to = min(horizon[1], CATCH_UP_MAX)
    c = float(catch_up(s, t, lo_n, search_to)[0])
    B = min(len(scratch.bootstrap), len(transfer.bootstrap))
    if B > 0:
        bs, bt = _columns(scratch.bootstrap[:B]), _columns(transfer.bootstrap[:B])
        m_boot, m_censored = multiplier(eps[None, :], bs, bt, s_horizon, t_horizon)
        d_boot, d_censored = data_transferred(n[None, :], bs, bt, s_horizon)
        m_iv = censored_interval(m_boot, conf, m_censored)
        d_iv = censored_interval(d_boot, conf, d_censored)
        c_boot = catch_up([x[:, 0] for x in bs], [x[:, 0] for x in bt], lo_n, search_to)
        c_lo, c_hi = (float(v) for v in percentile_interval(c_boot, conf))
    else:
        m_iv, d_iv = _no_interval(eps.shape), _no_interval(n.shape)
        c_lo = c_hi = math.nan
        m_boot, d_boot = np.empty((0, eps.size)), np.empty((0, n.size))
    n_t = laws.n_at_error(eps, *t)
    with np.errstate(invalid="ignore"):
        zs_reaches = np.isfinite(zero_shot) & (zero_shot <= eps)
    return TransferMetrics(task=task, shift=shift, model=model, eps=eps, level=level, zero_shot_reaches=zs_reaches,
                           n_scratch=laws.n_at_error(eps, *s), n_transfer=n_t,
                           multiplier=_estimate(m, m_bound, m_iv, m_boot),
                           transfer_extrapolated=n_t < transfer.n_range[0], n=n,
                           d_t=_estimate(d, d_bound, d_iv, d_boot), horizon=horizon, n_range=(lo_n, hi_n),
                           zero_shot=float(zero_shot), catch_up=Interval(c, c_lo, c_hi), confidence=conf)


def _estimate(value: np.ndarray, bound: np.ndarray, interval: CensoredInterval, replicates: np.ndarray) -> Estimate:
    return Estimate(value=value, bound=bound, replicates=replicates,
                    **{f.name: getattr(interval, f.name) for f in fields(interval)})


def _no_interval(shape: tuple[int, ...]) -> CensoredInterval:
    """No bootstrap: every end missing, nothing flagged."""
    nan, no = np.full(shape, np.nan), np.zeros(shape, np.int8)
    return CensoredInterval(lo=nan, hi=nan, undefined=nan, censored=nan, lo_bound=no, hi_bound=no)


def _point(fit: PowerLawFit) -> tuple[float, float, float]:
    return fit.params["E"], fit.params["A"], fit.params["alpha"]
