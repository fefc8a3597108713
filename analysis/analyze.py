"""The analysis pipeline: collected runs -> filters -> LR selection -> fits -> metrics -> claims.

:func:`analyze` is pure over the collected DataFrame (no MLflow here): it returns one frozen
:class:`AnalysisResult` that ``repro fit-laws`` prints and writes, and that
:func:`analysis.report.render_report` renders.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import re
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from repro import schema
from repro.config import MIXED_COMPONENTS
from analysis import claims as claims_mod
from analysis.claims import Pair, PairKey
from analysis.collect import system_of
from analysis.filters import (PROTOCOL_COLUMNS, PROTOCOL_DEFAULTS, FilterReport, apply_filters, exclusions,
                              flag_unconverged)
from analysis.fits import N_BOOT, N_BOOT_JOINT, FitSkipped, JointFit, PowerLawFit, fit_curve, fit_joint, single_thread_blas
from analysis.selection import CELL, C_MEDIAN_LR_TEST, C_N_LRS, C_PRETRAIN_LR, select_fixed_lr, select_lr
from analysis.transfer import TransferMetrics, shift_magnitude, transfer_metrics

#: Below this many fits the process pool costs more than it saves.
_PARALLEL_MIN_JOBS = 12


class CurveKey(NamedTuple):
    """One fitted curve: scratch curves have ``shift == ""`` (shared by all shifts to the task)."""

    task: str
    shift: str
    model: str
    arm: str

    @property
    def label(self) -> str:
        where = self.shift or self.task
        return f"{where} | {self.model} | {self.arm}"


class JointKey(NamedTuple):
    task: str
    shift: str
    arm: str


#: The arm label of a transfer curve fine-tuned at its pre-training LR (Finding 6's untuned choice).
FIXED_LR_ARM = "transfer@pretrain_lr"


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where the numbers come from (shown in the report)."""

    tracking_uri: str
    grids: tuple[str, ...]
    n_runs: int
    n_used: int
    status_counts: dict[str, int]
    arm_counts: dict[str, int]
    commits: dict[str, int]  # "sha (dirty)" -> runs
    created: str
    n_boot: int
    selection: str = ""  # how the runs were chosen (grid plan's run_keys, grid tag, or all)


@dataclass(frozen=True, kw_only=True, eq=False)
class AnalysisResult:
    """Everything ``fit-laws`` prints and ``report`` renders.

    Tables (pandas) are documented where they are built: :func:`pointwise_table`,
    :func:`benefit_table`, :func:`zero_shot_table`, :func:`mixed_table`, :func:`fit_table`.
    """

    runs: pd.DataFrame
    filter_reports: list[FilterReport]
    exclusions: pd.DataFrame
    selected: pd.DataFrame
    curves: dict[CurveKey, PowerLawFit]
    joint: dict[JointKey, JointFit]
    skipped: list[str]
    transfer: dict[PairKey, TransferMetrics]
    pointwise: pd.DataFrame
    benefit: pd.DataFrame
    zero_shot: pd.DataFrame
    mixed: pd.DataFrame
    claims: list[claims_mod.Claim]
    provenance: Provenance
    model_params: dict[str, float] = field(default_factory=dict)
    #: transfer curves fine-tuned at the pre-training LR (arm :data:`FIXED_LR_ARM`), for Finding 6
    fixed_lr_curves: dict[CurveKey, PowerLawFit] = field(default_factory=dict)
    #: per arm: selected trained runs, how many passed the convergence diagnostic, compute
    convergence: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: budget audit (:func:`budget_audit_pairs` / :func:`budget_audit_table`): runs trained again with a
    #: multiple of the budget, beside the runs they audit; empty when the grid has no audit block
    audit_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)
    compute: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the test errors the selected runs reached, per arm (min, median, max), beside the paper's ~1e-2
    regime: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: :func:`transfer_tables` of this result, computed once in :func:`analyze`: multiplier per
    #: eps, D_T per N, and the per-pair summary (empty frames when there is no transfer pair).
    multiplier_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    d_t_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    transfer_summary: pd.DataFrame = field(default_factory=pd.DataFrame)


# --- tables ------------------------------------------------------------------------------------


def _geo_mean(x: pd.Series) -> float:
    return float(np.exp(np.mean(np.log(x)))) if len(x) else math.nan


