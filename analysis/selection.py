"""Learning-rate selection (docs/protocol.md §2.7, issue 9 §2).

For each (task, shift, model size, N, arm) cell the LR with the lowest *mean* best validation
relative L2 over the cell's seeds is chosen, and every seed's run at that LR is kept: one LR per
cell, as the paper tunes it, never one per seed (choosing per seed picks each seed's luckiest
LR and shrinks the seed spread the intervals are built from).  Scratch runs have an empty
shift: one scratch cell serves every shift that ends at its task.

Transfer runs also get the pre-training LR of the model they start from (``pretrain_lr``), so
that Finding 6 can compare a tuned fine-tuning LR with one fixed at the pre-training LR.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from repro import schema
from repro.config import DatasetSpec
from analysis.collect import latest_per_run_key

#: The selection cell: every seed of one curve point shares the chosen LR.
CELL: tuple[str, ...] = (schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN, schema.P_ARM)
#: Added columns.
C_N_LRS = "n_lrs"  # how many learning rates the selection compared
C_MEDIAN_LR_TEST = "median_lr_test_rel_l2"  # this seed's median test error over the swept LRs
C_WORST_LR_TEST = "worst_lr_test_rel_l2"
C_PRETRAIN_LR = "pretrain_lr"  # LR of the pre-training run a transfer / zero-shot run starts from


#: A ``data.*`` param a run did not record (one from before the field existed) holds the default.
_DATA_DEFAULTS = {f"data.{f.name}": str(f.default) for f in dataclasses.fields(DatasetSpec)
                  if f.default is not dataclasses.MISSING}


def downstream(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that measure a downstream task.

    Budget-audit runs are dropped.  Pre-training runs are dropped, except where they train on the
    very dataset of a downstream task (same task and every ``data.*`` field, the stream included):
    there a pre-training run can share its RunSpec (and so its run_key) with a scratch run, e.g.
    when N is the full upstream split; the grid keeps one run for that key, tagged ``pretrain``,
    and it is the scratch point too.  A downstream task drawn from its own stream (an ID task of
    E4) is another dataset: the upstream runs are not points of its scratch curve.
    """
    role = df[schema.C_ROLE].fillna(schema.ROLE_DOWNSTREAM)
    df = df[role != schema.ROLE_AUDIT]  # budget-audit runs check the budget; they are never curve points
    pretrain = role[df.index] == schema.ROLE_PRETRAIN
    data = [schema.C_TASK] + sorted(c for c in df.columns if c.startswith("data."))
    dataset = pd.Series(list(zip(*(df[c].map(lambda v, c=c: _DATA_DEFAULTS.get(c, "") if pd.isna(v) else str(v))
                                   for c in data))), index=df.index)
    downstream_datasets = set(dataset[~pretrain])
    return df[~pretrain | dataset.isin(downstream_datasets)]


def pretrain_lrs(df: pd.DataFrame) -> pd.Series:
    """The LR of every run's ``init_from`` pre-training run (by run_key), NaN where unknown."""
    keyed = latest_per_run_key(df)
    lr_of = keyed.set_index(schema.C_RUN_KEY)[schema.P_LR]
    return df[schema.P_INIT_FROM].map(lr_of).astype(float)


def _with_validation(df: pd.DataFrame) -> pd.DataFrame:
    runs = downstream(df).assign(**{C_PRETRAIN_LR: pretrain_lrs(df)})
    # A zero-shot cell has a single run and nothing to select; if it logged no validation
    # error, its test error stands in so that the cell is not lost.
    zero_shot = runs[schema.P_ARM] == "zero_shot"
    val = runs[schema.C_VAL_REL_L2].where(~zero_shot | runs[schema.C_VAL_REL_L2].notna(), runs[schema.C_TEST_REL_L2])
    runs = runs.assign(**{schema.C_VAL_REL_L2: val})
    return runs[np.isfinite(runs[schema.C_VAL_REL_L2].to_numpy(float))]


def _empty(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(**{C_N_LRS: pd.Series(dtype=int), C_MEDIAN_LR_TEST: pd.Series(dtype=float),
                          C_WORST_LR_TEST: pd.Series(dtype=float)})


_CHECKPOINT = "_checkpoint"  # init_from as a string key ("" for scratch), for grouping and merging


def _seed_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, seed, checkpoint): this seed's median / worst test error over the swept LRs."""
    keys = [*CELL, schema.P_SEED, _CHECKPOINT]
    return runs.groupby(keys, dropna=False, sort=True).agg(
        **{C_MEDIAN_LR_TEST: (schema.C_TEST_REL_L2, "median"), C_WORST_LR_TEST: (schema.C_TEST_REL_L2, "max")}
    ).reset_index()


def select_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Every seed's run at the LR whose mean best validation error over the cell's seeds is lowest.

    Parameters
    ----------
    df
        Filtered runs (see :func:`analysis.filters.apply_filters`), pre-training runs included
        (they are dropped here, after their LRs are looked up for ``pretrain_lr``).

    Returns
    -------
    pandas.DataFrame
        The chosen runs (all collected columns) plus ``n_lrs``, ``median_lr_test_rel_l2`` (this
        seed's median test error over the swept LRs, what an untuned LR typically gives),
        ``worst_lr_test_rel_l2`` and ``pretrain_lr``.
    """
    runs = _with_validation(df)
    if runs.empty:
        return _empty(runs)
    runs = runs.assign(**{_CHECKPOINT: runs[schema.P_INIT_FROM].fillna("").astype(str)})
    keys = list(CELL)
    mean_val = runs.groupby([*keys, schema.P_LR], dropna=False, sort=True)[schema.C_VAL_REL_L2].mean().reset_index()
    chosen = mean_val.loc[mean_val.groupby(keys, dropna=False, sort=True)[schema.C_VAL_REL_L2].idxmin(),
                          [*keys, schema.P_LR]]
    n_lrs = mean_val.groupby(keys, dropna=False, sort=True)[schema.P_LR].nunique().rename(C_N_LRS).reset_index()
    best = runs.merge(chosen, on=[*keys, schema.P_LR], how="inner")
    best = best.merge(n_lrs, on=keys, how="left")
    best = best.merge(_seed_stats(runs), on=[*keys, schema.P_SEED, _CHECKPOINT], how="left")
    return best.drop(columns=_CHECKPOINT).sort_values([*keys, schema.P_SEED]).reset_index(drop=True)


def select_fixed_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Transfer runs whose fine-tuning LR equals their pre-training LR (the untuned choice of
    Finding 6); empty when the grid's LRs do not include the pre-training LR."""
    runs = _with_validation(df)
    transfer = runs[(runs[schema.P_ARM] == "transfer") & np.isclose(runs[schema.P_LR].to_numpy(float),
                                                                    runs[C_PRETRAIN_LR].to_numpy(float))]
    return transfer.sort_values([*CELL, schema.P_SEED]).reset_index(drop=True)
