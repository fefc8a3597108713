"""F1 and F4 pinned on planted truths: the SYS-1 ladder of the E3 design, one model, 3 seeds.

Each truth is a synthetic grid (``tests/synthetic_store.py``: transfer's law is scratch's with its
amplitude divided by ``b = benefit / (1 + decay * shift)`` (one model: no growth factor), so the multiplier is exactly
``b^(1/alpha)`` at every error level) whose verdicts a reader can work out by hand.  The frames are
built in memory (:func:`synthetic_store.frame`, which ``test_analysis_e2e`` checks equals the
store's read-back), so the four analyses cost seconds, not four stores.

- strong (benefit 60): transfer at N = 8 beats every scratch point, so F1 decides at scratch's
  error at N_max and the multiplier is the lower bound N_max / N_min = 32, never a law inverted below
  N = 8; the benefit shrinks along the ladder and stays > 1: F1 PASS, F4 PASS.
- moderate (benefit 6, decay 4): multipliers 17.5 / 5.6 / 1.3 along the ladder, read at levels inside
  both arms' ranges (so exact, and the planted value lies in each interval): 1/3 pairs >= 10, F1 FAIL;
  the benefit falls and stays > 1: F4 PASS.
- flat (benefit 6, decay 0): the same benefit at every shift: F4 FAIL (the slope's interval
  straddles 0) while F1 PASSES.
- weak (benefit 1.5): transfer is worse than scratch at the far shift: F1 FAIL, F4 FAIL.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.analyze import AnalysisResult, analyze
from analysis.transfer import EXACT, LEVEL_INSIDE, LEVEL_STAR, LOWER_BOUND, shift_magnitude
from synthetic_store import E3_SHIFTS, SyntheticGrid, frame

LADDER = E3_SHIFTS[1:4]  # poisson(1,5) -> (2.5,7.5), (5,10), (10,20): increasing magnitude
N_BOOT = 50


def _grid(**truth: float) -> SyntheticGrid:
    return SyntheticGrid(name="pinned", shifts=LADDER, models=("xs",), lrs=(1e-4, 1e-3), seeds=(0, 1, 2),
                         n_failed=0, **truth)


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[SyntheticGrid, AnalysisResult]]:
    truths = {"strong": _grid(benefit=60.0), "moderate": _grid(benefit=6.0, shift_decay=4.0),
              "flat": _grid(benefit=6.0, shift_decay=0.0), "weak": _grid(benefit=1.5)}
    return {name: (g, analyze(frame(g), n_boot=N_BOOT, workers=1)) for name, g in truths.items()}


def _verdicts(result: AnalysisResult) -> dict[int, str]:
    return {c.id: c.verdict for c in result.claims}


def _planted_multiplier(grid: SyntheticGrid, shift: tuple) -> float:
    b = grid.benefit / (1.0 + grid.shift_decay * shift_magnitude(*shift))  # the first (only) model: growth^0
    return b ** (1.0 / grid.alpha)


@pytest.mark.parametrize("truth, f1, f4", [("strong", "PASS", "PASS"), ("moderate", "FAIL", "PASS"),
                                           ("flat", "PASS", "FAIL"), ("weak", "FAIL", "FAIL")])
def test_f1_and_f4_verdicts_follow_the_planted_truth(results, truth: str, f1: str, f4: str) -> None:
    _, result = results[truth]
    verdicts = _verdicts(result)
    assert (verdicts[1], verdicts[4]) == (f1, f4), [c.summary for c in result.claims if c.id in (1, 4)]
    # one model size, no mixture: F3 and F5 cannot be decided, and say so rather than guess
    assert verdicts[3] == verdicts[5] == "NOT ENOUGH DATA"


def test_a_decisive_truth_gives_a_stable_verdict(results) -> None:
    """Where the truth is far from every threshold, (almost) every seed-bootstrap replicate agrees."""
    for truth in ("strong", "weak"):
        _, result = results[truth]
        for c in result.claims:
            if c.id in (1, 4):
                assert c.stability >= 0.9, (truth, c.id, c.stability)


def test_f1_reports_a_lower_bound_when_transfer_at_n_min_beats_every_scratch_point(results) -> None:
    grid, result = results["strong"]
    f1 = next(c for c in result.claims if c.id == 1)
    n_ratio = max(grid.n_values) / min(grid.n_values)
    for row in f1.numbers["deciding"]:
        assert row["level"] == LEVEL_STAR and row["bound"] == LOWER_BOUND, row
        assert row["multiplier"] == pytest.approx(n_ratio)  # N_max / N_min: never an inversion below N = 8
        assert row["passes"]


def test_exact_multipliers_inside_both_ranges_cover_the_planted_value(results) -> None:
    grid, result = results["moderate"]
    f1 = next(c for c in result.claims if c.id == 1)
    by_shift = {f"{up[0]}({up[1]:g},{up[2]:g}) -> {down[0]}({down[1]:g},{down[2]:g})": (up, down)
                for up, down in LADDER}
    rows = f1.numbers["deciding"]
    assert len(rows) == len(LADDER)
    for row in rows:
        shift = by_shift[row["pair"].split(" | ")[0]]
        truth = _planted_multiplier(grid, shift)
        assert row["level"] == LEVEL_INSIDE and row["bound"] == EXACT, row
        assert row["lo"] <= truth <= row["hi"], (row, truth)
    assert sum(r["passes"] for r in rows) == 1  # only the mildest shift's multiplier (17.5) clears 10


def test_f4_reads_the_whole_ladder(results) -> None:
    """All three shifts enter the ladder (not only its two ends), in order of magnitude."""
    for truth in ("moderate", "flat"):
        grid, result = results[truth]
        f4 = next(c for c in result.claims if c.id == 4)
        (ladder,) = f4.numbers["ladders"]
        assert len(ladder["shifts"]) == len(LADDER)
        assert np.all(np.diff(ladder["magnitude"]) > 0)
        if truth == "flat":  # the planted benefit is the same at every shift
            assert ladder["slope_lo"] < 0 < ladder["slope_hi"] and not ladder["shrinks"]
        else:  # it falls with the magnitude, and stays above 1
            assert ladder["slope_hi"] < 0 and ladder["remains"]
            assert np.all(np.diff(ladder["benefit"]) < 0)
