"""Each claim rule, on planted curves fitted the way the analysis fits them, says PASS, FAIL or
NOT ENOUGH DATA for the right reason, decided on intervals and with its stability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import laws
from analysis.claims import (FAIL, NOT_ENOUGH, PASS, Pair, PairKey, claim_at_or_below, claim_data_efficiency,
                             claim_lr, claim_mixed, claim_model_size, claim_ood, evaluate_claims)
from analysis.fits import PowerLawFit, fit_curve
from analysis.transfer import LEVEL_STAR, LOWER_BOUND, transfer_metrics

N = np.array([8.0, 16, 32, 64, 128, 256])
SEEDS = 3


def _fit(law: tuple[float, float, float], seed: int, n: np.ndarray = N, seed_sd: float = 0.03,
         point_sd: float = 0.02) -> PowerLawFit:
    """Planted law with a persistent per-seed offset and per-point noise, fitted as the analysis does."""
    rng = np.random.default_rng(seed)
    offsets = seed_sd * rng.standard_normal(SEEDS)
    nn = np.repeat(n, SEEDS)
    unit = np.tile(np.arange(SEEDS), n.size)
    err = laws.saturating(nn, *law) * np.exp(offsets[unit] + point_sd * rng.standard_normal(nn.size))
    return fit_curve(nn, err, unit=unit, n_boot=100, seed=seed, heldout=False)


def _pair(scratch: tuple, transfer: tuple, seed: int, *, task: str = "poisson(5,10)", shift: str = "",
          model: str = "xs", zero_shot: float = math.nan, **kwargs) -> Pair:
    shift = shift or f"poisson(1,5) -> {task}"
    s, t = _fit(scratch, 2 * seed), _fit(transfer, 2 * seed + 1)
    m = transfer_metrics(s, t, task=task, shift=shift, model=model, zero_shot=zero_shot)
    return Pair(key=PairKey(task, shift, model), scratch=s, transfer=t, metrics=m, zero_shot=zero_shot,
                upstream=kwargs.pop("upstream", shift.split(" -> ")[0]), **kwargs)


SCRATCH = (0.01, 2.0, 0.5)


def test_data_efficiency_passes_on_a_large_multiplier_and_fails_on_a_small_one() -> None:
    big = _pair(SCRATCH, (0.01, 2.0 / 6.0, 0.5), 0)  # multiplier 36 at every level
    claim = claim_data_efficiency([big])
    assert claim.verdict == PASS and 0.5 <= claim.stability <= 1.0
    row = claim.numbers["deciding"][0]
    assert row["lo"] >= 10 and row["multiplier"] == pytest.approx(36, rel=0.3)
    small = _pair(SCRATCH, (0.01, 2.0 / 1.5, 0.5), 1)  # multiplier 2.25
    assert claim_data_efficiency([small]).verdict == FAIL
    assert claim_data_efficiency([]).verdict == NOT_ENOUGH


def test_transfer_beating_eps_at_the_smallest_n_gives_a_lower_bound_never_an_inversion_below_it() -> None:
    # transfer at N = 8 (0.02 + 0.05 = 0.07) already beats scratch at N = 256 (0.01 + 2/16 = 0.135)
    pair = _pair(SCRATCH, (0.02, 0.05 * math.sqrt(8), 0.5), 2)
    m = pair.metrics
    star = list(m.level).index(LEVEL_STAR)
    assert m.multiplier.bound[star] == LOWER_BOUND and m.multiplier.lo_bound[star] == LOWER_BOUND
    # the value is N_scratch(eps) / N_min, not N_scratch / N_transfer with N_transfer < 8
    assert m.multiplier.value[star] == pytest.approx(m.n_scratch[star] / 8.0, rel=1e-6)
    assert m.n_transfer[star] < 8.0
    row = claim_data_efficiency([pair]).numbers["deciding"][0]
    assert row["level"] == LEVEL_STAR and row["bound"] == LOWER_BOUND


def test_at_or_below_passes_when_the_gap_narrows_and_fails_when_transfer_ends_above() -> None:
    narrowing = _pair(SCRATCH, (0.01, 0.5, 0.5), 3)  # common floor: scratch / transfer -> 1
    claim = claim_at_or_below([narrowing])
    assert claim.verdict == PASS, claim.summary
    crossing = _pair(SCRATCH, (0.12, 0.3, 0.5), 4)  # transfer's floor above scratch at large N
    claim = claim_at_or_below([crossing])
    assert claim.verdict == FAIL and claim.numbers["pairs_detail"][0]["worse_at"]
    assert claim_at_or_below([]).verdict == NOT_ENOUGH


def test_model_size_trend_needs_three_sizes_and_its_interval() -> None:
    sizes = [("xxs", 1e3, 2.0), ("xs", 1e4, 4.0), ("s", 1e5, 8.0)]
    grows = [_pair(SCRATCH, (0.01, 2.0 / b, 0.5), 10 + i, model=m, n_params=p) for i, (m, p, b) in enumerate(sizes)]
    claim = claim_model_size(grows)
    assert claim.verdict == PASS and "mode-truncation floor" in claim.rule
    shrinks = [_pair(SCRATCH, (0.01, 2.0 / b, 0.5), 20 + i, model=m, n_params=p)
               for i, (m, p, b) in enumerate(zip(("xxs", "xs", "s"), (1e3, 1e4, 1e5), (8.0, 4.0, 2.0)))]
    assert claim_model_size(shrinks).verdict == FAIL
    assert claim_model_size(grows[:2]).verdict == NOT_ENOUGH


def test_ood_ladder_is_judged_over_the_whole_ladder() -> None:
    rungs = [("poisson(2.5,7.5)", 0.11, 6.0, 0.1), ("poisson(5,10)", 0.39, 4.0, 0.2), ("poisson(10,20)", 1.08, 2.0, 0.4)]
    ladder = [_pair(SCRATCH, (0.01, 2.0 / b, 0.5), 30 + i, task=t, magnitude=mag, zero_shot=z)
              for i, (t, mag, b, z) in enumerate(rungs)]
    claim = claim_ood(ladder)
    assert claim.verdict == PASS, claim.summary
    assert len(claim.numbers["ladders"][0]["benefit"]) == 3
    removed = ladder[:2] + [_pair(SCRATCH, (0.01, 2.0 / 0.7, 0.5), 33, task="poisson(10,20)", magnitude=1.08,
                                  zero_shot=0.4)]
    assert claim_ood(removed).verdict == FAIL  # the benefit is gone at the largest shift
    assert claim_ood(ladder[:1]).verdict == NOT_ENOUGH


TASKS = ("poisson(5,10)", "advdiff(1,2)", "helmholtz(10,20)")


def test_mixed_pretraining_useless_out_of_distribution_fails() -> None:
    """The reviewer's probe: mixed zero-shot 0.9 vs scratch 0.32 and fine-tuned 2.8x worse than scratch."""
    scratch = (0.01, 0.9, 0.5)  # 0.33 at N = 8
    useless = [_pair(scratch, (0.028, 2.52, 0.5), 40 + i, task=t, shift=f"mixed -> {t}", upstream="mixed",
                     zero_shot=0.9) for i, t in enumerate(TASKS)]
    claim = claim_mixed(useless, in_distribution=lambda task: False)
    assert claim.verdict == FAIL, claim.summary
    assert not any(r["fine_tuned_useful"] or r["zero_shot_useful"] for r in claim.numbers["tasks"])
    useful = [_pair(scratch, (0.01, 0.3, 0.5), 50 + i, task=t, shift=f"mixed -> {t}", upstream="mixed",
                    zero_shot=0.1) for i, t in enumerate(TASKS)]
    single = _pair(scratch, (0.01, 0.2, 0.5), 60, task=TASKS[0], upstream="poisson(1,5)")
    claim = claim_mixed(useful + [single], in_distribution=lambda task: False)
    assert claim.verdict == PASS and 0.5 <= claim.stability <= 1.0
    assert "mixed_vs_single" in claim.numbers["tasks"][[r["task"] for r in claim.numbers["tasks"]].index(TASKS[0])]
    assert claim_mixed(useful[:2], in_distribution=lambda task: False).verdict == NOT_ENOUGH


