"""The paper's six findings (docs/protocol.md §4.1), each decided on intervals, with its stability.

Every evaluator takes the fitted curves (:class:`analysis.fits.PowerLawFit`, whose bootstrap
replicates redraw whole seed curves) and the transfer metrics, and returns a :class:`Claim`:
PASS / FAIL / NOT ENOUGH DATA, the rule applied (written out, so a reader can disagree with it),
the numbers that decided it, and its *stability*: the share of bootstrap replicates whose
point-value verdict equals the reported verdict (a verdict is only as good as its worst
plausible replicate: 0.55 means a coin flip, whatever the label says).

Rules (issue 9 §4):

- F1 on the multiplier interval's lower end (>= 10) at one deciding error level per pair: the
  paper's 1e-2 where both arms reach it inside the horizon, else the lowest level inside both
  arms' fitted ranges, else scratch's error at its largest N, where the multiplier is a lower
  bound N_scratch / N_min (never an inversion below the smallest N run).
- F2: transfer not significantly above scratch at any N run, and the gap narrows: the slope of
  log(scratch / transfer) against log N has its interval below 0.
- F3: over >= 3 model sizes, the slope of log benefit against log parameter count has its
  interval above 0.  m = 4 rungs sit on a mode-truncation floor (about 4.8 % of ||u|| of
  poisson(5,10) lies outside the kept modes), so their error is set by truncation, not data.
- F4: along each (system, upstream, model) ladder of >= 2 shifts: the slope of log benefit
  against the shift magnitude has its interval below 0, the benefit's lower end is above 1 at
  every shift, and the zero-shot error rises with the magnitude.
- F5: on every task of the three systems, in and out of distribution: mixed-pre-trained transfer
  beats scratch (benefit's lower end > 1) and mixed zero-shot beats scratch at the smallest N
  (below the lower end of scratch's interval there); mixed vs single-system pre-training on the
  same task is reported beside it.
- F6: the benefit with the fine-tuning LR tuned on validation vs fixed at the pre-training LR:
  their ratio's lower end above 1 and its point value >= 1.10.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis.collect import system_of
from analysis.fits import PowerLawFit
from analysis.numbers import format_estimate, format_number
from analysis.transfer import (EITHER, EXACT, LEVEL_INSIDE, LEVEL_PAPER, LEVEL_STAR, UPPER_BOUND,
                               TransferMetrics)

PASS = "PASS"
FAIL = "FAIL"
NOT_ENOUGH = "NOT ENOUGH DATA"

#: "Orders of magnitude fewer examples": at least one order.
MULTIPLIER_THRESHOLD = 10.0
#: "Orders of magnitude" in the plural: two.
ORDERS_THRESHOLD = 100.0
#: A replicate counts transfer "at or below" scratch within this factor (seed noise).
AT_OR_BELOW_TOLERANCE = 1.05
#: Tuning the fine-tuning LR "matters" when it raises the benefit by >= 10 %.
LR_EFFECT_THRESHOLD = 1.10
#: Fewest model sizes for a trend (F3).
MIN_MODEL_SIZES = 3
#: The error regime the paper works in (docs/protocol.md §4.3).
PAPER_REGIME = 1e-2
#: Share of ||u|| outside the m = 4 kept modes on poisson(5,10) (issue 9 §4, measured at 32^2).
M4_TRUNCATION_FLOOR = 0.048

#: The findings as the paper states them (docs/protocol.md §4.1).
FINDINGS: dict[int, str] = {
    1: "Transfer reaches a given error with orders of magnitude fewer downstream examples than scratch.",
    2: "Transfer is at or below scratch across the whole N range; the gap narrows as N grows.",
    3: "The transfer benefit grows with model size.",
    4: "Larger OOD shifts shrink the benefit but do not remove it; zero-shot error grows with the shift.",
    5: "One model pre-trained on the mixture is useful for all three systems, zero-shot and fine-tuned.",
    6: "Gains depend on tuning the fine-tuning learning rate.",
}


class PairKey(NamedTuple):
    task: str
    shift: str
    model: str


@dataclass(frozen=True, kw_only=True)
class Pair:
    """A transfer curve, its scratch baseline on the same task and model, and what the claims
    need beside them."""

    key: PairKey
    scratch: PowerLawFit
    transfer: PowerLawFit
    upstream: str = ""  # pre-training dataset label ("mixed" for E4)
    magnitude: float = math.nan  # OOD shift size (analysis.transfer.shift_magnitude)
    n_params: float = math.nan
    zero_shot: float = math.nan  # zero-shot error on the task (geometric mean over checkpoints)
    fixed_lr: PowerLawFit | None = None  # transfer at the pre-training LR (Finding 6)
    metrics: TransferMetrics | None = None
    unconverged: int = 0  # selected runs of both curves whose convergence diagnostic failed


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One finding, decided."""

    id: int
    finding: str
    rule: str
    verdict: str
    summary: str  # the deciding numbers in one line
    stability: float = math.nan  # share of bootstrap replicates giving the same verdict
    regime: str = ""  # the errors the deciding curves reached, beside the paper's ~1e-2
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _claim(i: int, rule: str, verdict: str, summary: str, *, stability: float = math.nan,
           pairs: Sequence[Pair] = (), **numbers: Any) -> Claim:
    regime = regime_text(pairs)
    # a scratch curve shared by several pairs is counted once per pair: an upper bound, said as such
    unconverged = sum(p.unconverged for p in pairs)
    if unconverged:
        summary += f"; up to {unconverged} selected run(s) behind it did not converge"
    return Claim(id=i, finding=FINDINGS[i], rule=rule, verdict=verdict, summary=summary, stability=stability,
                 regime=regime, numbers={**numbers, "unconverged_runs": unconverged})