def zero_shot_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot error per (task, shift, model): geometric mean over runs, shift magnitude."""
    zs = selected[selected[schema.P_ARM] == "zero_shot"]
    cols = [schema.C_TASK, schema.C_SHIFT, schema.C_UPSTREAM, schema.P_MODEL]
    if zs.empty:
        return pd.DataFrame(columns=[*cols, "zero_shot", "n_runs", "magnitude"])
    out = zs.groupby(cols, sort=True).agg(zero_shot=(schema.C_TEST_REL_L2, _geo_mean),
                                          n_runs=(schema.C_RUN_ID, "size")).reset_index()
    out["magnitude"] = [_magnitude(r) for r in _range_rows(zs, out)]
    return out


def _range_rows(runs: pd.DataFrame, table: pd.DataFrame) -> list[tuple[Any, Any]]:
    """(upstream range, downstream range) for each row of ``table`` (by shift)."""
    first = runs.drop_duplicates(schema.C_SHIFT).set_index(schema.C_SHIFT)
    out = []
    for shift in table[schema.C_SHIFT]:
        r = first.loc[shift]
        up = "mixed" if r[schema.P_UPSTREAM_PDE] == "mixed" else (r[schema.P_UPSTREAM_PDE], r[schema.P_UPSTREAM_LOW],
                                                                   r[schema.P_UPSTREAM_HIGH])
        out.append((up, (r[schema.P_DATA_PDE], r[schema.P_DATA_LOW], r[schema.P_DATA_HIGH])))
    return out


def _magnitude(pair: tuple[Any, Any]) -> float:
    up, down = pair
    if up == "mixed" or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (*up, *down)):
        return math.nan
    return shift_magnitude((str(up[0]), float(up[1]), float(up[2])), (str(down[0]), float(down[1]), float(down[2])))


def pointwise_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Per (task, shift, model, N): geometric-mean test error of scratch and transfer over seeds.

    ``ratio`` = scratch / transfer (> 1: transfer is better).  Only N present in both arms.
    """
    trained = selected[selected[schema.P_ARM].isin(["scratch", "transfer"])]
    cols = [schema.C_TASK, schema.C_SHIFT, schema.C_UPSTREAM, schema.P_MODEL, schema.P_N_TRAIN]
    g = trained.groupby([schema.C_TASK, schema.C_SHIFT, schema.C_UPSTREAM, schema.P_MODEL, schema.P_N_TRAIN,
                         schema.P_ARM], sort=True)[schema.C_TEST_REL_L2].agg([_geo_mean, "size"]).reset_index()
    scratch = g[g[schema.P_ARM] == "scratch"].rename(columns={"_geo_mean": "scratch", "size": "n_scratch"})
    transfer = g[g[schema.P_ARM] == "transfer"].rename(columns={"_geo_mean": "transfer", "size": "n_transfer"})
    if scratch.empty or transfer.empty:
        return pd.DataFrame(columns=[*cols, "scratch", "transfer", "ratio", "n_scratch", "n_transfer"])
    out = transfer.drop(columns=schema.P_ARM).merge(
        scratch.drop(columns=[schema.P_ARM, schema.C_SHIFT, schema.C_UPSTREAM]),
        on=[schema.C_TASK, schema.P_MODEL, schema.P_N_TRAIN], how="inner")
    out["ratio"] = out["scratch"] / out["transfer"]
    return out[[*cols, "scratch", "transfer", "ratio", "n_scratch", "n_transfer"]].reset_index(drop=True)


def benefit_table(pointwise: pd.DataFrame, zero_shot: pd.DataFrame, selected: pd.DataFrame,
                  model_params: dict[str, float]) -> pd.DataFrame:
    """Per (task, shift, model): the transfer benefit = geometric mean over N of scratch/transfer.

    Model-free (observed errors), so it exists even where a fit was skipped; with the shift
    magnitude, the model's parameter count and the zero-shot error beside it.
    """
    keys = [schema.C_TASK, schema.C_SHIFT, schema.C_UPSTREAM, schema.P_MODEL]
    if pointwise.empty:
        return pd.DataFrame(columns=[*keys, "benefit", "n_common", "n_params", "magnitude", "zero_shot", "pde"])
    out = pointwise.groupby(keys, sort=True).agg(benefit=("ratio", _geo_mean), n_common=("ratio", "size")).reset_index()
    out["n_params"] = out[schema.P_MODEL].map(model_params).astype(float)
    transfer_runs = selected[selected[schema.P_ARM] == "transfer"]
    out["magnitude"] = [_magnitude(r) for r in _range_rows(transfer_runs, out)]
    zs = zero_shot.set_index([schema.C_SHIFT, schema.P_MODEL])["zero_shot"] if len(zero_shot) else pd.Series(dtype=float)
    out["zero_shot"] = [zs.get((s, m), math.nan) for s, m in zip(out[schema.C_SHIFT], out[schema.P_MODEL])]
    out["pde"] = out[schema.C_TASK].map(system_of)
    return out


