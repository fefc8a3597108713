"""Each claim evaluator says PASS, FAIL or NOT ENOUGH DATA from small hand-made tables."""

from __future__ import annotations

import pandas as pd

from analysis.claims import (FAIL, NOT_ENOUGH, PASS, claim_at_or_below, claim_data_efficiency, claim_lr, claim_mixed,
                             claim_model_size, claim_ood, evaluate_claims)


def _pointwise(ratios: list[float]) -> pd.DataFrame:
    n = [8 * 2 ** i for i in range(len(ratios))]
    return pd.DataFrame({"task": "t", "shift": "u -> t", "upstream": "u", "model": "xs", "n_train": n,
                         "scratch": [0.5] * len(n), "transfer": [0.5 / r for r in ratios], "ratio": ratios,
                         "n_scratch": 2, "n_transfer": 2})


def test_data_efficiency() -> None:
    summary = pd.DataFrame({"multiplier": [50.0, 20.0], "multiplier_lo": [30.0, 8.0]})
    assert claim_data_efficiency(summary).verdict == PASS
    assert claim_data_efficiency(summary.assign(multiplier=[3.0, 4.0])).verdict == FAIL
    assert claim_data_efficiency(pd.DataFrame()).verdict == NOT_ENOUGH
    assert claim_data_efficiency(summary).numbers["lower_bound_ok"] == 1
    # a lower end clipped replicates could pull down (≤) is not counted as clearing the bar
    flagged = summary.assign(multiplier_lo_bound=[-1, 0], multiplier_bound=[1, 0])
    c = claim_data_efficiency(flagged)
    assert c.numbers["lower_bound_ok"] == 0 and "1 multiplier(s) clipped" in c.summary


def test_at_or_below_and_narrowing() -> None:
    assert claim_at_or_below(_pointwise([5.0, 3.0, 2.0, 1.2])).verdict == PASS
    assert claim_at_or_below(_pointwise([1.2, 2.0, 3.0, 5.0])).verdict == FAIL  # gap widens
    assert claim_at_or_below(_pointwise([0.5, 0.6, 0.7, 0.8])).verdict == FAIL  # transfer worse
    assert claim_at_or_below(_pointwise([])).verdict == NOT_ENOUGH


def _benefit(rows: list[tuple[str, str, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["shift", "model", "n_params", "benefit", "magnitude", "zero_shot"]).assign(
        pde="poisson", task="poisson(5,10)")


def test_model_size() -> None:
    grows = _benefit([("a", "xs", 1e4, 2.0, 0.4, 0.2), ("a", "s", 1e6, 4.0, 0.4, 0.2)])
    assert claim_model_size(grows).verdict == PASS
    assert claim_model_size(grows.assign(benefit=[4.0, 2.0])).verdict == FAIL
    assert claim_model_size(grows.iloc[:1]).verdict == NOT_ENOUGH


def test_ood_ladder() -> None:
    ladder = _benefit([("small", "xs", 1e4, 4.0, 0.1, 0.1), ("large", "xs", 1e4, 2.0, 1.0, 0.4)])
    claim = claim_ood(ladder)
    assert claim.verdict == PASS and claim.numbers["ladders"][0]["ok"]
    assert claim_ood(ladder.assign(benefit=[4.0, 0.8])).verdict == FAIL  # benefit removed
    assert claim_ood(ladder.assign(zero_shot=[0.4, 0.1])).verdict == FAIL  # zero-shot falls
    assert claim_ood(ladder.iloc[:1]).verdict == NOT_ENOUGH


def test_mixed_pretraining() -> None:
    rows = []
    for task in ("poisson(5,10)", "advdiff(1,2)", "helmholtz(10,20)"):
        for n, s, t in ((8, 0.5, 0.2), (64, 0.2, 0.1)):
            rows.append({"task": task, "model": "xs", "n_train": n, "scratch": s, "transfer_mixed": t,
                         "transfer_single": t, "zero_shot_mixed": 0.3, "zero_shot_single": 0.25})
    mixed = pd.DataFrame(rows)
    assert claim_mixed(mixed).verdict == PASS
    assert claim_mixed(mixed.assign(zero_shot_mixed=0.9)).verdict == FAIL
    assert claim_mixed(mixed[mixed["task"] != "advdiff(1,2)"]).verdict == NOT_ENOUGH
    assert claim_mixed(mixed.iloc[:0]).verdict == NOT_ENOUGH


def test_learning_rate() -> None:
    assert claim_lr(pd.DataFrame({"untuned_ratio": [1.3, 1.2, 1.5]})).verdict == PASS
    assert claim_lr(pd.DataFrame({"untuned_ratio": [1.01, 1.02]})).verdict == FAIL
    assert claim_lr(pd.DataFrame({"untuned_ratio": []})).verdict == NOT_ENOUGH


def test_all_six_always_present() -> None:
    empty = pd.DataFrame()
    found = evaluate_claims(summary=empty, pointwise=_pointwise([]), benefit=_benefit([]),
                            mixed=pd.DataFrame(columns=["task"]), lr=pd.DataFrame({"untuned_ratio": []}))
    assert [c.id for c in found] == [1, 2, 3, 4, 5, 6]
    assert {c.verdict for c in found} == {NOT_ENOUGH}
    assert all(c.rule and c.finding for c in found)