# --- shared helpers ----------------------------------------------------------------------------


def regime_text(pairs: Iterable[Pair]) -> str:
    """The test errors the pairs' fitted curves span over their N, beside the paper's regime."""
    values = []
    for p in pairs:
        for fit in (p.scratch, p.transfer):
            values.extend(float(v) for v in fit.predict(np.array(fit.n_range)))
    if not values:
        return ""
    lo, hi = min(values), max(values)
    where = "at the paper's regime" if lo <= 2 * PAPER_REGIME else f"{lo / PAPER_REGIME:.3g}x above the paper's regime"
    return f"errors reached {format_number(lo)}–{format_number(hi)} (paper ~1e-2: {where})"


def _common_n(*fits: PowerLawFit) -> np.ndarray:
    """The N every fit was observed at."""
    sets = [set(f.sizes) for f in fits if f is not None]
    return np.array(sorted(set.intersection(*sets))) if sets else np.empty(0)


def _n_boot(*fits: PowerLawFit | None) -> int:
    return min((len(f.bootstrap) for f in fits if f is not None), default=0)


def _log_ratio(num: PowerLawFit, den: PowerLawFit, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(num / den) at ``n``: the point value (len n,) and the paired replicates (B, len n)."""
    point = np.log(num.predict(n)) - np.log(den.predict(n))
    B = _n_boot(num, den)
    reps = np.log(num.curves(n)[:B]) - np.log(den.curves(n)[:B]) if B else np.empty((0, n.size))
    return point, reps


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x along the last axis (y: (..., len x))."""
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)


