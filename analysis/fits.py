"""Robust power-law fits with intervals that follow the design (pure functions over arrays).

Method (after Hoffmann et al. 2022, arXiv 2203.15556, App. D.2, and issue 9 §2-§3):

- Parameters in log space where they are scales (E, A, B), exponents as they are; the model is
  evaluated as a log-sum-exp of its terms, so the fit works on log error without ever taking
  the log of a negative number.
- Loss: Huber (``scipy.special.huber``) on log(predicted) - log(observed): quadratic for
  ordinary seed noise, linear for an outlier (a bad seed or a half-diverged run).
- L-BFGS-B (``scipy.optimize.minimize``) from a grid of initialisations; bounds keep
  E <= the smallest observed error (an irreducible error above an observed one is impossible)
  and the exponents in (0.01, 3).
- The law per curve: the saturating E + A N^-alpha or the pure A N^-alpha, whichever has the
  lower AICc over the points with the seed offsets counted as parameters (AICc's small-sample
  penalty keeps 5 N from buying a third parameter they cannot support).  Every bootstrap
  replicate makes its own choice, so the intervals include the uncertainty of the law.
- Uncertainty: a *seed* (one initialisation plus one nested-subset chain, docs/protocol.md §2.9)
  shifts a whole curve, so log err = log f(N) + b_seed (+ c_pretrain) + e.  The variance components
  are estimated by one-way (nested, with pre-training seeds) ANOVA moments of the log residuals, and
  a parametric bootstrap redraws whole seed curves: each replicate draws the component variances
  from their scaled-inverse-chi-square sampling distributions (so that with S seeds the level
  uncertainty is t_{S-1}-wide, not normal-wide: 2-3 seeds cannot pin a variance), then one offset
  per seed and one noise value per point, and refits.  Resampling points within each N instead
  treats a seed as independent across N and covered the truth in 25-60 % of trials at a nominal 95 %
  (issue 9); tests/test_analysis_coverage.py checks this method on planted laws with persistent seed
  offsets.  With a single seed the seed effect cannot be estimated and no interval is given
  (``FitResult.interval_note`` says so).
- All replicates are solved together as one block-separable L-BFGS-B problem warm-started at the
  point estimate: one optimiser call instead of B calls.
- Held-out check: refit without the largest N and report the error of the prediction there.
- A parameter whose interval runs into its bound (more than the tail share of replicates sit
  there) is reported as not identified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ParamSpec, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import huber

from analysis import laws
from repro.threads import limited_threads

P = ParamSpec("P")
R = TypeVar("R")

#: Fewest distinct N for the 3-parameter saturating law (one more than its parameters).
MIN_SIZES = 4
#: Fewest distinct N for the 2-parameter pure power law.
MIN_SIZES_PURE = 3
#: The laws a curve may be fitted with ("auto" picks one per curve by AICc), and the fewest distinct N each needs.
LAWS = ("saturating", "pure")
_MIN_SIZES_OF = {"saturating": MIN_SIZES, "pure": MIN_SIZES_PURE}
#: Fewest model sizes for the joint N x P law (issue 5 §2).
MIN_MODELS = 3
#: Default Huber threshold on log error: ~10 % deviations count as noise, larger as outliers.
DELTA = 0.1
#: Default number of bootstrap replicates (curve laws; the joint law's are solved one by one).
N_BOOT = 200
N_BOOT_JOINT = 100
EXPONENT_BOUNDS = (0.01, 3.0)
LOG_SCALE_BOUNDS = (-30.0, 30.0)
#: How far below the smallest observed error log E may go (E ~ 0 is allowed, not -inf).
LOG_E_RANGE = 15.0


def single_thread_blas() -> contextlib.AbstractContextManager[None]:
    """Limit BLAS to one thread while fitting (tiny vectors: threads only add latency); see
    :mod:`repro.threads`.  Re-entrant and cheap when nested."""
    return limited_threads(1)


def _one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with single_thread_blas():
            return func(*args, **kwargs)
    return wrapper


class FitSkipped(ValueError):
    """A cell has too few points for the law; the message says what is missing."""


@dataclass(frozen=True)
class _Law:
    """A sum of power-law terms exp(c - x * feature) in log-space parameters.

    ``terms``: (index of log coefficient, index of exponent or -1, feature column or -1).
    """

    names: tuple[str, ...]  # natural parameter names, e.g. ("E", "A", "alpha")
    log_params: tuple[bool, ...]  # which parameters are fitted as logs
    terms: tuple[tuple[int, int, int], ...]


_SATURATING = _Law(("E", "A", "alpha"), (True, True, False), ((0, -1, -1), (1, 2, 0)))
_PURE = _Law(("A", "alpha"), (True, False), ((0, 1, 0),))
_JOINT = _Law(("E", "A", "a", "B", "b"), (True, True, False, True, False), ((0, -1, -1), (1, 2, 1), (3, 4, 0)))


@dataclass(frozen=True)
class HeldOut:
    """Fit without the largest N, predict there: ``rel_error = predicted / observed - 1``."""

    n: float
    predicted: float
    observed: float
    rel_error: float


@dataclass(frozen=True, kw_only=True)
class SeedEffects:
    """Variance components of log error around a fitted law (issue 9 §2).

    log err(N, seed) = log f(N) + c_pretrain + b_seed + e: ``sigma_point`` is the sd of e,
    ``sigma_seed`` of b (a whole-curve offset per downstream seed), ``sigma_pretrain`` of c (one
    offset per pre-trained checkpoint, where a transfer curve pools several).  The ``df_*`` are
    the degrees of freedom of each estimate; the bootstrap draws each variance from its
    scaled-inverse-chi-square distribution with these degrees of freedom.
    """

    sigma_point: float
    sigma_seed: float
    sigma_pretrain: float
    n_seeds: int
    n_pretrain: int
    df_point: int
    df_seed: int
    df_pretrain: int

    @property
    def supported(self) -> bool:
        """Whether the design can carry an interval: >= 2 seeds (curves) to estimate their spread."""
        return self.df_seed >= 1


@dataclass(frozen=True, kw_only=True, eq=False)
class PureFit:
    """err(N) = A * N^-alpha by a robust straight-line fit of log error on log N."""

    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    residuals: np.ndarray
    n_points: int
    aic: float
    method: str


@dataclass(frozen=True, kw_only=True, eq=False)
class PowerLawFit:
    """err(N) = E + A * N^-alpha fitted to one curve (one task, shift, model size, arm).

    ``law`` is ``"saturating"`` or ``"pure"`` (then E = 0 exactly, and E's interval is (0, 0)).
    ``bootstrap`` holds the replicate parameters, shape (B, 3), columns E, A, alpha, whatever
    the law; the transfer metrics propagate them.  ``residuals`` are log(predicted / observed)
    per point.  ``interval_note`` is empty when the intervals are supported by the design, else
    it says why there are none.  ``unidentified`` names the parameters whose interval runs into
    its bound.  ``aicc`` maps each law that was fitted to its AICc (seed offsets counted).
    """

    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    bootstrap: np.ndarray
    residuals: np.ndarray
    n_points: int
    n_sizes: int
    n_range: tuple[float, float]
    loss: float
    aic: float
    converged: bool
    method: str
    confidence: float
    pure: PureFit | None = None
    heldout: HeldOut | None = None
    law: str = "saturating"
    seed_effects: SeedEffects | None = None
    interval_note: str = ""
    unidentified: tuple[str, ...] = ()
    aicc: dict[str, float] = field(default_factory=dict)
    sizes: tuple[float, ...] = ()  # the distinct N the curve was observed at

    def predict(self, n: ArrayLike) -> np.ndarray:
        """Fitted error at ``n``."""
        return laws.saturating(n, self.params["E"], self.params["A"], self.params["alpha"])

    def curves(self, n: ArrayLike) -> np.ndarray:
        """The bootstrap replicates' fitted errors at ``n``: shape (B, len(n))."""
        b = self.bootstrap
        return laws.saturating(np.asarray(n, dtype=float)[None, :], b[:, :1], b[:, 1:2], b[:, 2:3])

    def band(self, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the fitted error at ``n`` (lower, upper); ``nan``
        where the design supports no interval."""
        n = np.asarray(n, dtype=float)
        if len(self.bootstrap) == 0:
            nan = np.full(n.shape, np.nan)
            return nan, nan
        return percentile_interval(self.curves(n), self.confidence)

    @property
    def delta_aic(self) -> float:
        """AICc(pure) - AICc(saturating), seed offsets counted: > 2 favours the saturating law."""
        return self.aicc.get("pure", math.nan) - self.aicc.get("saturating", math.nan)

    @property
    def identified(self) -> bool:
        return not self.unidentified


@dataclass(frozen=True, kw_only=True, eq=False)
class JointFit:
    """err(N, P) = E + A * P^-a + B * N^-b over model sizes P (parameter counts)."""

    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    bootstrap: np.ndarray  # (B, 5): E, A, a, B, b
    residuals: np.ndarray
    n_points: int
    n_models: int
    loss: float
    aic: float
    converged: bool
    method: str
    confidence: float
    law: str = "joint"
    interval_note: str = ""

    def predict(self, n: ArrayLike, p: ArrayLike) -> np.ndarray:
        q = self.params
        return laws.joint(n, p, q["E"], q["A"], q["a"], q["B"], q["b"])


@dataclass(frozen=True)
class _Solution:
    theta: np.ndarray  # (S, k) log-space parameters
    loss: np.ndarray  # (S,)
    converged: bool


def percentile_interval(x: np.ndarray, confidence: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap percentile interval along ``axis``.

    ``inverted_cdf`` picks observed values, so it never interpolates between +inf (a curve that
    never reaches an error level) and a number.
    """
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(x, [tail, 1.0 - tail], axis=axis, method="inverted_cdf")
    return lo, hi


def _log_pred(law: _Law, theta: np.ndarray, X: np.ndarray,
              D: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """log of the law's prediction and the share of each term in it.

    theta (S, k [+ q]), X (n, d) -> log_pred (S, n), [weight of term j (S, n)] (softmax of the
    terms).  ``D`` (n, q), if given, adds per-seed log offsets: columns k.. of theta are their
    sum-to-zero contrasts (:func:`_offset_design`).
    """
    terms = []
    for c, e, f in law.terms:
        term = theta[:, c:c + 1]  # (S, 1), broadcast over points below
        if e >= 0:
            term = term - theta[:, e:e + 1] * X[None, :, f]  # (S, n)
        terms.append(term)
    log_pred = terms[0]
    for term in terms[1:]:
        log_pred = np.logaddexp(log_pred, term)  # (S, n): log of the sum of the terms
    weights = [np.exp(term - log_pred) for term in terms]
    if D is not None and D.shape[1]:
        log_pred = log_pred + theta[:, len(law.names):] @ D.T  # (S, q) @ (q, n): each point's seed offset
    return log_pred, weights


def _objective(flat: np.ndarray, law: _Law, X: np.ndarray, logy: np.ndarray, W: np.ndarray,
               delta: float, D: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Sum over rows s of sum_i W[s, i] * huber(delta, log_pred - log y[s, i]) / n, and its gradient.

    ``logy`` is (S, n) (one data set per row) or (n,) (every row fits the same data).
    """
    S = W.shape[0]
    theta = flat.reshape(S, -1)
    log_pred, w = _log_pred(law, theta, X, D)
    r = log_pred - np.atleast_2d(logy)  # (S, n)
    scale = 1.0 / X.shape[0]
    loss = float(np.sum(W * huber(delta, r))) * scale
    g_r = W * np.clip(r, -delta, delta) * scale  # d huber / d r
    grad = np.zeros_like(theta)
    for j, (c, e, f) in enumerate(law.terms):
        gw = g_r * w[j]  # (S, n)
        grad[:, c] += gw.sum(axis=1)
        if e >= 0:
            grad[:, e] -= gw @ X[:, f]
    if D is not None and D.shape[1]:
        grad[:, len(law.names):] = g_r @ D  # (S, n) @ (n, q)
    return loss, grad.ravel()


def _solve(law: _Law, X: np.ndarray, logy: np.ndarray, W: np.ndarray, starts: np.ndarray,
           bounds: np.ndarray, delta: float, maxiter: int = 3000, ftol: float = 1e-12,
           D: np.ndarray | None = None) -> _Solution:
    """Minimise every row's Huber loss at once (block-separable L-BFGS-B).

    starts (S, k + q), bounds (S, k + q, 2), W (S, n), logy (S, n) or (n,), D (n, q) seed
    offsets or None: row s is an independent problem.
    """
    S, k = starts.shape
    res = minimize(_objective, np.clip(starts, bounds[..., 0], bounds[..., 1]).ravel(),
                   args=(law, X, logy, W, delta, D), jac=True, method="L-BFGS-B",
                   bounds=bounds.reshape(S * k, 2),
                   options={"maxiter": maxiter, "maxcor": 20, "ftol": ftol, "gtol": 1e-9})
    theta = res.x.reshape(S, k)
    log_pred, _ = _log_pred(law, theta, X, D)
    losses = np.sum(W * huber(delta, log_pred - np.atleast_2d(logy)), axis=1) / X.shape[0]
    return _Solution(theta, losses, bool(res.success))


def _natural(law: _Law, theta: np.ndarray) -> np.ndarray:
    """Log-space parameter rows -> natural parameters of the law (offset columns dropped)."""
    out = theta[..., :len(law.names)].copy()
    for i, is_log in enumerate(law.log_params):
        if is_log:
            out[..., i] = np.exp(theta[..., i])
    return out


#: Range of a per-seed log offset (wide: few-seed bootstrap replicates draw heavy-tailed spreads).
OFFSET_BOUNDS = (-20.0, 20.0)


def _bounds(law: _Law, W: np.ndarray, y: np.ndarray, n_offsets: int = 0) -> np.ndarray:
    """Per-row bounds (S, k + n_offsets, 2); for a law with a floor E (first parameter, no
    exponent), log E <= log of the smallest error the row actually uses.  ``y`` is (n,) or (S, n)."""
    S, k = W.shape[0], len(law.names)
    b = np.empty((S, k + n_offsets, 2))
    b[:, k:] = OFFSET_BOUNDS
    for i, is_log in enumerate(law.log_params):
        b[:, i] = LOG_SCALE_BOUNDS if is_log else EXPONENT_BOUNDS
    if law.terms[0][1] < 0:  # a constant term: the floor E
        y_min = np.log(np.where(W > 0, np.atleast_2d(y), np.inf).min(axis=1))  # (S,)
        b[:, 0, 0] = y_min - LOG_E_RANGE
        b[:, 0, 1] = y_min
    return b


def _codes(labels: ArrayLike | None, size: int) -> np.ndarray:
    """Integer codes 0..G-1 of ``labels`` (one per point); ``None``: every point its own label."""
    if labels is None:
        return np.arange(size)
    _, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes.ravel()


def _offset_design(unit: np.ndarray) -> np.ndarray:
    """(n, S-1) sum-to-zero contrasts: point i's seed offset is D[i] @ eta, and the S offsets
    C @ eta sum to 0, so the law keeps the level of the average seed.  (n, 0) for one seed."""
    S = int(unit.max()) + 1
    return _contrasts(S)[unit]


def _contrasts(S: int) -> np.ndarray:
    """(S, S-1): unit u's offset = row u @ eta; the last unit carries minus the sum of the others."""
    return np.vstack([np.eye(S - 1), -np.ones((1, S - 1))]) if S > 1 else np.zeros((1, 0))


def seed_effects(offsets: np.ndarray, unit_group: np.ndarray, residuals: np.ndarray, n_params: int) -> SeedEffects:
    """Variance components from the fitted per-seed offsets and the point residuals (ANOVA moments).

    ``offsets`` (S,) are the seed curves' fitted log offsets (summing to 0), ``unit_group`` (S,)
    the pre-trained checkpoint of each seed curve, ``residuals`` (n,) the log residuals of the
    fit with offsets.  A fitted offset also carries point noise / n_seed; it is kept in, a slight
    over-statement of the seed variance that errs towards covering.
    """
    S, n = offsets.size, residuals.size
    df_point = max(1, n - n_params - (S - 1))
    sigma_point = math.sqrt(float(np.sum(residuals ** 2)) / df_point)
    groups = np.unique(unit_group)
    if groups.size > 1:
        group_mean = np.array([offsets[unit_group == g].mean() for g in groups])
        dev = offsets - group_mean[np.searchsorted(groups, unit_group)]
        df_seed = S - groups.size
        sigma_pretrain, df_pretrain = float(np.std(group_mean, ddof=1)), groups.size - 1
    else:
        dev, df_seed = offsets - offsets.mean(), S - 1
        sigma_pretrain, df_pretrain = 0.0, 0
    sigma_seed = math.sqrt(float(np.sum(dev ** 2)) / df_seed) if df_seed > 0 else math.nan
    if groups.size > 1 and df_seed == 0:
        # one downstream seed per checkpoint: the checkpoints' spread carries both
        sigma_seed, df_seed = 0.0, df_pretrain
    return SeedEffects(sigma_point=sigma_point, sigma_seed=sigma_seed, sigma_pretrain=sigma_pretrain,
                       n_seeds=int(S), n_pretrain=int(groups.size), df_point=int(df_point),
                       df_seed=int(df_seed), df_pretrain=int(df_pretrain))


def _draw_sd(sigma: float, df: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B,) standard deviations drawn from sigma^2 * df / chi2_df (the variance's sampling law)."""
    if df <= 0 or not math.isfinite(sigma) or sigma == 0.0:
        return np.zeros(n_boot)
    return sigma * np.sqrt(df / rng.chisquare(df, size=n_boot))


def seed_bootstrap(log_fitted: np.ndarray, effects: SeedEffects, unit: np.ndarray, group: np.ndarray,
                   n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) replicate log errors: the fitted curve plus redrawn pre-training, seed and point noise."""
    n = log_fitted.size
    units, u_idx = np.unique(unit, return_inverse=True)
    groups, g_idx = np.unique(group, return_inverse=True)
    sd_point = _draw_sd(effects.sigma_point, effects.df_point, n_boot, rng)
    sd_seed = _draw_sd(effects.sigma_seed, effects.df_seed, n_boot, rng)
    sd_pre = _draw_sd(effects.sigma_pretrain, effects.df_pretrain, n_boot, rng)
    seed_off = sd_seed[:, None] * rng.standard_normal((n_boot, units.size))  # (B, S)
    pre_off = sd_pre[:, None] * rng.standard_normal((n_boot, groups.size))  # (B, G)
    noise = sd_point[:, None] * rng.standard_normal((n_boot, n))  # (B, n)
    logy = log_fitted[None, :] + seed_off[:, u_idx.ravel()] + pre_off[:, g_idx.ravel()] + noise
    return np.clip(logy, -300.0, 300.0)  # keep exp() finite in the heaviest-tailed replicates


def _check_points(n: np.ndarray, err: np.ndarray) -> None:
    if n.shape != err.shape or n.ndim != 1:
        raise ValueError(f"n and err must be 1-D arrays of equal length, got {n.shape} and {err.shape}")
    if np.any(~np.isfinite(err)) or np.any(err <= 0) or np.any(n <= 0):
        raise ValueError("errors and N must be finite and > 0")


def _saturating_starts(n: np.ndarray, y: np.ndarray) -> np.ndarray:
    """5 x 5 x 3 grid: E below the smallest error, exponent, and A through the small-N error."""
    n0 = n.min()
    y0 = float(np.exp(np.mean(np.log(y[n == n0]))))
    y_min = float(y.min())
    rows = []
    for e_frac, alpha, shift in itertools.product((0.01, 0.2, 0.5, 0.8, 0.97), (0.1, 0.25, 0.5, 0.8, 1.2), (-1.0, 0.0, 1.0)):
        E = e_frac * y_min
        log_a = math.log(max(y0 - E, 0.05 * y0)) + alpha * math.log(n0) + shift
        rows.append((math.log(E), log_a, alpha))
    return np.array(rows)


def _pure_starts(n: np.ndarray, y: np.ndarray) -> np.ndarray:
    """5 exponents x 3 levels through the small-N error."""
    n0 = n.min()
    y0 = float(np.exp(np.mean(np.log(y[n == n0]))))
    return np.array([(math.log(y0) + alpha * math.log(n0) + shift, alpha)
                     for alpha, shift in itertools.product((0.1, 0.25, 0.5, 0.8, 1.2), (-0.5, 0.0, 0.5))])


_STARTS = {"saturating": (_SATURATING, _saturating_starts), "pure": (_PURE, _pure_starts)}


def _aic(residuals: np.ndarray, k: int) -> float:
    """Gaussian AIC of log residuals: n log(RSS / n) + 2k."""
    m = residuals.size
    rss = max(float(np.sum(residuals ** 2)), 1e-300)
    return m * math.log(rss / m) + 2 * k


def _aicc(residuals: np.ndarray, k: int) -> float:
    """AIC with the small-sample correction 2k(k+1)/(n-k-1); ``inf`` when n <= k + 1."""
    m = residuals.size
    if m <= k + 1:
        return math.inf
    return _aic(residuals, k) + 2 * k * (k + 1) / (m - k - 1)


def _best_fit(law: _Law, X: np.ndarray, y: np.ndarray, starts: np.ndarray, delta: float,
              n_polish: int = 3, D: np.ndarray | None = None) -> _Solution:
    """Multi-start: score the whole grid of starts in one vectorised call, run L-BFGS-B from
    the ``n_polish`` best, keep the lowest loss.  With seed offsets ``D`` they start at 0."""
    q = 0 if D is None else D.shape[1]
    logy = np.log(y)
    W1 = np.ones((1, y.size))
    bounds = _bounds(law, W1, y, q)
    starts = np.concatenate([starts, np.zeros((starts.shape[0], q))], axis=1)
    starts = np.clip(starts, bounds[..., 0], bounds[..., 1])
    log_pred, _ = _log_pred(law, starts, X, D)
    score = np.sum(huber(delta, log_pred - logy[None, :]), axis=1)
    best: _Solution | None = None
    for i in np.argsort(score)[:n_polish]:
        sol = _solve(law, X, logy, W1, starts[i:i + 1], bounds, delta, D=D)
        if best is None or sol.loss[0] < best.loss[0]:
            best = sol
    assert best is not None
    return best


def _as_saturating(law: _Law, natural: np.ndarray) -> np.ndarray:
    """(..., k) natural parameters of ``law`` -> (..., 3) columns E, A, alpha (pure: E = 0)."""
    if law is _SATURATING:
        return natural
    return np.concatenate([np.zeros(natural.shape[:-1] + (1,)), natural], axis=-1)


def _fit_law(name: str, n: np.ndarray, err: np.ndarray, delta: float,
             D: np.ndarray | None = None) -> tuple[_Law, _Solution]:
    law, starts = _STARTS[name]
    return law, _best_fit(law, np.log(n)[:, None], err, starts(n, err), delta, D=D)


def _choose_law(fits: dict[str, tuple[_Law, _Solution]], n: np.ndarray, err: np.ndarray,
                D: np.ndarray) -> tuple[str, dict[str, float]]:
    """The law with the lower AICc over the points, seed offsets included in both (a tie goes to
    the pure law, the simpler one)."""
    aicc: dict[str, float] = {}
    for name, (law, sol) in fits.items():
        resid = _log_pred(law, sol.theta, np.log(n)[:, None], D)[0][0] - np.log(err)
        aicc[name] = _aicc(resid, len(law.names) + D.shape[1])
    best = min(aicc, key=lambda k: (aicc[k], k != "pure"))
    return best, aicc


def _unidentified(law: _Law, theta: np.ndarray, bounds: np.ndarray, confidence: float) -> tuple[str, ...]:
    """Parameters whose replicates sit on a bound more often than one tail of the interval."""
    tail = (1.0 - confidence) / 2.0
    tol = 1e-6
    # e.g. E pinned at the smallest observed error (a flat curve) or at the bottom of its range
    # (no floor seen: the pure law's regime); an exponent at 0.01 or 3
    at_bound = (np.abs(theta - bounds[..., 0]) < tol) | (np.abs(theta - bounds[..., 1]) < tol)  # (B, k)
    return tuple(name for i, name in enumerate(law.names) if at_bound[:, i].mean() > tail)


@_one_blas_thread
def fit_pure(n: ArrayLike, err: ArrayLike) -> PureFit:
    """Fit err(N) = A * N^-alpha as a robust line log err = log A - alpha log N.

    Uses ``statsmodels.RLM`` with Huber's T norm; the intervals are its Wald 95 % intervals
    (points treated as independent: a comparison, not the reported uncertainty).
    """
    import statsmodels.api as sm

    n, err = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    _check_points(n, err)
    design = sm.add_constant(np.log(n))
    res = sm.RLM(np.log(err), design, M=sm.robust.norms.HuberT()).fit()
    ci = np.asarray(res.conf_int(0.05))
    params = {"A": float(np.exp(res.params[0])), "alpha": float(-res.params[1])}
    intervals = {"A": (float(np.exp(ci[0, 0])), float(np.exp(ci[0, 1]))),
                 "alpha": (float(-ci[1, 1]), float(-ci[1, 0]))}
    residuals = design @ res.params - np.log(err)
    return PureFit(params=params, intervals=intervals, residuals=residuals, n_points=n.size,
                   aic=_aic(residuals, 2), method="statsmodels RLM (HuberT) of log err on log N")


@_one_blas_thread
def fit_curve(n: ArrayLike, err: ArrayLike, *, unit: ArrayLike | None = None, group: ArrayLike | None = None,
              law: str = "auto", n_boot: int = N_BOOT, delta: float = DELTA, confidence: float = 0.95,
              seed: int = 0, heldout: bool = True) -> PowerLawFit:
    """Fit one curve's points with the saturating or the pure power law, with seed-curve intervals.

    Parameters
    ----------
    n, err
        Training-set size and test error of every point.
    unit
        The seed curve each point belongs to (a downstream seed; for a transfer curve that pools
        several pre-trained checkpoints, the (checkpoint, seed) pair).  ``None``: independent
        points (the bootstrap redraws point noise only; right only when no seed spans several N).
    group
        The pre-trained checkpoint of each point (``None``: one).  Its spread is a third
        variance component, shared by all seeds fine-tuned from it.
    law
        ``"saturating"``, ``"pure"`` or ``"auto"`` (AICc per curve and per replicate, see the module doc).
    n_boot
        Bootstrap replicates (0 disables the intervals).
    delta
        Huber threshold on log error.
    confidence
        Coverage of the percentile intervals.
    seed
        Seed of the bootstrap draws (the same seed and data give the same replicates).
    heldout
        Also refit without the largest N and predict it (needs one more distinct N than the law needs).

    Raises
    ------
    FitSkipped
        Too few distinct N for the law (:data:`MIN_SIZES`, :data:`MIN_SIZES_PURE`).
    """
    n, err = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    _check_points(n, err)
    sizes = np.unique(n)
    if law not in (*LAWS, "auto"):
        raise ValueError(f"law = {law!r} is invalid: allowed: {', '.join(LAWS)}, auto")
    need = _MIN_SIZES_OF.get(law, MIN_SIZES_PURE)
    if sizes.size < need:
        what = "E + A*N^-alpha" if law == "saturating" else "A*N^-alpha"
        raise FitSkipped(f"{sizes.size} distinct N (need >= {need} for {what})")
    unit_c = _codes(unit, n.size)
    group_c = np.zeros(n.size, int) if group is None else _codes(group, n.size)
    # one log offset per seed curve (a seed seen at a single N absorbs that point: its offset then
    # carries point noise too, which errs towards a larger seed spread)
    D = _offset_design(unit_c) if unit is not None else np.zeros((n.size, 0))
    # both laws where the N allow, so that AICc compares them even when the law is fixed
    names = [k for k in LAWS if sizes.size >= _MIN_SIZES_OF[k]]
    fits = {name: _fit_law(name, n, err, delta, D) for name in names}
    best, aicc = _choose_law(fits, n, err, D)
    chosen = best if law == "auto" else law
    spec, point = fits[chosen]
    X = np.log(n)[:, None]
    k = len(spec.names)
    log_law = _log_pred(spec, point.theta[:, :k], X)[0][0]  # the average seed's curve
    residuals = _log_pred(spec, point.theta, X, D)[0][0] - np.log(err)
    offsets = _contrasts(D.shape[1] + 1) @ point.theta[0, k:] if D.shape[1] else np.zeros(1)
    unit_group = np.array([group_c[unit_c == u][0] for u in range(int(unit_c.max()) + 1)]) if D.shape[1] \
        else np.zeros(1, int)
    effects = seed_effects(offsets, unit_group, residuals, k)
    if unit is None:  # independent points: point noise only
        effects = dataclasses.replace(effects, sigma_seed=0.0, df_seed=0, n_seeds=n.size)
    boot = np.empty((0, 3))
    converged = point.converged
    note = ""
    unidentified: tuple[str, ...] = ()
    if n_boot > 0 and unit is not None and not effects.supported:
        note = (f"no interval: {effects.n_seeds} seed curve; the seed-to-seed spread cannot be estimated "
                "from one seed (run >= 2 seeds)")
    elif n_boot > 0:
        logy = seed_bootstrap(log_law, effects, unit_c, group_c, n_boot, np.random.default_rng(seed))  # (B, n)
        # each replicate refits every law the point fit considered and keeps its own AICc choice, so the
        # intervals carry the uncertainty of the law choice too (a floor the point fit could not see)
        candidates = {chosen: fits[chosen]} if law != "auto" else fits
        reps = {name: _refit(*candidates[name], X, logy, D, delta) for name in candidates}
        aicc_rows = np.column_stack([reps[name][2] for name in reps])  # (B, laws)
        choice = np.array(list(reps))[np.argmin(aicc_rows, axis=1)]
        boot = np.zeros((n_boot, 3))
        for name in reps:
            boot = np.where((choice == name)[:, None], reps[name][0], boot)
        converged = converged and all(r[3] for r in reps.values())
        unidentified = _unidentified(spec, reps[chosen][4][choice == chosen], reps[chosen][5][choice == chosen],
                                     confidence) if (choice == chosen).any() else ()
        law_share = {name: float(np.mean(choice == name)) for name in reps}
    params = dict(zip(("E", "A", "alpha"), map(float, _as_saturating(spec, _natural(spec, point.theta[0])))))
    intervals = _intervals(("E", "A", "alpha"), boot, confidence)
    held = _heldout(spec, n, err, unit_c if unit is not None else None, delta) \
        if heldout and sizes.size > _MIN_SIZES_OF[chosen] else None
    form = "E + A*N^-alpha" if spec is _SATURATING else "A*N^-alpha"
    if n_boot > 0 and not note and law == "auto":
        form += " (replicates: " + ", ".join(f"{k} {v:.0%}" for k, v in law_share.items()) + ")"
    method = (f"{form} ({'chosen by AICc' if law == 'auto' else 'fixed'}) with a log offset per seed curve; "
              f"Huber(delta={delta}) on log error, L-BFGS-B multi-start; {n_boot} parametric bootstrap replicates "
              f"of whole seed curves (seed sd {effects.sigma_seed:.3g}, df {effects.df_seed}; point sd "
              f"{effects.sigma_point:.3g})")
    return PowerLawFit(params=params, intervals=intervals, bootstrap=boot, residuals=residuals, n_points=n.size,
                       n_sizes=sizes.size, n_range=(float(sizes[0]), float(sizes[-1])), loss=float(point.loss[0]),
                       aic=_aic(residuals, k + D.shape[1]), converged=converged, method=method,
                       confidence=confidence, pure=fit_pure(n, err), heldout=held, law=chosen, seed_effects=effects,
                       interval_note=note, unidentified=unidentified, aicc=aicc,
                       sizes=tuple(float(s) for s in sizes))


def _refit(spec: _Law, point: _Solution, X: np.ndarray, logy: np.ndarray, D: np.ndarray,
           delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray, np.ndarray]:
    """Refit ``spec`` to every replicate (stacked): (E, A, alpha) rows, their law's residuals,
    per-row AICc, convergence, the law's log-space parameters and their bounds."""
    B, q, k = logy.shape[0], D.shape[1], len(spec.names)
    W = np.ones_like(logy)
    bounds = _bounds(spec, W, np.exp(logy), q)
    starts = np.repeat(np.concatenate([point.theta[:, :k], np.zeros((1, q))], axis=1), B, axis=0)
    # ftol 1e-9 on the stacked sum: percentiles agree with one-by-one fits to < 0.1 %.
    sol = _solve(spec, X, logy, W, starts, bounds, delta, ftol=1e-9, D=D)
    resid = _log_pred(spec, sol.theta, X, D)[0] - logy  # (B, n)
    m, K = logy.shape[1], k + q
    rss = np.maximum(np.sum(resid ** 2, axis=1), 1e-300)
    aicc = m * np.log(rss / m) + 2 * K + (2 * K * (K + 1) / (m - K - 1) if m > K + 1 else np.inf)
    return _as_saturating(spec, _natural(spec, sol.theta)), resid, aicc, sol.converged, sol.theta[:, :k], bounds[:, :k]


def fit_saturating(n: ArrayLike, err: ArrayLike, **kwargs: Any) -> PowerLawFit:
    """:func:`fit_curve` with the saturating law E + A * N^-alpha (needs :data:`MIN_SIZES` distinct N)."""
    return fit_curve(n, err, law="saturating", **kwargs)


def _intervals(names: tuple[str, ...], boot: np.ndarray, confidence: float) -> dict[str, tuple[float, float]]:
    if boot.shape[0] == 0:
        return {k: (math.nan, math.nan) for k in names}
    lo, hi = percentile_interval(boot, confidence)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)}


def _heldout(law: _Law, n: np.ndarray, err: np.ndarray, unit: np.ndarray | None, delta: float) -> HeldOut:
    """Refit without the largest N (seed offsets from the remaining points) and predict it for
    the seeds observed there: the average seed's curve plus their mean fitted offset."""
    top = n.max()
    keep = n < top
    name = "saturating" if law is _SATURATING else "pure"
    D = None
    if unit is not None:
        _, codes = np.unique(unit[keep], return_inverse=True)
        D = _offset_design(codes.ravel())
    _, sol = _fit_law(name, n[keep], err[keep], delta, D)
    k = len(law.names)
    E, A, alpha = _as_saturating(law, _natural(law, sol.theta[0]))
    shift = 0.0
    if unit is not None and D is not None and D.shape[1]:
        kept_units = np.unique(unit[keep])
        offsets = _contrasts(D.shape[1] + 1) @ sol.theta[0, k:]
        at_top = [offsets[np.searchsorted(kept_units, u)] for u in unit[~keep] if u in kept_units]
        shift = float(np.mean(at_top)) if at_top else 0.0
    predicted = float(laws.saturating(top, E, A, alpha)) * math.exp(shift)
    observed = float(np.exp(np.mean(np.log(err[~keep]))))  # geometric mean over seeds
    return HeldOut(n=float(top), predicted=predicted, observed=observed, rel_error=predicted / observed - 1.0)


@_one_blas_thread
def fit_joint(n: ArrayLike, p: ArrayLike, err: ArrayLike, *, unit: ArrayLike | None = None,
              n_boot: int = N_BOOT_JOINT, delta: float = DELTA, confidence: float = 0.95, seed: int = 0) -> JointFit:
    """Fit err(N, P) = E + A * P^-a + B * N^-b across model sizes.

    Parameters
    ----------
    n, p, err
        Training-set size, parameter count and test error of every point.
    unit
        Seed curve of each point (one per (model size, seed)); ``None``: independent points.
    n_boot, delta, confidence, seed
        As in :func:`fit_curve`: a parametric bootstrap of whole seed curves.

    Raises
    ------
    FitSkipped
        Fewer than :data:`MIN_MODELS` model sizes or :data:`MIN_SIZES` distinct N.
    """
    n, p, err = (np.asarray(x, dtype=float) for x in (n, p, err))
    _check_points(n, err)
    if np.unique(p).size < MIN_MODELS:
        raise FitSkipped(f"{np.unique(p).size} model sizes (need >= {MIN_MODELS} for the joint N x P law)")
    if np.unique(n).size < MIN_SIZES:
        raise FitSkipped(f"{np.unique(n).size} distinct N (need >= {MIN_SIZES})")
    law = _JOINT
    X = np.column_stack([np.log(n), np.log(p)])  # (n, 2): features log N, log P
    y_min = float(err.min())
    starts = []
    for e_frac, a, b, shift in itertools.product((0.05, 0.8), (0.2, 0.6), (0.3, 0.8), (-1.0, 1.0)):
        # split the error above E evenly between the P and N terms at the smallest N and P
        half = math.log(max(float(np.median(err)) - e_frac * y_min, 1e-6) / 2) + shift
        starts.append((math.log(e_frac * y_min), half + a * X[:, 1].min(), a, half + b * X[:, 0].min(), b))
    unit_c = _codes(unit, n.size)
    D = _offset_design(unit_c) if unit is not None else np.zeros((n.size, 0))
    q = D.shape[1]
    point = _best_fit(law, X, err, np.array(starts), delta, D=D)
    k = len(law.names)
    log_fitted = _log_pred(law, point.theta[:, :k], X)[0][0]
    residuals = _log_pred(law, point.theta, X, D)[0][0] - np.log(err)
    offsets = _contrasts(q + 1) @ point.theta[0, k:] if q else np.zeros(1)
    effects = seed_effects(offsets, np.zeros(offsets.size, int), residuals, k)
    if unit is None:  # independent points: point noise only
        effects = dataclasses.replace(effects, sigma_seed=0.0, df_seed=0, n_seeds=n.size)
    boot = np.empty((0, 5))
    converged = point.converged
    supported = unit is None or effects.supported
    note = "" if supported else "no interval: fewer than two seed curves"
    if n_boot > 0 and supported:
        zeros = np.zeros(n.size, int)
        logy = seed_bootstrap(log_fitted, effects, unit_c, zeros, n_boot, np.random.default_rng(seed))
        W = np.ones((1, n.size))
        start = np.concatenate([point.theta[:, :k], np.zeros((1, q))], axis=1)
        # One by one, warm-started: the joint law's weakly identified E makes the stacked
        # problem converge slowly (measured 10x slower than separate fits).
        sols = [_solve(law, X, logy[i], W, start, _bounds(law, W, np.exp(logy[i]), q), delta, ftol=1e-10, D=D)
                for i in range(n_boot)]
        boot = _natural(law, np.concatenate([s.theta for s in sols]))
        converged = converged and all(s.converged for s in sols)
    params = dict(zip(law.names, map(float, _natural(law, point.theta[0]))))
    method = (f"Huber(delta={delta}) on log error, L-BFGS-B from {len(starts)} starts; "
              f"{n_boot} parametric bootstrap replicates of whole seed curves")
    return JointFit(params=params, intervals=_intervals(law.names, boot, confidence), bootstrap=boot,
                    residuals=residuals, n_points=n.size, n_models=int(np.unique(p).size), loss=float(point.loss[0]),
                    aic=_aic(residuals, 5), converged=converged, method=method, confidence=confidence,
                    interval_note=note)
