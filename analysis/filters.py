"""Named run filters that say what they removed and why (docs/design.md §3.7).

Each filter takes the collected frame and returns the kept rows plus a :class:`FilterReport`
(before/after counts and one exclusion row per removed run with its reason).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from repro import schema
from analysis.collect import latest_per_run_key

#: A trained run whose best validation relative L2 exceeds this did worse than predicting
#: u = 0 (relative L2 = 1).  Such runs are only *flagged*, never dropped: at small N a scratch
#: run can legitimately end above 1, and dropping every LR of such a cell before selection
#: would remove the cell (and the small-N end of the curve) altogether.
DIVERGED_REL_L2 = 1.0

#: Columns of the exclusion table.
EXCLUSION_COLUMNS: tuple[str, ...] = (
    schema.C_RUN_ID, schema.C_RUN_KEY, "filter", "reason", schema.P_ARM, schema.C_TASK, schema.C_SHIFT,
    schema.P_MODEL, schema.P_N_TRAIN, schema.P_LR, schema.P_SEED,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class FilterReport:
    """What one filter did: counts before and after, and the excluded runs with reasons."""

    name: str
    description: str
    before: int
    after: int
    excluded: pd.DataFrame
    #: Runs the filter kept but reports (same columns as ``excluded``; ``reason`` says why).
    flagged: pd.DataFrame = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.flagged is None:
            object.__setattr__(self, "flagged", pd.DataFrame(columns=list(EXCLUSION_COLUMNS)))

    @property
    def n_flagged(self) -> int:
        return len(self.flagged)

    @property
    def n_excluded(self) -> int:
        return self.before - self.after


def _report(name: str, description: str, df: pd.DataFrame, drop: pd.Series,
            reasons: pd.Series | str) -> tuple[pd.DataFrame, FilterReport]:
    removed = df.loc[drop].copy()
    removed["filter"] = name
    removed["reason"] = reasons[drop] if isinstance(reasons, pd.Series) else reasons
    kept = df.loc[~drop]
    return kept, FilterReport(name=name, description=description, before=len(df), after=len(kept),
                              excluded=removed[list(EXCLUSION_COLUMNS)].reset_index(drop=True))


def drop_unfinished(df: pd.DataFrame) -> tuple[pd.DataFrame, FilterReport]:
    """Runs still RUNNING, or KILLED / SCHEDULED (no final metrics to use)."""
    drop = ~df[schema.C_STATUS].isin([schema.FINISHED, schema.FAILED])
    return _report("unfinished", "status is neither FINISHED nor FAILED", df, drop,
                   "status " + df[schema.C_STATUS].astype(str))


def drop_failed(df: pd.DataFrame) -> tuple[pd.DataFrame, FilterReport]:
    """Runs that ended FAILED; the reason is their ``failure_reason`` tag."""
    drop = df[schema.C_STATUS] == schema.FAILED
    reason = df[schema.C_FAILURE_REASON].fillna("no failure_reason tag").astype(str)
    return _report("failed", "status FAILED (reason from the failure_reason tag)", df, drop, reason)


def drop_diverged(df: pd.DataFrame, threshold: float = DIVERGED_REL_L2) -> tuple[pd.DataFrame, FilterReport]:
    """Drop runs without a finite test error (trained runs: also validation error).

    Trained runs whose best validation error exceeds ``threshold`` are kept (LR selection
    still sees them; a cell whose every LR is above 1 at small N is a real result) and listed
    in the report's ``flagged`` table.
    """
    test, val = df[schema.C_TEST_REL_L2].to_numpy(float), df[schema.C_VAL_REL_L2].to_numpy(float)
    trained = (df[schema.P_ARM] != "zero_shot").to_numpy()
    # zero-shot runs are judged on their test error alone (they select nothing on validation)
    missing = pd.Series(~np.isfinite(test) | (trained & ~np.isfinite(val)), index=df.index)
    with np.errstate(invalid="ignore"):
        worse = pd.Series(trained & ~missing.to_numpy() & (val > threshold), index=df.index)
    kept, rep = _report("diverged", f"no finite test (trained runs: validation) error; trained runs with val rel "
                        f"L2 > {threshold:g} are flagged, not dropped", df, missing,
                        "test or validation error missing / not finite")
    flagged = df.loc[worse].copy()
    flagged["filter"] = "diverged"
    flagged["reason"] = [f"best val rel L2 {v:.3g} > {threshold:g} (worse than predicting 0); kept"
                         for v in flagged[schema.C_VAL_REL_L2]]
    return kept, dataclasses.replace(rep, flagged=flagged[list(EXCLUSION_COLUMNS)].reset_index(drop=True))


def drop_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, FilterReport]:
    """Several runs with one ``run_key`` (a re-run): keep the newest."""
    newest = df.sort_values(schema.C_START_TIME, kind="stable").groupby(schema.C_RUN_KEY, dropna=False).tail(1)
    drop = ~df.index.isin(newest.index)
    newest_id = df[schema.C_RUN_KEY].map(newest.set_index(schema.C_RUN_KEY)[schema.C_RUN_ID])
    reason = "superseded by newer run " + newest_id.astype(str)
    return _report("duplicate", "same run_key as a newer run (keep the newest)", df, pd.Series(drop, index=df.index),
                   reason)


#: What must agree between the runs of one curve point (they may differ in LR and seed only).
PROTOCOL_COLUMNS: tuple[str, ...] = (
    schema.P_EPOCHS, schema.P_BATCH_SIZE, schema.P_EVAL_EVERY, schema.P_LAYOUT, schema.P_INIT_FROM,
    schema.P_DATA_N_TRAIN, schema.P_DATA_N_VAL, schema.P_DATA_N_TEST, schema.P_DATA_SEED,
    schema.P_DATA_STREAM, schema.P_DATA_PSI_TARGETING, schema.P_PRECISION,
)
#: Values of protocol params that runs recorded before the param existed had implicitly.  (Not
#: precision: older CUDA runs of the fast path ran in bf16 without saying so.)
PROTOCOL_DEFAULTS: dict[str, str] = {schema.P_DATA_STREAM: "default", schema.P_DATA_PSI_TARGETING: "exact"}
_POINT = (schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN, schema.P_ARM)


#: What must agree between the pre-training runs behind one curve point (their seeds may differ:
#: several pre-training seeds per upstream are part of the design, issue 9 §2).
CHECKPOINT_COLUMNS: tuple[str, ...] = (
    schema.P_EPOCHS, schema.P_BATCH_SIZE, schema.P_LR, schema.P_LAYOUT, schema.P_MODEL, schema.P_DATA_PDE,
    schema.P_DATA_LOW, schema.P_DATA_HIGH, schema.P_DATA_N_TRAIN, schema.P_DATA_SEED,
)


def _checkpoint_protocol(df: pd.DataFrame) -> pd.Series:
    """Each run's pre-trained checkpoint described by its training protocol, seed left out (the
    checkpoint's run_key where its run is not in the frame)."""
    keyed = latest_per_run_key(df)
    cols = [c for c in CHECKPOINT_COLUMNS if c in keyed]
    described = pd.Series([repr(t) for t in keyed[cols].itertuples(index=False, name=None)],
                          index=keyed[schema.C_RUN_KEY].to_numpy())
    init = df[schema.P_INIT_FROM]
    return init.map(described).fillna(init.astype(str))