def _interval(point: float, reps: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    if reps.size == 0:
        return point, math.nan, math.nan
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(reps[np.isfinite(reps)], [tail, 1 - tail]) if np.isfinite(reps).any() else (math.nan,) * 2
    return point, float(lo), float(hi)


def _majority(flags: np.ndarray) -> np.ndarray:
    """Per replicate row: more than half of the columns hold."""
    return flags.sum(axis=-1) > flags.shape[-1] / 2


def _stability(verdict: str, replicate_pass: np.ndarray | None) -> float:
    """Share of replicates whose verdict equals ``verdict`` (nan without replicates or a verdict)."""
    if replicate_pass is None or replicate_pass.size == 0 or verdict == NOT_ENOUGH:
        return math.nan
    return float(np.mean(replicate_pass == (verdict == PASS)))


def _majority_verdict(passes: Sequence[bool], rep_flags: Sequence[np.ndarray]) -> tuple[str, float]:
    """PASS if a majority of the units (pairs, shifts, ladders) pass, and its stability: the share of
    replicates in which a majority of the units pass by point values (nan if a unit has no replicates)."""
    verdict = PASS if sum(passes) > len(passes) / 2 else FAIL
    if len(rep_flags) != len(passes) or not rep_flags:
        return verdict, math.nan
    B = min(x.size for x in rep_flags)
    return verdict, _stability(verdict, _majority(np.column_stack([x[:B] for x in rep_flags])))


def _fmt_iv(point: float, lo: float, hi: float, transform: Callable[[float], float] = math.exp) -> str:
    return f"{format_number(transform(point))} [{format_number(transform(lo))}, {format_number(transform(hi))}]"


def _with_intervals(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs whose curves carry bootstrap replicates (a one-seed curve has none: no verdict)."""
    return [p for p in pairs if _n_boot(p.scratch, p.transfer) > 0]


_NO_INTERVALS = "no pair has seed intervals (every curve has a single seed): nothing can be decided on intervals"


# --- F1 ------------------------------------------------------------------------------------------


def _deciding_row(m: TransferMetrics) -> int:
    """The paper's level if both arms reach it exactly inside the horizon, else the lowest level
    inside both fitted ranges, else scratch's error at its largest N."""
    levels = list(m.level)
    paper = levels.index(LEVEL_PAPER) if LEVEL_PAPER in levels else -1
    tail = (1 - m.confidence) / 2
    if paper >= 0 and m.multiplier.bound[paper] == EXACT and np.isfinite(m.multiplier.value[paper]) \
            and m.multiplier.undefined[paper] <= tail and m.multiplier.censored[paper] <= tail:
        return paper
    inside = [i for i, lv in enumerate(levels) if lv == LEVEL_INSIDE]
    if inside:
        return min(inside, key=lambda i: m.eps[i])
    return levels.index(LEVEL_STAR) if LEVEL_STAR in levels else len(levels) - 1


def _firm_lower_end(lo: float, direction: int, undefined: float = 0.0, tail: float = 0.025) -> bool:
    """A lower end that clipped replicates could pull down (≤ or ~) is no evidence of clearing a bar; nor
    is one computed without more than a tail's share of replicates (where neither arm reaches the level,
    typically because transfer's floor is above it: leaving them out raises the lower end)."""
    return math.isfinite(lo) and direction not in (UPPER_BOUND, EITHER) and undefined <= tail


def claim_data_efficiency(pairs: Sequence[Pair]) -> Claim:
    rule = (f"Per (shift, model) pair, multiplier = N_scratch(eps) / N_transfer(eps) at one deciding level: the "
            f"paper's 1e-2 if both arms reach it inside the horizon, else the lowest level inside both arms' fitted "
            f"ranges, else scratch's error at its largest N (then a lower bound N_scratch / N_min: laws are never "
            f"inverted below the smallest N run). A pair passes if the 95% interval's lower end is >= "
            f"{MULTIPLIER_THRESHOLD:g} and firm (not a value clipped replicates could lower). PASS if a majority of "
            f"pairs pass, else FAIL. 'Orders of magnitude' is reported: any level with a firm lower end >= "
            f"{ORDERS_THRESHOLD:g}.")
    pairs = [p for p in pairs if p.metrics is not None]
    if not pairs:
        return _claim(1, rule, NOT_ENOUGH, "no (shift, model) pair with both a scratch and a transfer fit")
    if not _with_intervals(pairs):
        return _claim(1, rule, NOT_ENOUGH, _NO_INTERVALS)
    pairs = _with_intervals(pairs)
    rows, passes, reps, texts, orders = [], [], [], [], 0
    for p in pairs:
        m = p.metrics
        i = _deciding_row(m)
        tail = (1 - m.confidence) / 2
        ok = _firm_lower_end(float(m.multiplier.lo[i]), int(m.multiplier.lo_bound[i]),
                             float(m.multiplier.undefined[i]), tail) and m.multiplier.lo[i] >= MULTIPLIER_THRESHOLD
        passes.append(ok)
        firm = [j for j in range(len(m.eps)) if _firm_lower_end(float(m.multiplier.lo[j]), int(m.multiplier.lo_bound[j]),
                                                                 float(m.multiplier.undefined[j]), tail)]
        orders += any(m.multiplier.lo[j] >= ORDERS_THRESHOLD for j in firm)
        r = m.multiplier.replicates[:, i]
        reps.append(r if r.size else None)
        zs = " (zero-shot already reaches it)" if m.zero_shot_reaches[i] else ""
        point, interval = format_estimate(m.multiplier.columns("multiplier", i), "multiplier")
        texts.append(f"{p.key.shift} {p.key.model}: {point} {interval}"
                     f" at eps={format_number(m.eps[i])} ({m.level[i] or 'given'}){zs}")
        rows.append({"pair": f"{p.key.shift} | {p.key.model}", "eps": float(m.eps[i]), "level": str(m.level[i]),
                     "multiplier": float(m.multiplier.value[i]), "lo": float(m.multiplier.lo[i]),
                     "hi": float(m.multiplier.hi[i]), "bound": int(m.multiplier.bound[i]), "passes": bool(ok),
                     "zero_shot_reaches": bool(m.zero_shot_reaches[i])})
    n_pass = int(sum(passes))
    verdict = PASS if n_pass > len(pairs) / 2 else FAIL
    stability = math.nan
    if all(r is not None for r in reps):
        B = min(r.size for r in reps)
        rep_pass = np.column_stack([r[:B] >= MULTIPLIER_THRESHOLD for r in reps])  # (B, pairs)
        stability = _stability(verdict, _majority(rep_pass))
    text = (f"{n_pass}/{len(pairs)} pairs with a firm lower end >= {MULTIPLIER_THRESHOLD:g}; "
            + "; ".join(texts[:4]) + ("; ..." if len(texts) > 4 else "")
            + f"; orders of magnitude (firm lower end >= {ORDERS_THRESHOLD:g}) in {orders}/{len(pairs)} pairs")
    return _claim(1, rule, verdict, text, stability=stability, pairs=pairs, pairs_passing=n_pass, n_pairs=len(pairs),
                  orders_of_magnitude=orders, deciding=rows)


# --- F2 ------------------------------------------------------------------------------------------


def claim_at_or_below(pairs: Sequence[Pair]) -> Claim:
    rule = ("Per (shift, model) pair, at the N both arms were run at: (a) transfer is not significantly above "
            "scratch (the 95% interval of transfer/scratch never lies wholly above 1), and (b) the gap narrows: the "
            "slope of log(scratch/transfer) against log N has its 95% interval below 0. PASS if (a) holds in every "
            "pair and (b) in a majority, else FAIL (NOT ENOUGH DATA below 3 common N).")
    used, rows = [], []
    a_reps, b_reps = [], []
    if pairs and not _with_intervals(pairs):
        return _claim(2, rule, NOT_ENOUGH, _NO_INTERVALS)
    for p in _with_intervals(pairs):
        n = _common_n(p.scratch, p.transfer)
        if n.size < 3:
            continue
        point, reps = _log_ratio(p.transfer, p.scratch, n)  # log(transfer / scratch) per N
        if reps.shape[0]:
            lo_t = np.quantile(reps, 0.025, axis=0)
        else:
            lo_t = np.full(n.size, np.nan)
        worse = [float(x) for x, lo in zip(n, lo_t) if lo > 0]
        s_point = float(_slope(np.log(n), -point))
        s_reps = _slope(np.log(n), -reps) if reps.shape[0] else np.empty(0)
        _, s_lo, s_hi = _interval(s_point, s_reps)
        a_ok, b_ok = not worse and reps.shape[0] > 0, bool(s_hi < 0)
        rows.append({"pair": f"{p.key.shift} | {p.key.model}", "worse_at": worse, "slope": s_point,
                     "slope_lo": s_lo, "slope_hi": s_hi, "at_or_below": a_ok, "narrows": b_ok})
        used.append(p)
        if reps.shape[0]:
            a_reps.append(np.all(reps <= math.log(AT_OR_BELOW_TOLERANCE), axis=1))
            b_reps.append(s_reps < 0)
    if not rows:
        return _claim(2, rule, NOT_ENOUGH, "no pair with both arms at >= 3 common N")
    a_all = all(r["at_or_below"] for r in rows)
    b_n = sum(r["narrows"] for r in rows)
    verdict = PASS if a_all and b_n > len(rows) / 2 else FAIL
    stability = math.nan
    if len(a_reps) == len(rows):
        B = min(x.size for x in a_reps)
        rep_pass = np.column_stack([x[:B] for x in a_reps]).all(axis=1) & _majority(np.column_stack([x[:B] for x in b_reps]))
        stability = _stability(verdict, rep_pass)
    text = (f"transfer not above scratch in {sum(r['at_or_below'] for r in rows)}/{len(rows)} pairs; gap narrows "
            f"(slope interval < 0) in {b_n}/{len(rows)}; slopes: "
            + ", ".join(f"{r['pair']}: {format_number(r['slope'])} [{format_number(r['slope_lo'])}, "
                        f"{format_number(r['slope_hi'])}]" for r in rows[:3]) + (", ..." if len(rows) > 3 else ""))
    return _claim(2, rule, verdict, text, stability=stability, pairs=used, pairs_detail=rows)


# --- F3 ------------------------------------------------------------------------------------------


def _benefit(p: Pair, n: np.ndarray) -> tuple[float, np.ndarray]:
    """log of the geometric-mean benefit scratch / transfer over ``n``: point and replicates (B,)."""
    point, reps = _log_ratio(p.scratch, p.transfer, n)
    return float(point.mean()), reps.mean(axis=1)


def claim_model_size(pairs: Sequence[Pair]) -> Claim:
    rule = (f"Per shift with >= {MIN_MODEL_SIZES} model sizes: benefit = geometric mean over the common N of fitted "
            f"scratch/transfer; the slope of log benefit against log parameter count must have its 95% interval "
            f"above 0. PASS if so for a majority of shifts, else FAIL. Rungs keeping m = 4 modes have a "
            f"mode-truncation floor (about {M4_TRUNCATION_FLOOR:.1%} of ||u|| of poisson(5,10) lies outside the kept "
            f"modes), so their error there is set by truncation, not by data.")
    by_shift: dict[tuple[str, str], list[Pair]] = {}
    for p in _with_intervals(pairs):
        if math.isfinite(p.n_params):
            by_shift.setdefault((p.key.task, p.key.shift), []).append(p)
    rows, used, rep_flags = [], [], []
    for (task, shift), group in by_shift.items():
        if len({p.key.model for p in group}) < MIN_MODEL_SIZES:
            continue
        n = _common_n(*[f for p in group for f in (p.scratch, p.transfer)])
        if n.size < 2:
            continue
        group = sorted(group, key=lambda p: p.n_params)
        logp = np.log([p.n_params for p in group])
        points, reps = zip(*(_benefit(p, n) for p in group))
        slope = float(_slope(logp, np.array(points)))
        B = min(r.size for r in reps)
        s_reps = _slope(logp, np.column_stack([r[:B] for r in reps])) if B else np.empty(0)
        _, lo, hi = _interval(slope, s_reps)
        rows.append({"shift": shift, "models": [p.key.model for p in group],
                     "benefit": [math.exp(v) for v in points], "slope": slope, "slope_lo": lo, "slope_hi": hi,
                     "grows": bool(lo > 0)})
        used.extend(group)
        if B:
            rep_flags.append(s_reps > 0)
    if not rows:
        return _claim(3, rule, NOT_ENOUGH, f"no shift has both arms fitted at >= {MIN_MODEL_SIZES} model sizes")
    n_up = sum(r["grows"] for r in rows)
    verdict, stability = _majority_verdict([r["grows"] for r in rows], rep_flags)
    m4 = any(p.key.model in ("xxs", "xs") for p in used)
    text = (f"benefit grows with size (slope interval > 0) in {n_up}/{len(rows)} shifts; "
            + "; ".join(f"{r['shift']}: slope {format_number(r['slope'])} [{format_number(r['slope_lo'])}, "
                        f"{format_number(r['slope_hi'])}], benefit " + "/".join(format_number(b) for b in r["benefit"])
                        for r in rows[:3])
            + ("; m = 4 rungs included: their errors sit near the mode-truncation floor" if m4 else ""))
    return _claim(3, rule, verdict, text, stability=stability, pairs=used, shifts=rows)


# --- F4 ------------------------------------------------------------------------------------------


def claim_ood(pairs: Sequence[Pair]) -> Claim:
    rule = ("Per (system, upstream, model) ladder of >= 2 single-system shifts of different magnitude (mean "
            "log-distance of the downstream range from the upstream range): (a) the slope of log benefit against "
            "magnitude has its 95% interval below 0, (b) the benefit's lower end is > 1 at every shift, (c) the "
            "zero-shot error rises with the magnitude (Spearman rho > 0; zero-shot runs have no seed interval). "
            "PASS if all hold for a majority of ladders, else FAIL.")
    ladders: dict[tuple[str, str, str], list[Pair]] = {}
    for p in _with_intervals(pairs):
        if math.isfinite(p.magnitude) and p.upstream != "mixed":
            ladders.setdefault((system_of(p.key.task), p.upstream, p.key.model), []).append(p)
    rows, used, rep_flags = [], [], []
    for (system, upstream, model), group in sorted(ladders.items()):
        if len({p.magnitude for p in group}) < 2:
            continue
        group = sorted(group, key=lambda p: p.magnitude)
        mags = np.array([p.magnitude for p in group])
        benefits = [_benefit(p, np.array(sorted(set(p.scratch.sizes) & set(p.transfer.sizes)))) for p in group]
        points = np.array([b[0] for b in benefits])
        B = min(b[1].size for b in benefits)
        rep = np.column_stack([b[1][:B] for b in benefits]) if B else np.empty((0, len(group)))
        slope = float(_slope(mags, points))
        s_reps = _slope(mags, rep) if B else np.empty(0)
        _, lo, hi = _interval(slope, s_reps)
        ben_lo = np.quantile(rep, 0.025, axis=0) if B else np.full(len(group), np.nan)
        zs = np.array([p.zero_shot for p in group])
        zs_ok = None
        if np.isfinite(zs).sum() >= 2:
            ok = np.isfinite(zs)
            zs_ok = bool(spearmanr(mags[ok], zs[ok]).statistic > 0) if ok.sum() >= 3 else bool(zs[ok][-1] > zs[ok][0])
        shrinks, remains = bool(hi < 0), bool(np.all(ben_lo > 0))
        # (c) must be decided by zero-shot runs; without them the ladder cannot pass
        rows.append({"ladder": f"{system} from {upstream} ({model})", "shifts": [p.key.shift for p in group],
                     "magnitude": mags.tolist(), "benefit": np.exp(points).tolist(), "benefit_lo": np.exp(ben_lo).tolist(),
                     "slope": slope, "slope_lo": lo, "slope_hi": hi, "shrinks": shrinks, "remains": remains,
                     "zero_shot": zs.tolist(), "zero_shot_grows": zs_ok,
                     "ok": shrinks and remains and zs_ok is True})
        used.extend(group)
        if B:
            rep_flags.append((s_reps < 0) & np.all(rep > 0, axis=1) & (zs_ok is True))
    if not rows:
        return _claim(4, rule, NOT_ENOUGH, "no system has >= 2 shifts of different magnitude from one upstream with "
                                           "both arms fitted")
    n_ok = sum(r["ok"] for r in rows)
    if all(r["zero_shot_grows"] is None for r in rows):
        return _claim(4, rule, NOT_ENOUGH, "no ladder has zero-shot runs at >= 2 of its shifts, so (c) is undecided",
                      pairs=used, ladders=rows)
    verdict, stability = _majority_verdict([r["ok"] for r in rows], rep_flags)
    text = (f"{n_ok}/{len(rows)} ladders satisfy all three; "
            + "; ".join(f"{r['ladder']}: benefit " + "→".join(format_number(b) for b in r["benefit"])
                        + f", slope {format_number(r['slope'])} [{format_number(r['slope_lo'])}, "
                          f"{format_number(r['slope_hi'])}], zero-shot "
                        + "→".join(format_number(z) for z in r["zero_shot"]) for r in rows[:3]))
    return _claim(4, rule, verdict, text, stability=stability, pairs=used, ladders=rows)


# --- F5 ------------------------------------------------------------------------------------------


def claim_mixed(pairs: Sequence[Pair], in_distribution: Callable[[str], bool],
                mixed_tasks: Sequence[str] | None = None) -> Claim:
    rule = ("On every task with a mixture-pre-trained model (per system, in and out of distribution): (i) fine-tuned "
            "is useful if the benefit over scratch (geometric mean over the common N of fitted scratch/transfer) has "
            "its 95% lower end > 1; (ii) zero-shot is useful if the mixed model's zero-shot error is below the lower "
            "end of scratch's 95% interval at the smallest N. Mixed vs single-system pre-training on the same task "
            "(transfer_single / transfer_mixed) is reported, not required. PASS if (i) and (ii) hold on every task "
            "of all three systems, FAIL if either fails on one, NOT ENOUGH DATA if a task with mixed runs cannot be "
            "decided (no fit with seed intervals, no zero-shot run), if no task is out of distribution, or if fewer "
            "than three systems have mixed fits.")
    mixed = [p for p in _with_intervals(pairs) if p.upstream == "mixed"]
    expected = set(mixed_tasks or ()) | {p.key.task for p in pairs if p.upstream == "mixed"}
    if not mixed:
        return _claim(5, rule, NOT_ENOUGH, "no runs pre-trained on the mixture with fitted curves")
    undecided = sorted(expected - {p.key.task for p in mixed})
    singles = {(p.key.task, p.key.model): p for p in pairs if p.upstream not in ("", "mixed")}
    rows, rep_flags = [], []
    for p in sorted(mixed, key=lambda q: q.key):
        n = _common_n(p.scratch, p.transfer)
        ben, ben_reps = _benefit(p, n)
        _, b_lo, b_hi = _interval(ben, ben_reps)
        n_min = np.array([p.scratch.n_range[0]])
        s_lo, s_hi = p.scratch.band(n_min)
        zs = p.zero_shot
        ft_ok = bool(b_lo > 0)
        zs_ok = bool(np.isfinite(zs) and zs < s_lo[0])
        row = {"task": p.key.task, "system": system_of(p.key.task), "model": p.key.model,
               "in_distribution": in_distribution(p.key.task), "benefit": math.exp(ben),
               "benefit_lo": math.exp(b_lo) if math.isfinite(b_lo) else math.nan,
               "benefit_hi": math.exp(b_hi) if math.isfinite(b_hi) else math.nan, "fine_tuned_useful": ft_ok,
               "zero_shot": zs, "scratch_smallest_n": float(p.scratch.predict(n_min)[0]),
               "scratch_smallest_n_lo": float(s_lo[0]), "zero_shot_useful": zs_ok}
        single = singles.get((p.key.task, p.key.model))
        if single is not None:
            vs, vs_reps = _log_ratio(single.transfer, p.transfer, _common_n(single.transfer, p.transfer))
            _, v_lo, v_hi = _interval(float(vs.mean()), vs_reps.mean(axis=1) if vs_reps.size else np.empty(0))
            row.update(single_upstream=single.upstream, mixed_vs_single=math.exp(float(vs.mean())),
                       mixed_vs_single_lo=math.exp(v_lo) if math.isfinite(v_lo) else math.nan,
                       mixed_vs_single_hi=math.exp(v_hi) if math.isfinite(v_hi) else math.nan)
        rows.append(row)
        if ben_reps.size:
            B = ben_reps.size
            zs_rep = zs < p.scratch.curves(n_min)[:B, 0] if np.isfinite(zs) else np.zeros(B, bool)
            rep_flags.append((ben_reps > 0) & zs_rep)
    systems = {r["system"] for r in rows}
    text = "; ".join(f"{r['task']} ({'ID' if r['in_distribution'] else 'OOD'}, {r['model']}): fine-tuned benefit "
                     f"{format_number(r['benefit'])} [{format_number(r['benefit_lo'])}, {format_number(r['benefit_hi'])}], "
                     f"zero-shot {format_number(r['zero_shot'])} vs scratch {format_number(r['scratch_smallest_n'])} "
                     f"(lower end {format_number(r['scratch_smallest_n_lo'])})"
                     + (f", single/mixed {format_number(r['mixed_vs_single'])}" if "mixed_vs_single" in r else "")
                     for r in rows)
    failed = [r for r in rows if not r["fine_tuned_useful"] or (np.isfinite(r["zero_shot"]) and not r["zero_shot_useful"])]
    undecided += [r["task"] for r in rows if not np.isfinite(r["zero_shot"])]
    if failed:
        verdict = FAIL
    elif len(systems) < 3:
        return _claim(5, rule, NOT_ENOUGH, f"mixed fits on {len(systems)}/3 systems: {text}", pairs=mixed, tasks=rows)
    elif undecided or not any(not r["in_distribution"] for r in rows):
        why = (f"undecided on {', '.join(undecided)}" if undecided else "no out-of-distribution task")
        return _claim(5, rule, NOT_ENOUGH, f"{why}: {text}", pairs=mixed, tasks=rows)
    else:
        verdict = PASS
    stability = math.nan
    if len(rep_flags) == len(rows):
        B = min(x.size for x in rep_flags)
        stability = _stability(verdict, np.column_stack([x[:B] for x in rep_flags]).all(axis=1))
    return _claim(5, rule, verdict, text, stability=stability, pairs=mixed, tasks=rows)


# --- F6 ------------------------------------------------------------------------------------------


def claim_lr(pairs: Sequence[Pair], chosen_differs: tuple[int, int]) -> Claim:
    rule = (f"Per (shift, model) pair with transfer runs at the pre-training LR: gain = benefit over scratch with the "
            f"fine-tuning LR tuned on validation / benefit with it fixed at the pre-training LR (= geometric mean over "
            f"the common N of fitted transfer_fixed / transfer_tuned; scratch is tuned in both). A pair passes if the "
            f"gain's 95% lower end > 1 and its point value >= {LR_EFFECT_THRESHOLD:g}. PASS if a majority of pairs "
            f"pass, else FAIL; NOT ENOUGH DATA if the LR grid lacks the pre-training LR.")
    differs, cells = chosen_differs
    usable = [p for p in _with_intervals(pairs) if p.fixed_lr is not None and len(p.fixed_lr.bootstrap)]
    if not usable:
        why = ("no transfer curve at the pre-training LR has seed intervals"
               if any(p.fixed_lr is not None for p in pairs) else
               "no transfer curve at the pre-training LR (add it to the grid's lrs)")
        return _claim(6, rule, NOT_ENOUGH, f"{why}; "
                      f"the chosen fine-tuning LR differs from the pre-training LR in {differs}/{cells} cells",
                      chosen_lr_differs=differs, n_cells=cells)
    rows, rep_flags = [], []
    for p in usable:
        n = _common_n(p.transfer, p.fixed_lr)
        point, reps = _log_ratio(p.fixed_lr, p.transfer, n)
        g, lo, hi = _interval(float(point.mean()), reps.mean(axis=1) if reps.size else np.empty(0))
        ok = bool(lo > 0 and g >= math.log(LR_EFFECT_THRESHOLD))
        rows.append({"pair": f"{p.key.shift} | {p.key.model}", "gain": math.exp(g),
                     "gain_lo": math.exp(lo) if math.isfinite(lo) else math.nan,
                     "gain_hi": math.exp(hi) if math.isfinite(hi) else math.nan, "passes": ok})
        if reps.size:
            rep_flags.append(reps.mean(axis=1) >= math.log(LR_EFFECT_THRESHOLD))
    n_pass = sum(r["passes"] for r in rows)
    verdict, stability = _majority_verdict([r["passes"] for r in rows], rep_flags)
    text = (f"{n_pass}/{len(rows)} pairs gain from tuning; "
            + "; ".join(f"{r['pair']}: gain {format_number(r['gain'])} [{format_number(r['gain_lo'])}, "
                        f"{format_number(r['gain_hi'])}]" for r in rows[:3])
            + f"; the chosen fine-tuning LR differs from the pre-training LR in {differs}/{cells} cells")
    return _claim(6, rule, verdict, text, stability=stability, pairs=usable, pairs_detail=rows,
                  chosen_lr_differs=differs, n_cells=cells)


def evaluate_claims(pairs: Sequence[Pair], *, in_distribution: Callable[[str], bool],
                    chosen_lr_differs: tuple[int, int] = (0, 0), mixed_tasks: Sequence[str] = ()) -> list[Claim]:
    """Decide all six findings.

    Parameters
    ----------
    pairs
        Every transfer curve with its scratch baseline (:func:`analysis.analyze.build_pairs`).
    in_distribution
        Whether a task label lies inside the mixture's pre-training ranges (for F5's ID/OOD label).
    chosen_lr_differs
        (cells whose selected fine-tuning LR differs from the pre-training LR, transfer cells).
    mixed_tasks
        Every task with runs from a mixture-pre-trained model: F5 must decide each of them.
    """
    return [claim_data_efficiency(pairs), claim_at_or_below(pairs), claim_model_size(pairs), claim_ood(pairs),
            claim_mixed(pairs, in_distribution, mixed_tasks), claim_lr(pairs, chosen_lr_differs)]


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim: id, verdict, stability, regime, summary."""
    return pd.DataFrame([{"id": c.id, "verdict": c.verdict, "stability": c.stability, "regime": c.regime,
                          "summary": c.summary} for c in claims])