def mixed_table(selected: pd.DataFrame) -> pd.DataFrame:
    """E4: per (task, model, N) on tasks that have a mixture-pretrained model.

    Columns: scratch, transfer_mixed, transfer_single (best single-system pre-training),
    zero_shot_mixed, zero_shot_single (geometric means over seeds).
    """
    cols = [schema.C_TASK, schema.P_MODEL, schema.P_N_TRAIN, "scratch", "transfer_mixed", "transfer_single",
            "zero_shot_mixed", "zero_shot_single"]
    is_mixed = selected[schema.C_UPSTREAM] == "mixed"
    tasks = sorted(selected.loc[is_mixed, schema.C_TASK].unique())
    if not tasks:
        return pd.DataFrame(columns=cols)
    sel = selected[selected[schema.C_TASK].isin(tasks)]
    kind = np.select([sel[schema.P_ARM] == "scratch", is_mixed[sel.index]], ["scratch", "mixed"], "single")
    sel = sel.assign(kind=kind)
    g = sel.groupby([schema.C_TASK, schema.P_MODEL, schema.P_ARM, "kind", schema.P_N_TRAIN])[schema.C_TEST_REL_L2]
    means = g.agg(_geo_mean).reset_index()
    trained = means[means[schema.P_ARM] != "zero_shot"]
    wide = trained.pivot_table(index=[schema.C_TASK, schema.P_MODEL, schema.P_N_TRAIN], columns="kind",
                               values=schema.C_TEST_REL_L2, aggfunc="min").reset_index()
    wide = wide.rename(columns={"mixed": "transfer_mixed", "single": "transfer_single"})
    zero = means[means[schema.P_ARM] == "zero_shot"].pivot_table(
        index=[schema.C_TASK, schema.P_MODEL], columns="kind", values=schema.C_TEST_REL_L2, aggfunc="min")
    zero = zero.rename(columns={"mixed": "zero_shot_mixed", "single": "zero_shot_single"}).reset_index()
    out = wide.merge(zero, on=[schema.C_TASK, schema.P_MODEL], how="left")
    for c in cols:
        if c not in out:
            out[c] = math.nan
    return out[cols].sort_values([schema.C_TASK, schema.P_MODEL, schema.P_N_TRAIN]).reset_index(drop=True)


def fit_table(result: AnalysisResult) -> pd.DataFrame:
    """One row per fitted curve: parameters with intervals, AIC vs pure power law, held-out check."""
    rows = []
    for key, fit in result.curves.items():
        row: dict[str, Any] = {"task": key.task, "shift": key.shift, "model": key.model, "arm": key.arm,
                               "law": fit.law, "n_points": fit.n_points, "n_sizes": fit.n_sizes,
                               "n_min": fit.n_range[0], "n_max": fit.n_range[1]}
        for name, value in fit.params.items():
            row[name] = value
            row[f"{name}_lo"], row[f"{name}_hi"] = fit.intervals[name]
        effects = fit.seed_effects
        row.update(aicc_saturating=fit.aicc.get("saturating", math.nan), aicc_pure=fit.aicc.get("pure", math.nan),
                   delta_aic=fit.delta_aic, identified=fit.identified, unidentified=" ".join(fit.unidentified),
                   seed_sd=effects.sigma_seed if effects else math.nan,
                   point_sd=effects.sigma_point if effects else math.nan,
                   n_seeds=effects.n_seeds if effects else 0, interval_note=fit.interval_note,
                   rms_log_residual=float(np.sqrt(np.mean(fit.residuals ** 2))),
                   heldout_n=fit.heldout.n if fit.heldout else math.nan,
                   heldout_rel_error=fit.heldout.rel_error if fit.heldout else math.nan,
                   converged=fit.converged, method=fit.method)
        rows.append(row)
    return pd.DataFrame(rows)


def joint_table(result: AnalysisResult) -> pd.DataFrame:
    """One row per joint N x P fit."""
    rows = []
    for key, fit in result.joint.items():
        row: dict[str, Any] = {"task": key.task, "shift": key.shift, "arm": key.arm, "n_points": fit.n_points,
                               "n_models": fit.n_models}
        for name, value in fit.params.items():
            row[name] = value
            row[f"{name}_lo"], row[f"{name}_hi"] = fit.intervals[name]
        row.update(aic=fit.aic, converged=fit.converged, method=fit.method)
        rows.append(row)
    return pd.DataFrame(rows)


def transfer_tables(result: AnalysisResult) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(multiplier per eps, D_T per N, summary per pair: the multiplier at the level Finding 1
    decides on, D_T at the smallest N, catch-up)."""
    if not result.transfer:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    eps = pd.concat([m.eps_frame() for m in result.transfer.values()], ignore_index=True)
    dts = pd.concat([m.n_frame() for m in result.transfer.values()], ignore_index=True)
    rows = []
    for key, m in result.transfer.items():
        i = claims_mod._deciding_row(m)
        rows.append({"task": key.task, "shift": key.shift, "model": key.model, "eps": m.eps[i], "level": m.level[i],
                     "n_scratch": m.n_scratch[i], "n_transfer": m.n_transfer[i], **m.multiplier.columns("multiplier", i),
                     "extrapolated": bool(m.transfer_extrapolated[i]), "zero_shot_reaches": bool(m.zero_shot_reaches[i]),
                     **m.d_t.columns("d_t_nmin", 0), "n_min": m.n_range[0], "n_max": m.n_range[1],
                     "horizon": m.horizon[1], **m.catch_up.columns("catch_up")})
    return eps, dts, pd.DataFrame(rows)


def convergence_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Per arm: selected trained runs, how many carry the convergence diagnostic, how many pass it."""
    trained = selected[selected[schema.P_ARM].isin(["scratch", "transfer"])]
    rows = []
    for arm, g in trained.groupby(schema.P_ARM, sort=True):
        flag = g[schema.M_CONVERGED] if schema.M_CONVERGED in g else pd.Series(np.nan, index=g.index)
        known = flag.notna()
        rows.append({"arm": arm, "selected_runs": len(g), "with_diagnostic": int(known.sum()),
                     "converged": int((flag[known] >= 0.5).sum()),
                     "share_converged": float((flag[known] >= 0.5).mean()) if known.any() else math.nan,
                     "median_late_improvement": float(g[schema.M_LATE_IMPROVEMENT].median())
                     if schema.M_LATE_IMPROVEMENT in g else math.nan})
    return pd.DataFrame(rows)


