"""Robust power-law fits with bootstrap intervals (pure functions over arrays).

Method (issue 5 §2, after Hoffmann et al. 2022, arXiv 2203.15556, App. D.2):

- Parameters in log space where they are scales (E, A, B), exponents as they are; the model is
  evaluated as a log-sum-exp of its terms, so the fit works on log error without ever taking
  the log of a negative number.
- Loss: Huber (``scipy.special.huber``) on log(predicted) - log(observed): quadratic for
  ordinary seed noise, linear for an outlier (a bad seed or a half-diverged run).
- L-BFGS-B (``scipy.optimize.minimize``) from a grid of initialisations; bounds keep
  E <= the smallest observed error (an irreducible error above an observed one is impossible)
  and the exponents in (0.01, 3).
- Bootstrap: resample the points (seeds / nested subsets) with replacement *within each N*, so
  every replicate keeps the design's N values.  All replicates are solved together as one
  block-separable L-BFGS-B problem warm-started at the point estimate: one optimiser call
  instead of B calls, which is what keeps a 10,000-run store inside the time budget.
- Held-out check: refit without the largest N and report the error of the prediction there.
- Comparison: the pure power law A * N^-alpha is a straight line in log-log, fitted by
  statsmodels' robust linear model (Huber's T norm); both laws get a Gaussian AIC on log
  residuals.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, ParamSpec, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import huber

from analysis import laws

P = ParamSpec("P")
R = TypeVar("R")

#: Fewest distinct N for the 3-parameter saturating law (one more than its parameters).
MIN_SIZES = 4
#: Fewest model sizes for the joint N x P law (issue 5 §2).
MIN_MODELS = 3
#: Default Huber threshold on log error: ~10 % deviations count as noise, larger as outliers.
DELTA = 0.1
#: Default number of bootstrap replicates (saturating law; the joint law's are solved one by one).
N_BOOT = 200
N_BOOT_JOINT = 100
EXPONENT_BOUNDS = (0.01, 3.0)
LOG_SCALE_BOUNDS = (-30.0, 30.0)
#: How far below the smallest observed error log E may go (E ~ 0 is allowed, not -inf).
LOG_E_RANGE = 15.0


_BLAS_LIMITED = 0  # nesting depth of single_thread_blas in this process


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Limit BLAS to one thread while fitting (tiny vectors: threads only add latency).

    Uses ``threadpoolctl`` when installed; otherwise a no-op (the CLI also calls
    :func:`analysis.limit_blas_threads` before numpy loads).  Re-entrant and cheap when nested.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        limiter: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=1, user_api="blas")
    _BLAS_LIMITED += 1
    try:
        with limiter:
            yield
    finally:
        _BLAS_LIMITED -= 1


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
_JOINT = _Law(("E", "A", "a", "B", "b"), (True, True, False, True, False), ((0, -1, -1), (1, 2, 1), (3, 4, 0)))


@dataclass(frozen=True)
class HeldOut:
    """Fit without the largest N, predict there: ``rel_error = predicted / observed - 1``."""

    n: float
    predicted: float
    observed: float
    rel_error: float


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

    ``bootstrap`` holds the replicate parameters, shape (B, 3), columns E, A, alpha; the
    transfer metrics propagate them.  ``residuals`` are log(predicted / observed) per point.
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

    def predict(self, n: ArrayLike) -> np.ndarray:
        """Fitted error at ``n``."""
        return laws.saturating(n, self.params["E"], self.params["A"], self.params["alpha"])

    def band(self, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the fitted error at ``n`` (lower, upper)."""
        b = self.bootstrap
        curves = laws.saturating(np.asarray(n, dtype=float)[None, :], b[:, :1], b[:, 1:2], b[:, 2:3])  # (B, n)
        lo, hi = percentile_interval(curves, self.confidence)
        return lo, hi

    @property
    def delta_aic(self) -> float:
        """AIC(pure) - AIC(saturating): > 2 favours the saturating law."""
        return math.nan if self.pure is None else self.pure.aic - self.aic


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