def test_learning_rate_claim_compares_tuned_with_the_pretraining_lr() -> None:
    transfer = (0.01, 0.5, 0.5)
    fixed = _fit((0.015, 0.75, 0.5), 71)  # 1.5x worse at every N
    pair = _pair(SCRATCH, transfer, 70)
    tuned = Pair(**{**pair.__dict__, "fixed_lr": fixed})
    claim = claim_lr([tuned], (12, 12))
    assert claim.verdict == PASS and claim.numbers["pairs_detail"][0]["gain"] == pytest.approx(1.5, rel=0.15)
    same = Pair(**{**pair.__dict__, "fixed_lr": _fit(transfer, 72)})
    assert claim_lr([same], (0, 12)).verdict == FAIL
    assert claim_lr([pair], (0, 0)).verdict == NOT_ENOUGH


def test_all_six_always_present() -> None:
    found = evaluate_claims([], in_distribution=lambda task: False)
    assert [c.id for c in found] == [1, 2, 3, 4, 5, 6]
    assert {c.verdict for c in found} == {NOT_ENOUGH}
    assert all(c.rule and c.finding for c in found)


def test_one_seed_curves_decide_nothing() -> None:
    n = np.repeat(N, 1)
    one = fit_curve(n, laws.saturating(n, *SCRATCH), unit=np.zeros(n.size, int), n_boot=50)
    better = fit_curve(n, laws.saturating(n, 0.01, 0.2, 0.5), unit=np.zeros(n.size, int), n_boot=50)
    m = transfer_metrics(one, better, task="poisson(5,10)", shift="a -> poisson(5,10)", model="xs")
    pair = Pair(key=PairKey("poisson(5,10)", "a -> poisson(5,10)", "xs"), scratch=one, transfer=better, metrics=m)
    for claim in (claim_data_efficiency([pair]), claim_at_or_below([pair])):
        assert claim.verdict == NOT_ENOUGH and "single seed" in claim.summary