#: A budget audit passes when the longer budget lowered the test error by at most this fraction.  The
#: seeds of one curve point spread by 5-20 % in the committed grids, so a budget effect below 5 % is
#: smaller than the noise the intervals already carry; a larger one means the budget had not converged.
AUDIT_TOLERANCE = 0.05
#: What an audit run and the run it audits share: everything but the schedule length (the cell, LR and
#: seed, the checkpoint, and every protocol column of analysis.filters but epochs).
_AUDIT_PAIR = (schema.P_ARM, schema.C_TASK, schema.P_MODEL, schema.P_N_TRAIN, schema.P_LR, schema.P_SEED,
               schema.P_DATA_RESOLUTION, *(c for c in PROTOCOL_COLUMNS if c != schema.P_EPOCHS))


def budget_audit_pairs(runs: pd.DataFrame, selected: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished audit run (role ``audit``) beside the finished grid run it audits.

    Columns: the pairing columns, ``epochs`` and ``audit_epochs``, ``test`` and ``audit_test``,
    ``gain`` = (test - audit_test) / test (how much the longer budget still lowered the error),
    ``within`` (gain <= :data:`AUDIT_TOLERANCE`), and ``at_selected_lr``: whether the audited LR
    is the one the analysis selected for that cell (:func:`analysis.selection.select_lr`, given
    as ``selected``).  Only those audits measure the budget of a curve point; an audit at another
    LR of the sweep bounds it at best (a run at another LR converges at its own pace).
    """
    if schema.C_ROLE not in runs:
        return pd.DataFrame()
    done = runs[runs[schema.C_STATUS] == schema.FINISHED]
    keys = [c for c in _AUDIT_PAIR if c in done]
    role = done[schema.C_ROLE].fillna(schema.ROLE_DOWNSTREAM)
    audit, base = done[role == schema.ROLE_AUDIT], done[role == schema.ROLE_DOWNSTREAM]
    if audit.empty:
        return pd.DataFrame()
    # Params older runs did not record take their implicit values; scratch has no init_from: fill
    # the remaining text columns so that NaN pairs with NaN.
    defaults = {c: v for c, v in PROTOCOL_DEFAULTS.items() if c in keys}
    norm = {**{c: "" for c in keys if not pd.api.types.is_numeric_dtype(done[c])}, **defaults}
    cols = [*keys, schema.P_EPOCHS, schema.C_TEST_REL_L2, schema.C_RUN_ID, schema.C_RUN_KEY]
    # the audited run's shift (its cell's, for the selected-LR lookup) rides along from the base side
    left, right = audit[cols].fillna(norm), base[[*cols, schema.C_SHIFT]].fillna(norm)
    pairs = left.merge(right, on=keys, suffixes=("_audit", ""))
    pairs = pairs[pairs[schema.P_EPOCHS] < pairs[f"{schema.P_EPOCHS}_audit"]]
    # One base per audit run: the longest shorter schedule (the grid's own budget when analysed with --grid).
    pairs = pairs.sort_values(schema.P_EPOCHS).groupby(f"{schema.C_RUN_ID}_audit", sort=False).tail(1)
    out = pairs.rename(columns={f"{schema.P_EPOCHS}_audit": "audit_epochs", schema.C_TEST_REL_L2: "test",
                                f"{schema.C_TEST_REL_L2}_audit": "audit_test", schema.P_EPOCHS: "epochs"})
    out["gain"] = (out["test"] - out["audit_test"]) / out["test"]
    out["within"] = out["gain"] <= AUDIT_TOLERANCE
    out["at_selected_lr"] = _at_selected_lr(out, selected)
    return out.sort_values([schema.P_ARM, schema.P_N_TRAIN, schema.P_LR, schema.P_SEED]).reset_index(drop=True)


def _at_selected_lr(pairs: pd.DataFrame, selected: pd.DataFrame | None) -> pd.Series:
    """Per pair: is its LR the one selected for its cell (:data:`analysis.selection.CELL`)?"""
    if selected is None or selected.empty or pairs.empty:
        return pd.Series(False, index=pairs.index)
    on = [*CELL, schema.P_LR]
    chosen = selected[on].drop_duplicates().assign(_chosen=True)
    hit = pairs[on].merge(chosen, on=on, how="left")["_chosen"]  # a left merge keeps the pairs' order
    return pd.Series(hit.eq(True).to_numpy(), index=pairs.index)


#: The audit table's LR classes: audits of the LR the analysis selected (they measure a curve point's
#: budget), audits of another LR of the sweep (they bound it at best), audit runs with no finished pair.
AUDIT_AT_SELECTED, AUDIT_AT_OTHER, AUDIT_UNPAIRED = "selected", "other", "unpaired"


def budget_audit_table(pairs: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm, LR class (:data:`AUDIT_AT_SELECTED` first) and budget factor: audit runs, how many are paired, the
    longer budget's median and largest gain, how many are within tolerance.  An audit run that
    failed, diverged or has no run to audit is counted in the arm's ``unpaired`` row, so it shows
    instead of vanishing."""
    if pairs.empty and (runs is None or schema.C_ROLE not in runs or not runs[schema.C_ROLE].eq(schema.ROLE_AUDIT).any()):
        return pd.DataFrame()
    # audit run_keys per arm: a run FAILED and re-run FINISHED is one audit, paired or not
    recorded = (runs[runs[schema.C_ROLE].eq(schema.ROLE_AUDIT)].groupby(schema.P_ARM)[schema.C_RUN_KEY]
                .agg(lambda k: set(k.dropna())) if runs is not None and schema.C_ROLE in runs else pd.Series(dtype=object))
    rows = []
    for arm in sorted(set(recorded.index) | (set(pairs[schema.P_ARM]) if len(pairs) else set())):
        g = pairs[pairs[schema.P_ARM] == arm] if len(pairs) else pairs
        factor = (g["audit_epochs"] / g["epochs"]).round(2) if len(g) else pd.Series(dtype=float)
        classes = ((AUDIT_AT_SELECTED, True), (AUDIT_AT_OTHER, False))
        for (lr_class, at_selected), f in itertools.product(classes, sorted(factor.unique())):
            c = g[(g["at_selected_lr"] == at_selected) & (factor == f)]
            if c.empty:
                continue
            rows.append({"arm": arm, "lr": lr_class, "audit_runs": len(c), "audited_runs": len(c),
                         "budget_factor": float(f),
                         "n_values": ", ".join(str(int(n)) for n in sorted(c[schema.P_N_TRAIN].unique())),
                         "median_gain": float(c["gain"].median()), "max_gain": float(c["gain"].max()),
                         "within_tolerance": int(c["within"].sum()), "tolerance": AUDIT_TOLERANCE})
        paired = set(g[f"{schema.C_RUN_KEY}_audit"]) if len(g) else set()
        unpaired = len(recorded.get(arm, set()) - paired)
        if unpaired > 0:
            rows.append({"arm": arm, "lr": AUDIT_UNPAIRED, "audit_runs": unpaired, "audited_runs": 0,
                         "budget_factor": math.nan, "n_values": "", "median_gain": math.nan, "max_gain": math.nan,
                         "within_tolerance": 0, "tolerance": AUDIT_TOLERANCE})
    return pd.DataFrame(rows)


def compute_table(runs: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the selected runs' training compute (sample-steps, analytic FLOPs), and for transfer
    the pre-training compute it inherits (each checkpoint counted once); all LRs of the sweep
    are counted too, since tuning is part of an arm's cost."""
    if schema.M_FLOPS not in runs:
        return pd.DataFrame()
    done = runs[runs[schema.C_STATUS] == schema.FINISHED]
    rows = []
    for arm in ("scratch", "transfer"):
        sel = selected[selected[schema.P_ARM] == arm]
        role = done[schema.C_ROLE].fillna(schema.ROLE_DOWNSTREAM)
        sweep = done[(done[schema.P_ARM] == arm) & (role == schema.ROLE_DOWNSTREAM)]
        if sel.empty:
            continue
        inherited = math.nan
        if arm == "transfer" and schema.M_PRETRAIN_FLOPS in sel:
            per_checkpoint = sel.drop_duplicates(schema.P_INIT_FROM)[schema.M_PRETRAIN_FLOPS]
            inherited = float(per_checkpoint.sum(min_count=1))
        rows.append({"arm": arm, "selected_sample_steps": float(sel[schema.M_SAMPLE_STEPS].sum(min_count=1)),
                     "selected_flops": float(sel[schema.M_FLOPS].sum(min_count=1)),
                     "sweep_flops": float(sweep[schema.M_FLOPS].sum(min_count=1)),
                     "pretrain_flops": inherited,
                     "median_flops_per_run": float(sel[schema.M_FLOPS].median())})
    return pd.DataFrame(rows)


def regime_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the smallest, median and largest test error of the selected runs, and the paper's regime."""
    rows = []
    for arm, g in selected.groupby(schema.P_ARM, sort=True):
        e = g[schema.C_TEST_REL_L2].astype(float)
        rows.append({"arm": arm, "min_test_rel_l2": float(e.min()), "median_test_rel_l2": float(e.median()),
                     "max_test_rel_l2": float(e.max()), "paper_regime": claims_mod.PAPER_REGIME})
    return pd.DataFrame(rows)


def lr_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Transfer cells (one row per selected run): the chosen fine-tuning LR beside the pre-training LR."""
    t = selected[selected[schema.P_ARM] == "transfer"]
    out = t[[schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN, schema.P_SEED, schema.P_LR,
             C_PRETRAIN_LR, schema.C_TEST_REL_L2, C_MEDIAN_LR_TEST, C_N_LRS]].copy()
    out["differs_from_pretrain_lr"] = ~np.isclose(out[schema.P_LR].to_numpy(float), out[C_PRETRAIN_LR].to_numpy(float))
    return out.reset_index(drop=True)


def _chosen_lr_differs(selected: pd.DataFrame) -> tuple[int, int]:
    """(transfer cells whose chosen LR differs from the pre-training LR, transfer cells with a known one)."""
    t = lr_table(selected).dropna(subset=[C_PRETRAIN_LR])
    cells = t.drop_duplicates([schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN])
    return int(cells["differs_from_pretrain_lr"].sum()), len(cells)


# --- fitting -----------------------------------------------------------------------------------


def _points(selected: pd.DataFrame, key: CurveKey) -> pd.DataFrame:
    sel = selected
    mask = ((sel[schema.C_TASK] == key.task) & (sel[schema.C_SHIFT] == key.shift) & (sel[schema.P_MODEL] == key.model)
            & (sel[schema.P_ARM] == key.arm))
    return sel[mask].sort_values([schema.P_N_TRAIN, schema.P_SEED])


def _curve_arrays(pts: pd.DataFrame) -> dict[str, np.ndarray]:
    """A curve's points with the seed curve (unit) and the pre-trained checkpoint (group) of each.

    A seed is one initialisation plus one nested-subset chain, so it is one unit across all N;
    on a transfer curve that pools several checkpoints, a unit is a (checkpoint, seed) pair.
    """
    checkpoint = pts[schema.P_INIT_FROM].fillna("").astype(str).to_numpy()
    seed = pts[schema.P_SEED].astype(int).astype(str).to_numpy()
    return {"n": pts[schema.P_N_TRAIN].to_numpy(float), "err": pts[schema.C_TEST_REL_L2].to_numpy(float),
            "unit": np.char.add(np.char.add(checkpoint, ":"), seed), "group": checkpoint}


def _curve_seed(seed: int, key: Any) -> int:
    """An independent bootstrap stream per curve (stable across runs of the analysis): the arms'
    seed effects are not assumed correlated, which errs towards wider intervals for their ratios."""
    return (seed * 1_000_003 + zlib.crc32(repr(tuple(key)).encode())) % (2 ** 32)


def _fit_job(job: tuple[str, Any, dict[str, np.ndarray], dict[str, Any]]) -> tuple[Any, Any]:
    """Run one fit; a cell with too few points returns its message instead of raising."""
    kind, key, arrays, kwargs = job
    try:
        if kind == "curve":
            return key, fit_curve(arrays["n"], arrays["err"], unit=arrays["unit"], group=arrays["group"], **kwargs)
        return key, fit_joint(arrays["n"], arrays["p"], arrays["err"], unit=arrays["unit"], **kwargs)
    except FitSkipped as err:
        return key, f"{_label(key)}: skipped, {err}"


def _label(key: Any) -> str:
    if isinstance(key, CurveKey):
        return key.label
    return f"{key.shift or key.task} | joint N x P | {key.arm}"


def _run_jobs(jobs: list[Any], workers: int) -> list[tuple[Any, Any]]:
    """Map :func:`_fit_job` over ``jobs``, in ``workers`` forked processes when it pays."""
    if workers > 1 and len(jobs) >= _PARALLEL_MIN_JOBS and "fork" in multiprocessing.get_all_start_methods():
        # fork: workers inherit the imported scipy/numpy, so start-up is milliseconds.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_fit_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return [_fit_job(j) for j in jobs]


def default_workers() -> int:
    """Processes for fitting: the CPUs this process may use, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(8, os.cpu_count() or 1))


def _curve_jobs(selected: pd.DataFrame, fixed: pd.DataFrame, n_boot: int, seed: int) -> list[Any]:
    trained = selected[selected[schema.P_ARM].isin(["scratch", "transfer"])]
    keys = sorted({CurveKey(*k) for k in trained[[schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_ARM]]
                   .itertuples(index=False, name=None)})
    jobs: list[Any] = []
    for key in keys:
        jobs.append(("curve", key, _curve_arrays(_points(selected, key)), {"n_boot": n_boot, "seed": _curve_seed(seed, key)}))
        if key.arm == "transfer":
            pts = _points(fixed, key)
            if len(pts):
                fkey = key._replace(arm=FIXED_LR_ARM)
                jobs.append(("curve", fkey, _curve_arrays(pts), {"n_boot": n_boot, "seed": _curve_seed(seed, fkey)}))
    return jobs


def _joint_jobs(selected: pd.DataFrame, model_params: dict[str, float], n_boot: int, seed: int) -> list[Any]:
    trained = selected[selected[schema.P_ARM].isin(["scratch", "transfer"])]
    jobs: list[Any] = []
    for jk in sorted({JointKey(*k) for k in trained[[schema.C_TASK, schema.C_SHIFT, schema.P_ARM]]
                      .itertuples(index=False, name=None)}):
        pts = trained[(trained[schema.C_TASK] == jk.task) & (trained[schema.C_SHIFT] == jk.shift)
                      & (trained[schema.P_ARM] == jk.arm)].sort_values([schema.P_MODEL, schema.P_N_TRAIN, schema.P_SEED])
        p = pts[schema.P_MODEL].map(model_params).to_numpy(float)
        if pts[schema.P_MODEL].nunique() < 3 or not np.all(np.isfinite(p)):
            continue  # the joint law needs >= 3 sizes; nothing to report otherwise
        arrays = _curve_arrays(pts)
        # one seed curve per (model size, seed): different sizes are different initialisations
        arrays["unit"] = np.char.add(np.char.add(pts[schema.P_MODEL].astype(str).to_numpy(), "/"), arrays["unit"])
        jobs.append(("joint", jk, {**arrays, "p": p}, {"n_boot": n_boot, "seed": _curve_seed(seed, jk)}))
    return jobs


def analyze(runs: pd.DataFrame, *, tracking_uri: str = "", n_boot: int = N_BOOT, n_boot_joint: int = N_BOOT_JOINT,
            seed: int = 0, workers: int | None = None, selection: str = "") -> AnalysisResult:
    """Filter, select LRs, fit every curve and joint law, compute transfer metrics and claims.

    Parameters
    ----------
    runs
        The frame of :func:`analysis.collect.collect_runs`.
    tracking_uri
        Recorded in the provenance only.
    n_boot, n_boot_joint
        Bootstrap replicates per curve / per joint N x P fit.
    seed
        Bootstrap seed (each curve draws its own stream from it, see :func:`_curve_seed`).
    workers
        Fitting processes (default: available CPUs, at most 8).
    selection
        How ``runs`` were chosen, in words; recorded in the provenance only.

    Returns
    -------
    AnalysisResult
    """
    kept, reports = apply_filters(runs)
    selected = select_lr(kept)
    audit_pairs = budget_audit_pairs(kept, selected)
    reports = [*reports, flag_unconverged(selected)]
    fixed = select_fixed_lr(kept)
    model_params = _model_params(selected)
    jobs = _curve_jobs(selected, fixed, n_boot, seed) + _joint_jobs(selected, model_params, n_boot_joint, seed)
    curves: dict[CurveKey, PowerLawFit] = {}
    fixed_curves: dict[CurveKey, PowerLawFit] = {}
    joint: dict[JointKey, JointFit] = {}
    skipped: list[str] = []
    with single_thread_blas():
        done = _run_jobs(jobs, default_workers() if workers is None else workers)
    for key, out in done:
        if isinstance(out, str):
            skipped.append(out)
        elif isinstance(key, CurveKey):
            (fixed_curves if key.arm == FIXED_LR_ARM else curves)[key] = out
        else:
            joint[key] = out
    zero_shot = zero_shot_table(selected)
    transfer = _transfer(curves, zero_shot, skipped)
    pointwise = pointwise_table(selected)
    benefit = benefit_table(pointwise, zero_shot, selected, model_params)
    mixed = mixed_table(selected)
    partial = AnalysisResult(runs=runs, filter_reports=reports, exclusions=exclusions(reports), selected=selected,
                             curves=curves, joint=joint, skipped=skipped, transfer=transfer, pointwise=pointwise,
                             benefit=benefit, zero_shot=zero_shot, mixed=mixed, claims=[],
                             provenance=_provenance(runs, kept, tracking_uri, n_boot, selection), model_params=model_params,
                             fixed_lr_curves=fixed_curves, convergence=convergence_table(selected),
                             audit_pairs=audit_pairs, audit=budget_audit_table(audit_pairs, runs),
                             compute=compute_table(runs, selected), regime=regime_table(selected))
    eps, dts, summary = transfer_tables(partial)
    pairs = build_pairs(partial)
    mixed_tasks = sorted(selected.loc[selected[schema.C_UPSTREAM] == "mixed", schema.C_TASK].unique())
    found = claims_mod.evaluate_claims(pairs, in_distribution=in_mixture_distribution,
                                       chosen_lr_differs=_chosen_lr_differs(selected), mixed_tasks=mixed_tasks)
    return dataclasses.replace(partial, claims=found, multiplier_table=eps, d_t_table=dts, transfer_summary=summary)


_TASK_LABEL = re.compile(r"^\s*(\w+)\s*\(\s*([-+.\deE]+)\s*,\s*([-+.\deE]+)\s*\)")


def in_mixture_distribution(task: str) -> bool:
    """Whether a task's physics range lies inside one of the mixture's pre-training ranges (E4's ID tasks).

    Parses the label here (``pde(low,high)[@res]``): the grid package that owns the parser pulls
    in torch, which the analysis never imports.
    """
    match = _TASK_LABEL.match(task)
    if not match:
        return False
    pde, low, high = match.group(1), float(match.group(2)), float(match.group(3))
    return any(pde == p and lo <= low and high <= hi for p, lo, hi in MIXED_COMPONENTS)


def _unconverged(selected: pd.DataFrame, *keys: CurveKey) -> int:
    if schema.M_CONVERGED not in selected:
        return 0
    total = 0
    for key in keys:
        pts = _points(selected, key)
        total += int((pts[schema.M_CONVERGED] < 0.5).sum())
    return total


def build_pairs(result: AnalysisResult) -> list[Pair]:
    """Every transfer curve with its scratch baseline and what the claims need beside it."""
    magnitude = {}
    if len(result.benefit):
        magnitude = {(r[schema.C_SHIFT], r[schema.P_MODEL]): float(r["magnitude"]) for _, r in result.benefit.iterrows()}
    upstream = result.selected.drop_duplicates(schema.C_SHIFT).set_index(schema.C_SHIFT)[schema.C_UPSTREAM]
    pairs = []
    for key, m in result.transfer.items():
        s_key, t_key = CurveKey(key.task, "", key.model, "scratch"), CurveKey(key.task, key.shift, key.model, "transfer")
        pairs.append(Pair(key=key, scratch=result.curves[s_key], transfer=result.curves[t_key],
                          upstream=str(upstream.get(key.shift, "")), magnitude=magnitude.get((key.shift, key.model), math.nan),
                          n_params=result.model_params.get(key.model, math.nan),
                          zero_shot=m.zero_shot,
                          fixed_lr=result.fixed_lr_curves.get(t_key._replace(arm=FIXED_LR_ARM)), metrics=m,
                          unconverged=_unconverged(result.selected, s_key, t_key)))
    return pairs


def _transfer(curves: dict[CurveKey, PowerLawFit], zero_shot: pd.DataFrame,
              skipped: list[str]) -> dict[PairKey, TransferMetrics]:
    zs = {}
    if len(zero_shot):
        zs = {(r[schema.C_SHIFT], r[schema.P_MODEL]): float(r["zero_shot"]) for _, r in zero_shot.iterrows()}
    out: dict[PairKey, TransferMetrics] = {}
    for key, fit in curves.items():
        if key.arm != "transfer":
            continue
        base = curves.get(CurveKey(key.task, "", key.model, "scratch"))
        if base is None:
            skipped.append(f"{key.shift} | {key.model}: no scratch fit on {key.task}, transfer metrics skipped")
            continue
        out[PairKey(key.task, key.shift, key.model)] = transfer_metrics(
            base, fit, task=key.task, shift=key.shift, model=key.model, zero_shot=zs.get((key.shift, key.model), math.nan))
    return out


def _model_params(selected: pd.DataFrame) -> dict[str, float]:
    """Parameter count per model size (the ``n_params`` metric, median over runs)."""
    x = selected.dropna(subset=[schema.M_N_PARAMS])
    return {str(k): float(v) for k, v in x.groupby(schema.P_MODEL)[schema.M_N_PARAMS].median().items()}


def _provenance(runs: pd.DataFrame, kept: pd.DataFrame, uri: str, n_boot: int, selection: str = "") -> Provenance:
    sha = runs[schema.C_GIT_SHA].fillna("unknown").astype(str).str[:12]
    dirty = runs[schema.T_GIT_DIRTY].fillna("unknown").astype(str)
    commits = (sha + np.where(dirty == "true", " (dirty)", "")).value_counts()
    return Provenance(tracking_uri=uri, grids=tuple(sorted(runs[schema.C_GRID].dropna().astype(str).unique())),
                      n_runs=len(runs), n_used=len(kept),
                      status_counts={str(k): int(v) for k, v in runs[schema.C_STATUS].value_counts().items()},
                      arm_counts={str(k): int(v) for k, v in runs[schema.P_ARM].value_counts().items()},
                      commits={str(k): int(v) for k, v in commits.items()},
                      created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), n_boot=n_boot,
                      selection=selection)