def _log_pred(law: _Law, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log of the law's prediction and the share of each term in it.

    theta (S, k), X (n, d) -> log_pred (S, n), [weight of term j (S, n)] (softmax of the terms).
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
    return log_pred, [np.exp(term - log_pred) for term in terms]


def _objective(flat: np.ndarray, law: _Law, X: np.ndarray, logy: np.ndarray, W: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Sum over rows s of sum_i W[s, i] * huber(delta, log_pred - log y) / n, and its gradient."""
    S, k = W.shape[0], len(law.names)
    theta = flat.reshape(S, k)
    log_pred, w = _log_pred(law, theta, X)
    r = log_pred - logy[None, :]  # (S, n)
    scale = 1.0 / X.shape[0]
    loss = float(np.sum(W * huber(delta, r))) * scale
    g_r = W * np.clip(r, -delta, delta) * scale  # d huber / d r
    grad = np.zeros_like(theta)
    for j, (c, e, f) in enumerate(law.terms):
        gw = g_r * w[j]  # (S, n)
        grad[:, c] += gw.sum(axis=1)
        if e >= 0:
            grad[:, e] -= gw @ X[:, f]
    return loss, grad.ravel()


def _solve(law: _Law, X: np.ndarray, logy: np.ndarray, W: np.ndarray, starts: np.ndarray,
           bounds: np.ndarray, delta: float, maxiter: int = 3000, ftol: float = 1e-12) -> _Solution:
    """Minimise every row's Huber loss at once (block-separable L-BFGS-B).

    starts (S, k), bounds (S, k, 2), W (S, n): row s is an independent problem.
    """
    S, k = starts.shape
    res = minimize(_objective, np.clip(starts, bounds[..., 0], bounds[..., 1]).ravel(),
                   args=(law, X, logy, W, delta), jac=True, method="L-BFGS-B",
                   bounds=bounds.reshape(S * k, 2),
                   options={"maxiter": maxiter, "maxcor": 20, "ftol": ftol, "gtol": 1e-9})
    theta = res.x.reshape(S, k)
    log_pred, _ = _log_pred(law, theta, X)
    losses = np.sum(W * huber(delta, log_pred - logy[None, :]), axis=1) / X.shape[0]
    return _Solution(theta, losses, bool(res.success))


def _natural(law: _Law, theta: np.ndarray) -> np.ndarray:
    """Log-space parameter rows -> natural parameters (same shape)."""
    out = theta.copy()
    for i, is_log in enumerate(law.log_params):
        if is_log:
            out[..., i] = np.exp(theta[..., i])
    return out


def _bounds(law: _Law, W: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row bounds (S, k, 2); log E <= log of the smallest error the row actually uses."""
    S, k = W.shape[0], len(law.names)
    b = np.empty((S, k, 2))
    for i, is_log in enumerate(law.log_params):
        b[:, i] = LOG_SCALE_BOUNDS if is_log else EXPONENT_BOUNDS
    y_min = np.log(np.where(W > 0, y[None, :], np.inf).min(axis=1))  # (S,)
    b[:, 0, 0] = y_min - LOG_E_RANGE
    b[:, 0, 1] = y_min
    return b


def _bootstrap_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (B, n) of resampling with replacement within each group (each N).

    Equal group structure + equal seed give equal weights, so two arms with the same design
    are resampled in the same way (a paired bootstrap).
    """
    W = np.zeros((n_boot, groups.size))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        W[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_boot)
    return W


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


def _aic(residuals: np.ndarray, k: int) -> float:
    """Gaussian AIC of log residuals: n log(RSS / n) + 2k."""
    m = residuals.size
    rss = max(float(np.sum(residuals ** 2)), 1e-300)
    return m * math.log(rss / m) + 2 * k


def _best_fit(law: _Law, X: np.ndarray, y: np.ndarray, starts: np.ndarray, delta: float,
              n_polish: int = 3) -> _Solution:
    """Multi-start: score the whole grid of starts in one vectorised call, run L-BFGS-B from
    the ``n_polish`` best, keep the lowest loss."""
    logy = np.log(y)
    W1 = np.ones((1, y.size))
    bounds = _bounds(law, W1, y)
    starts = np.clip(starts, bounds[..., 0], bounds[..., 1])
    log_pred, _ = _log_pred(law, starts, X)
    score = np.sum(huber(delta, log_pred - logy[None, :]), axis=1)
    best: _Solution | None = None
    for i in np.argsort(score)[:n_polish]:
        sol = _solve(law, X, logy, W1, starts[i:i + 1], bounds, delta)
        if best is None or sol.loss[0] < best.loss[0]:
            best = sol
    assert best is not None
    return best


@_one_blas_thread
def fit_pure(n: ArrayLike, err: ArrayLike) -> PureFit:
    """Fit err(N) = A * N^-alpha as a robust line log err = log A - alpha log N.

    Uses ``statsmodels.RLM`` with Huber's T norm; the intervals are its Wald 95 % intervals.
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
def fit_saturating(n: ArrayLike, err: ArrayLike, *, n_boot: int = N_BOOT, delta: float = DELTA,
                   confidence: float = 0.95, seed: int = 0, heldout: bool = True) -> PowerLawFit:
    """Fit err(N) = E + A * N^-alpha to one curve's points.

    Parameters
    ----------
    n, err
        Training-set size and test error of every point (one per seed / subset; repeated N
        are the bootstrap's resampling groups).
    n_boot
        Bootstrap replicates (0 disables the intervals).
    delta
        Huber threshold on log error.
    confidence
        Coverage of the percentile intervals.
    seed
        Seed of the resampling (the same seed and design give the same resamples).
    heldout
        Also refit without the largest N and predict it (needs MIN_SIZES + 1 distinct N).

    Returns
    -------
    PowerLawFit

    Raises
    ------
    FitSkipped
        Fewer than :data:`MIN_SIZES` distinct N.
    """
    n, err = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    _check_points(n, err)
    sizes = np.unique(n)
    if sizes.size < MIN_SIZES:
        raise FitSkipped(f"{sizes.size} distinct N (need >= {MIN_SIZES} for E + A*N^-alpha)")
    law = _SATURATING
    X = np.log(n)[:, None]  # (n, 1): feature 0 = log N
    point = _best_fit(law, X, err, _saturating_starts(n, err), delta)
    theta = point.theta[0]
    boot = np.empty((0, 3))
    converged = point.converged
    if n_boot > 0:
        W = _bootstrap_weights(n, n_boot, np.random.default_rng(seed))
        # ftol 1e-9 on the stacked sum: percentiles agree with one-by-one fits to < 0.1 %.
        sol = _solve(law, X, np.log(err), W, np.repeat(point.theta, n_boot, axis=0), _bounds(law, W, err), delta,
                     ftol=1e-9)
        boot = _natural(law, sol.theta)
        converged = converged and sol.converged
    nat = _natural(law, theta)
    params = dict(zip(law.names, map(float, nat)))
    intervals = _intervals(law.names, boot, confidence, params)
    residuals = _log_pred(law, point.theta, X)[0][0] - np.log(err)
    held = _heldout(n, err, delta) if heldout and sizes.size > MIN_SIZES else None
    method = (f"Huber(delta={delta}) on log error, L-BFGS-B from {len(_saturating_starts(n, err))} starts, "
              f"E <= min err, alpha in {EXPONENT_BOUNDS}; {n_boot} bootstrap replicates resampling seeds within each N")
    return PowerLawFit(params=params, intervals=intervals, bootstrap=boot, residuals=residuals, n_points=n.size,
                       n_sizes=sizes.size, n_range=(float(sizes[0]), float(sizes[-1])), loss=float(point.loss[0]),
                       aic=_aic(residuals, 3), converged=converged, method=method, confidence=confidence,
                       pure=fit_pure(n, err), heldout=held)


def _intervals(names: tuple[str, ...], boot: np.ndarray, confidence: float,
               params: dict[str, float]) -> dict[str, tuple[float, float]]:
    if boot.shape[0] == 0:
        return {k: (math.nan, math.nan) for k in names}
    lo, hi = percentile_interval(boot, confidence)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)}