def flag_mixed_protocols(df: pd.DataFrame) -> tuple[pd.DataFrame, FilterReport]:
    """Flag curve points that pool runs of different protocols (keeps every run).

    Two grids of one physics and resolution but e.g. other epochs or another pre-trained
    checkpoint land on the same (task, shift, model, N, arm) when analysed together, and LR
    selection would then compare across protocols.  ``--grid`` selects one grid.  Checkpoints
    that differ only in their pre-training seed are one protocol.
    """
    described = df.assign(**{c: df[c].fillna(v) for c, v in PROTOCOL_DEFAULTS.items() if c in df})
    if schema.P_INIT_FROM in df:
        described = described.assign(
            **{schema.P_INIT_FROM: _checkpoint_protocol(df).where(df[schema.P_INIT_FROM].notna())})
    cols = [c for c in PROTOCOL_COLUMNS if c in df]
    protocol = pd.Series([repr(t) for t in described[cols].itertuples(index=False, name=None)], index=df.index,
                         dtype=object)
    # Budget-audit runs differ from their point's runs in epochs by design and are no curve points.
    audit = df[schema.C_ROLE].eq(schema.ROLE_AUDIT) if schema.C_ROLE in df else pd.Series(False, index=df.index)
    n_protocols = protocol[~audit].groupby([df.loc[~audit, c] for c in _POINT], dropna=False).transform("nunique")
    n_protocols = n_protocols.reindex(df.index, fill_value=1)
    mixed = n_protocols > 1
    kept, rep = _report("protocol", "runs of one curve point that differ in more than LR and seed (flagged, "
                        "kept: analyse one grid with --grid)", df, pd.Series(False, index=df.index), "")
    if not mixed.any():
        return kept, rep
    flagged = df.loc[mixed].copy()
    flagged["filter"] = "protocol"
    # what differs, per curve point (the reason of each run names its own point's differences)
    differing = described.loc[mixed].groupby(list(_POINT), dropna=False)[cols].transform(
        lambda c: c.nunique(dropna=False) > 1)
    flagged["reason"] = [f"its curve point pools {n} protocols (differing in {', '.join(c for c in cols if row[c])}); "
                         "select one grid with --grid" for n, (_, row) in zip(n_protocols[mixed], differing.iterrows())]
    return kept, dataclasses.replace(rep, flagged=flagged[list(EXCLUSION_COLUMNS)].reset_index(drop=True))


