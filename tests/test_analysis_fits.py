"""Fits recover planted laws (interval coverage with seed effects: tests/test_analysis_coverage.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import laws
from analysis.fits import FitSkipped, fit_joint, fit_pure, fit_saturating

TRUE = {"E": 0.02, "A": 1.5, "alpha": 0.5}
N_GRID = 2.0 ** np.arange(3, 14)  # 8 .. 8192


def _data(seeds: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = np.repeat(N_GRID, seeds)
    err = laws.saturating(n, **TRUE) * np.exp(noise * rng.standard_normal(n.size))
    return n, err


def test_recovers_noise_free_parameters() -> None:
    n = N_GRID
    fit = fit_saturating(n, laws.saturating(n, **TRUE), n_boot=0)
    for name, value in TRUE.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-3)
    assert fit.converged
    assert fit.heldout is not None and abs(fit.heldout.rel_error) < 1e-3
    assert np.max(np.abs(fit.residuals)) < 1e-4


def test_recovers_parameters_with_three_noisy_seeds() -> None:
    n, err = _data(3, 0.05, np.random.default_rng(0))
    fit = fit_saturating(n, err, n_boot=100)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert fit.params["A"] == pytest.approx(TRUE["A"], rel=0.2)
    assert fit.params["E"] == pytest.approx(TRUE["E"], rel=0.25)
    lo, hi = fit.intervals["alpha"]
    assert lo < fit.params["alpha"] < hi
    assert fit.bootstrap.shape == (100, 3)
    assert fit.params["E"] <= err.min()  # the bound E <= smallest observed error


def test_huber_loss_resists_an_outlier() -> None:
    n = np.repeat(N_GRID, 3)
    err = laws.saturating(n, **TRUE) * np.exp(0.02 * np.random.default_rng(1).standard_normal(n.size))
    err[5] *= 8.0  # one seed blew up at N = 16
    fit = fit_saturating(n, err, n_boot=0)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.params["E"] == pytest.approx(TRUE["E"], rel=0.15)
    assert np.argmax(np.abs(fit.residuals)) == 5


def test_saturating_beats_pure_power_law_on_aic() -> None:
    n, err = _data(2, 0.03, np.random.default_rng(2))
    fit = fit_saturating(n, err, n_boot=0)
    assert fit.pure is not None and fit.delta_aic > 10
    pure = fit_pure(n, laws.pure(n, 2.0, 0.7))
    assert pure.params["alpha"] == pytest.approx(0.7, rel=1e-6)
    assert pure.params["A"] == pytest.approx(2.0, rel=1e-6)


def test_too_few_sizes_is_a_clear_skip() -> None:
    with pytest.raises(FitSkipped, match="3 distinct N"):
        fit_saturating([8, 16, 32, 8], [0.5, 0.4, 0.3, 0.5])


def test_joint_law_recovers_planted_exponents() -> None:
    rng = np.random.default_rng(3)
    p = np.repeat([1e4, 1e5, 1e6, 1e7], N_GRID.size)
    n = np.tile(N_GRID, 4)
    truth = {"E": 0.005, "A": 3.0, "a": 0.3, "B": 1.5, "b": 0.5}
    err = laws.joint(n, p, **truth) * np.exp(0.01 * rng.standard_normal(n.size))
    fit = fit_joint(n, p, err, n_boot=20)
    assert fit.params["a"] == pytest.approx(0.3, abs=0.03)
    assert fit.params["b"] == pytest.approx(0.5, abs=0.03)
    assert fit.n_models == 4 and fit.bootstrap.shape == (20, 5)
    with pytest.raises(FitSkipped, match="model sizes"):
        fit_joint(n[p < 1e6], p[p < 1e6], err[p < 1e6])