def _heldout(n: np.ndarray, err: np.ndarray, delta: float) -> HeldOut:
    top = n.max()
    keep = n < top
    law = _SATURATING
    sol = _best_fit(law, np.log(n[keep])[:, None], err[keep], _saturating_starts(n[keep], err[keep]), delta)
    E, A, alpha = _natural(law, sol.theta[0])
    predicted = float(laws.saturating(top, E, A, alpha))
    observed = float(np.exp(np.mean(np.log(err[~keep]))))  # geometric mean over seeds
    return HeldOut(n=float(top), predicted=predicted, observed=observed, rel_error=predicted / observed - 1.0)


@_one_blas_thread
def fit_joint(n: ArrayLike, p: ArrayLike, err: ArrayLike, *, n_boot: int = N_BOOT_JOINT, delta: float = DELTA,
              confidence: float = 0.95, seed: int = 0) -> JointFit:
    """Fit err(N, P) = E + A * P^-a + B * N^-b across model sizes.

    Parameters
    ----------
    n, p, err
        Training-set size, parameter count and test error of every point.
    n_boot, delta, confidence, seed
        As in :func:`fit_saturating`; resampling is within each (N, P) cell.

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
    point = _best_fit(law, X, err, np.array(starts), delta)
    boot = np.empty((0, 5))
    converged = point.converged
    if n_boot > 0:
        _, cell = np.unique(np.column_stack([n, p]), axis=0, return_inverse=True)
        W = _bootstrap_weights(cell.ravel(), n_boot, np.random.default_rng(seed))
        bounds = _bounds(law, W, err)
        # One by one, warm-started: the joint law's weakly identified E makes the stacked
        # problem converge slowly (measured 10x slower than separate fits).
        sols = [_solve(law, X, np.log(err), W[i:i + 1], point.theta, bounds[i:i + 1], delta, ftol=1e-10)
                for i in range(n_boot)]
        boot = _natural(law, np.concatenate([s.theta for s in sols]))
        converged = converged and all(s.converged for s in sols)
    params = dict(zip(law.names, map(float, _natural(law, point.theta[0]))))
    residuals = _log_pred(law, point.theta, X)[0][0] - np.log(err)
    method = (f"Huber(delta={delta}) on log error, L-BFGS-B from {len(starts)} starts; "
              f"{n_boot} bootstrap replicates resampling seeds within each (N, P)")
    return JointFit(params=params, intervals=_intervals(law.names, boot, confidence, params), bootstrap=boot,
                    residuals=residuals, n_points=n.size, n_models=int(np.unique(p).size), loss=float(point.loss[0]),
                    aic=_aic(residuals, 5), converged=converged, method=method, confidence=confidence)