def flag_unconverged(selected: pd.DataFrame) -> FilterReport:
    """Flag the LR-selected trained runs whose convergence diagnostic failed (keeps every run).

    The diagnostic (``convergence/converged``, :mod:`repro.train.loop`) says whether the best
    validation error still improved over the last fifth of training: a curve point resting on
    such a run measures the budget, not the arm.
    """
    col = schema.M_CONVERGED
    trained = selected[schema.P_ARM].isin(["scratch", "transfer"]) if len(selected) else pd.Series(dtype=bool)
    bad = trained & (selected[col] < 0.5) if col in selected else pd.Series(False, index=selected.index)
    flagged = selected.loc[bad].copy()
    flagged["filter"] = "unconverged"
    late = flagged[schema.M_LATE_IMPROVEMENT] if schema.M_LATE_IMPROVEMENT in flagged else pd.Series(np.nan, index=flagged.index)
    flagged["reason"] = [f"best val rel L2 still improved {v:.1%} over the last fifth of training (selected run)"
                         if np.isfinite(v) else "convergence diagnostic not available" for v in late]
    return FilterReport(name="unconverged", description="selected trained runs whose convergence diagnostic failed "
                        "(flagged, kept)", before=len(selected), after=len(selected),
                        excluded=pd.DataFrame(columns=list(EXCLUSION_COLUMNS)),
                        flagged=flagged.reindex(columns=list(EXCLUSION_COLUMNS)).reset_index(drop=True))


#: Filters in the order they apply: a FAILED run is "failed", not "duplicate" of its re-run.
FILTERS: dict[str, Callable[[pd.DataFrame], tuple[pd.DataFrame, FilterReport]]] = {
    "unfinished": drop_unfinished,
    "failed": drop_failed,
    "diverged": drop_diverged,
    "duplicate": drop_duplicates,
    "protocol": flag_mixed_protocols,
}


def apply_filters(df: pd.DataFrame, names: tuple[str, ...] = tuple(FILTERS)) -> tuple[pd.DataFrame, list[FilterReport]]:
    """Apply the named filters in order.

    Returns
    -------
    (kept, reports)
        The surviving runs and one :class:`FilterReport` per filter.
    """
    reports = []
    for name in names:
        if name not in FILTERS:
            raise KeyError(f"unknown filter {name!r}; known: {', '.join(FILTERS)}")
        df, rep = FILTERS[name](df)
        reports.append(rep)
    return df, reports


def flagged(reports: list[FilterReport]) -> pd.DataFrame:
    """All runs the filters of ``reports`` kept but flagged, in one table."""
    frames = [r.flagged for r in reports if len(r.flagged)]
    if not frames:
        return pd.DataFrame(columns=list(EXCLUSION_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def exclusions(reports: list[FilterReport]) -> pd.DataFrame:
    """All excluded runs of ``reports`` in one table."""
    frames = [r.excluded for r in reports if len(r.excluded)]
    if not frames:
        return pd.DataFrame(columns=list(EXCLUSION_COLUMNS))
    return pd.concat(frames, ignore_index=True)
