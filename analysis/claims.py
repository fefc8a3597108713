"""The paper's six findings (PROTOCOL.md §4), each decided on the runs present.

Every evaluator takes plain tables (built in :mod:`analysis.analyze`) and returns a
:class:`Claim`: PASS / FAIL / NOT ENOUGH DATA, the rule applied (written out, so a reader can
disagree with it) and the numbers that decided it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis.collect import system_of
from analysis.transfer import EITHER, EXACT, LOWER_BOUND, UPPER_BOUND

PASS = "PASS"
FAIL = "FAIL"
NOT_ENOUGH = "NOT ENOUGH DATA"

#: "Orders of magnitude fewer examples": at least one order.
MULTIPLIER_THRESHOLD = 10.0
#: "At or below scratch": transfer within 5 % of scratch counts (seed noise).
AT_OR_BELOW_TOLERANCE = 1.05
#: ... at this share of the (shift, model, N) cells.
AT_OR_BELOW_SHARE = 0.9
#: Tuning the fine-tuning LR "matters" when an untuned LR costs >= 10 % error.
LR_EFFECT_THRESHOLD = 1.10

#: The findings as the paper states them (PROTOCOL.md §4).
FINDINGS: dict[int, str] = {
    1: "Transfer reaches a given error with orders of magnitude fewer downstream examples than scratch.",
    2: "Transfer is at or below scratch across the whole N range; the gap narrows as N grows.",
    3: "The transfer benefit grows with model size.",
    4: "Larger OOD shifts shrink the benefit but do not remove it; zero-shot error grows with the shift.",
    5: "One model pre-trained on the mixture is useful for all three systems, zero-shot and fine-tuned.",
    6: "Gains depend on tuning the fine-tuning learning rate.",
}


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One finding, decided."""

    id: int
    finding: str
    rule: str
    verdict: str
    summary: str  # the deciding numbers in one line
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _claim(i: int, rule: str, verdict: str, summary: str, **numbers: Any) -> Claim:
    return Claim(id=i, finding=FINDINGS[i], rule=rule, verdict=verdict, summary=summary, numbers=numbers)


def format_number(x: object) -> str:
    """Three significant digits for console and claim text; ``n/a`` for missing, ``inf`` spelled out."""
    if x is None:
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}"


#: How a value clipped to the extrapolation horizon is shown (analysis.transfer's directions).
_BOUND_PREFIX = {LOWER_BOUND: "≥", UPPER_BOUND: "≤", EITHER: "~"}


def format_bound(x: object, direction: int) -> str:
    """:func:`format_number`, prefixed ``≥`` for a lower bound, ``≤`` for an upper bound and ``~``
    for an interval end that clipped replicates could move either way."""
    return _BOUND_PREFIX.get(int(direction), "") + format_number(x)


def format_interval(lo: object, hi: object, lo_direction: int = EXACT, hi_direction: int = EXACT) -> str:
    """``[lo, hi]`` with each end as :func:`format_bound` shows it."""
    return f"[{format_bound(lo, lo_direction)}, {format_bound(hi, hi_direction)}]"


def claim_data_efficiency(summary: pd.DataFrame) -> Claim:
    """Finding 1 from the multiplier at eps* (scratch's fitted error at its largest N)."""
    rule = (f"For every (shift, model size) with both fits, multiplier = N_scratch(eps*) / N_transfer(eps*) at "
            f"eps* = scratch's fitted error at its largest N. PASS if the median multiplier >= "
            f"{MULTIPLIER_THRESHOLD:g}, else FAIL.")
    if summary.empty:
        return _claim(1, rule, NOT_ENOUGH, "no (shift, model) pair with both a scratch and a transfer fit")
    m = summary["multiplier"].to_numpy(float)
    med = float(np.median(m))
    lo = summary["multiplier_lo"].to_numpy(float)
    # a lower end that clipped replicates could pull down (≤ or ~) is no evidence of clearing the bar
    firm = ~summary["multiplier_lo_bound"].isin([UPPER_BOUND, EITHER]).to_numpy() if "multiplier_lo_bound" in summary \
        else np.ones(len(lo), bool)
    lo_ok = int(np.sum((lo >= MULTIPLIER_THRESHOLD) & firm))
    verdict = PASS if med >= MULTIPLIER_THRESHOLD else FAIL
    text = (f"median multiplier {format_number(med)} over {len(m)} pairs (range {format_number(float(np.min(m)))}–{format_number(float(np.max(m)))}); "
            f"{lo_ok}/{len(m)} with the interval's lower end >= {MULTIPLIER_THRESHOLD:g}")
    bounds = int((summary["multiplier_bound"] != EXACT).sum()) if "multiplier_bound" in summary else 0
    if bounds:
        text += f"; {bounds} multiplier(s) clipped at the extrapolation horizon (bounds only)"
    return _claim(1, rule, verdict, text, median=med, n_pairs=len(m), lower_bound_ok=lo_ok)