# --- outputs -----------------------------------------------------------------------------------


def write_outputs(result: AnalysisResult, out_dir: Path) -> list[Path]:
    """Write the fit-laws files: fits.csv, joint_fits.csv, multiplier.csv, d_t.csv,
    transfer_summary.csv, benefit.csv, zero_shot.csv, mixed.csv, selected_runs.csv,
    exclusions.csv and analysis.json (claims, skipped cells, provenance)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eps, dts, summary = result.multiplier_table, result.d_t_table, result.transfer_summary
    tables = {"fits": fit_table(result), "joint_fits": joint_table(result), "multiplier": eps, "d_t": dts,
              "transfer_summary": summary, "benefit": result.benefit, "zero_shot": result.zero_shot,
              "mixed": result.mixed, "exclusions": result.exclusions, "convergence": result.convergence,
              "compute": result.compute, "regime": result.regime, "claims": claims_mod.claims_frame(result.claims),
              "budget_audit": result.audit_pairs,
              "selected_runs": result.selected[[c for c in SELECTED_COLUMNS if c in result.selected]]}
    paths = []
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    doc = {"claims": [c.to_dict() for c in result.claims], "skipped": result.skipped,
           "provenance": result.provenance.__dict__,
           "filters": [{"name": r.name, "description": r.description, "before": r.before, "after": r.after,
                        "flagged": r.n_flagged} for r in result.filter_reports]}
    path = out_dir / "analysis.json"
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    paths.append(path)
    return paths


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if not np.isfinite(x) else float(x)
    return str(x)


#: Columns of selected_runs.csv / the report's run table (the MLflow run behind every point).
SELECTED_COLUMNS: tuple[str, ...] = (
    schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_ARM, schema.P_N_TRAIN, schema.P_SEED, schema.P_LR,
    C_N_LRS, schema.C_TEST_REL_L2, schema.C_VAL_REL_L2, schema.C_RUN_ID, schema.C_RUN_KEY, schema.C_GRID,
)