def test_ood_ladder_without_zero_shot_runs_is_not_decided() -> None:
    rungs = [("poisson(2.5,7.5)", 0.11, 6.0), ("poisson(5,10)", 0.39, 4.0), ("poisson(10,20)", 1.08, 2.0)]
    ladder = [_pair(SCRATCH, (0.01, 2.0 / b, 0.5), 80 + i, task=t, magnitude=mag) for i, (t, mag, b) in enumerate(rungs)]
    assert claim_ood(ladder).verdict == NOT_ENOUGH


def test_mixed_pretraining_useless_on_one_ood_task_never_passes() -> None:
    """Useful on three in-distribution tasks, useless on one OOD task: FAIL, and NOT ENOUGH DATA
    (never PASS) when that OOD task has no fit with intervals."""
    scratch = (0.01, 0.9, 0.5)
    ids = ("poisson(1,5)", "advdiff(0.2,1)", "helmholtz(1,10)")
    useful = [_pair(scratch, (0.01, 0.3, 0.5), 90 + i, task=t, shift=f"mixed -> {t}", upstream="mixed",
                    zero_shot=0.1) for i, t in enumerate(ids)]
    useless = _pair(scratch, (0.028, 2.52, 0.5), 95, task="poisson(5,10)", shift="mixed -> poisson(5,10)",
                    upstream="mixed", zero_shot=0.9)
    in_dist = lambda task: task in ids  # noqa: E731
    assert claim_mixed(useful + [useless], in_distribution=in_dist).verdict == FAIL
    hidden = claim_mixed(useful, in_distribution=in_dist, mixed_tasks=[*ids, "poisson(5,10)"])
    assert hidden.verdict == NOT_ENOUGH and "poisson(5,10)" in hidden.summary
    assert claim_mixed(useful, in_distribution=in_dist).verdict == NOT_ENOUGH  # no OOD task at all