def claim_at_or_below(pointwise: pd.DataFrame) -> Claim:
    """Finding 2 from observed (LR-selected, seed-averaged) errors per N."""
    rule = (f"(a) transfer <= {AT_OR_BELOW_TOLERANCE:g} x scratch in >= {AT_OR_BELOW_SHARE:.0%} of (shift, model, N) "
            f"cells, and (b) the ratio scratch/transfer falls with N (Spearman rho < 0) for a majority of "
            f"(shift, model) curves with >= 3 N. PASS if both, else FAIL.")
    if pointwise.empty:
        return _claim(2, rule, NOT_ENOUGH, "no N at which both arms have runs")
    ok = pointwise["transfer"] <= AT_OR_BELOW_TOLERANCE * pointwise["scratch"]
    share = float(ok.mean())
    rhos = []
    for _, g in pointwise.groupby(["shift", "model"]):
        if len(g) >= 3:
            rhos.append(float(spearmanr(np.log(g["n_train"].astype(float)), np.log(g["ratio"])).statistic))
    if not rhos:
        return _claim(2, rule, NOT_ENOUGH, f"transfer <= scratch in {share:.0%} of cells; no curve with >= 3 N",
                      share=share)
    narrowing = int(np.sum(np.array(rhos) < 0))
    verdict = PASS if share >= AT_OR_BELOW_SHARE and narrowing > len(rhos) / 2 else FAIL
    text = (f"transfer at/below scratch in {int(ok.sum())}/{len(ok)} cells ({share:.0%}); gap narrows with N in "
            f"{narrowing}/{len(rhos)} curves (median rho {format_number(float(np.median(rhos)))})")
    return _claim(2, rule, verdict, text, share=share, narrowing=narrowing, n_curves=len(rhos))


def _trend(x: np.ndarray, y: np.ndarray) -> float:
    """Sign-carrying trend of y in x: Spearman rho for >= 3 points, sign of the difference for 2."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) == 2:
        return float(np.sign(y[1] - y[0]))
    return float(spearmanr(x, y).statistic)


def claim_model_size(benefit: pd.DataFrame) -> Claim:
    """Finding 3 from the benefit (geometric-mean scratch/transfer ratio) per model size."""
    rule = ("Per shift with >= 2 model sizes: benefit = geometric mean over N of scratch/transfer error; trend of "
            "benefit in parameter count (Spearman rho, or the sign for 2 sizes). PASS if it grows (> 0) for a "
            "majority of shifts, else FAIL.")
    rows = benefit.dropna(subset=["n_params"])
    trends = {}
    for shift, g in rows.groupby("shift"):
        if g["model"].nunique() >= 2:
            trends[str(shift)] = _trend(g["n_params"].to_numpy(float), np.log(g["benefit"].to_numpy(float)))
    if not trends:
        return _claim(3, rule, NOT_ENOUGH, "no shift has both arms at >= 2 model sizes")
    up = sum(v > 0 for v in trends.values())
    verdict = PASS if up > len(trends) / 2 else FAIL
    text = f"benefit grows with model size in {up}/{len(trends)} shifts (" + ", ".join(
        f"{k}: {format_number(v)}" for k, v in list(trends.items())[:4]) + (", ..." if len(trends) > 4 else "") + ")"
    return _claim(3, rule, verdict, text, trends=trends)


def claim_ood(benefit: pd.DataFrame) -> Claim:
    """Finding 4 from the benefit and zero-shot error along each single-system shift ladder."""
    rule = ("Per (system, model size) ladder of >= 2 shifts ordered by shift magnitude (mean log-distance of the "
            "downstream range from the upstream range): (a) benefit at the largest shift < at the smallest, "
            "(b) benefit at the largest shift > 1, (c) zero-shot error at the largest > at the smallest (where "
            "zero-shot runs exist). PASS if all hold for a majority of ladders, else FAIL.")
    rows = benefit[np.isfinite(benefit["magnitude"].to_numpy(float))]
    results = []
    for (pde, model), g in rows.groupby(["pde", "model"]):
        if g["magnitude"].nunique() < 2:
            continue
        g = g.sort_values("magnitude")
        first, last = g.iloc[0], g.iloc[-1]
        shrinks = bool(last["benefit"] < first["benefit"])
        remains = bool(last["benefit"] > 1.0)
        zs = g["zero_shot"].to_numpy(float)
        zs_grows = None if np.isnan(zs[[0, -1]]).any() else bool(zs[-1] > zs[0])
        ok = shrinks and remains and zs_grows is not False
        results.append({"ladder": f"{pde} {model}", "shrinks": shrinks, "remains": remains,
                        "zero_shot_grows": zs_grows, "ok": ok,
                        "benefit_small_shift": float(first["benefit"]), "benefit_large_shift": float(last["benefit"])})
    if not results:
        return _claim(4, rule, NOT_ENOUGH, "no system has >= 2 shifts of different magnitude with both arms")
    n_ok = sum(r["ok"] for r in results)
    verdict = PASS if n_ok > len(results) / 2 else FAIL
    text = (f"{n_ok}/{len(results)} ladders satisfy all three; benefit shrinks in {sum(r['shrinks'] for r in results)}, "
            f"remains > 1 in {sum(r['remains'] for r in results)}, zero-shot grows in "
            f"{sum(r['zero_shot_grows'] is True for r in results)} (of "
            f"{sum(r['zero_shot_grows'] is not None for r in results)} with zero-shot runs)")
    return _claim(4, rule, verdict, text, ladders=results)


def claim_mixed(mixed: pd.DataFrame) -> Claim:
    """Finding 5 from the E4 table (mixture-pretrained model on each system)."""
    rule = ("For each of the three systems with mixture-pretrained runs: fine-tuned is useful if the geometric mean "
            "over N of scratch / transfer(mixed) > 1; zero-shot is useful if the mixed model's zero-shot error is "
            "below scratch's error at the smallest N. PASS if both hold on all three systems, FAIL if either fails "
            "on one, NOT ENOUGH DATA if fewer than three systems have mixed runs.")
    if mixed.empty:
        return _claim(5, rule, NOT_ENOUGH, "no runs pre-trained on the mixture")
    m = mixed.assign(pde=mixed["task"].map(system_of))
    per: dict[str, dict[str, Any]] = {}
    for pde, g in m.groupby("pde"):
        both = g.dropna(subset=["scratch", "transfer_mixed"])
        ft = float(np.exp(np.mean(np.log(both["scratch"] / both["transfer_mixed"])))) if len(both) else math.nan
        small = g.dropna(subset=["scratch"])
        small = small[small["n_train"] == small["n_train"].min()] if len(small) else small
        zs = float(np.nanmin(g["zero_shot_mixed"])) if g["zero_shot_mixed"].notna().any() else math.nan
        sc = float(small["scratch"].min()) if len(small) else math.nan
        per[str(pde)] = {"fine_tuned_benefit": ft, "fine_tuned_useful": bool(ft > 1), "zero_shot": zs,
                         "scratch_smallest_n": sc, "zero_shot_useful": bool(zs < sc)}
    text = "; ".join(f"{k}: fine-tuned benefit {format_number(v['fine_tuned_benefit'])}, zero-shot {format_number(v['zero_shot'])} vs "
                     f"scratch {format_number(v['scratch_smallest_n'])}" for k, v in per.items())
    if len(per) < 3:
        return _claim(5, rule, NOT_ENOUGH, f"mixed runs on {len(per)}/3 systems: {text}", systems=per)
    ok = all(v["fine_tuned_useful"] and v["zero_shot_useful"] for v in per.values())
    return _claim(5, rule, PASS if ok else FAIL, text, systems=per)


def claim_lr(lr: pd.DataFrame) -> Claim:
    """Finding 6 from the LR sweep of the transfer arm."""
    rule = (f"Over transfer cells that swept >= 2 LRs: ratio = (median test error over the swept LRs) / (test error "
            f"of the LR chosen on validation). PASS if the median ratio >= {LR_EFFECT_THRESHOLD:g} (an untuned "
            f"fine-tuning LR costs >= {LR_EFFECT_THRESHOLD - 1:.0%} error), else FAIL.")
    if lr.empty:
        return _claim(6, rule, NOT_ENOUGH, "no transfer cell compared two or more learning rates")
    r = lr["untuned_ratio"].to_numpy(float)
    med = float(np.median(r))
    verdict = PASS if med >= LR_EFFECT_THRESHOLD else FAIL
    text = f"median untuned/tuned error ratio {format_number(med)} over {len(r)} cells (90th percentile {format_number(float(np.quantile(r, 0.9)))})"
    return _claim(6, rule, verdict, text, median=med, n_cells=len(r))


def evaluate_claims(*, summary: pd.DataFrame, pointwise: pd.DataFrame, benefit: pd.DataFrame, mixed: pd.DataFrame,
                    lr: pd.DataFrame) -> list[Claim]:
    """Decide all six findings.

    Parameters
    ----------
    summary
        Per (task, shift, model) transfer summary (:func:`analysis.analyze.transfer_tables`).
    pointwise, benefit, mixed
        Tables of :mod:`analysis.analyze`.
    lr
        Transfer LR-sweep table (:func:`analysis.analyze.lr_table`).
    """
    return [claim_data_efficiency(summary), claim_at_or_below(pointwise), claim_model_size(benefit),
            claim_ood(benefit), claim_mixed(mixed), claim_lr(lr)]
