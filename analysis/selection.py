"""Learning-rate selection as in the paper (PROTOCOL.md §2 "Selection").

For each (task, shift, model size, N, arm, seed) cell the LR with the lowest best validation
relative L2 is kept, and its *test* error is the cell's result.  Scratch runs have an empty
shift: one scratch cell serves every shift that ends at its task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from repro import schema

#: The selection cell (issue 5 §1).
CELL: tuple[str, ...] = (schema.C_TASK, schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN, schema.P_ARM, schema.P_SEED)
#: Added columns.
C_N_LRS = "n_lrs"  # how many learning rates the selection compared
C_MEDIAN_LR_TEST = "median_lr_test_rel_l2"  # test error of a typical (untuned) LR of the sweep
C_WORST_LR_TEST = "worst_lr_test_rel_l2"


def downstream(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that measure a downstream task.

    Pre-training runs are dropped, except on tasks that are also downstream tasks (some
    non-pretrain run has that task): there a pre-training run can share its RunSpec (and so its
    run_key) with a scratch run, e.g. when N is the full upstream split; the grid keeps one run
    for that key, tagged ``pretrain``, and it is the scratch point too.
    """
    pretrain = df[schema.C_ROLE].fillna("downstream") == "pretrain"
    downstream_tasks = set(df.loc[~pretrain, schema.C_TASK].dropna())
    return df[~pretrain | df[schema.C_TASK].isin(downstream_tasks)]


def select_lr(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: the run whose LR has the lowest best validation error.

    Parameters
    ----------
    df
        Filtered runs (see :func:`analysis.filters.apply_filters`); pre-training runs are dropped here.

    Returns
    -------
    pandas.DataFrame
        The chosen runs (all collected columns) plus ``n_lrs``, ``median_lr_test_rel_l2`` (the
        median test error over the swept LRs, what an untuned LR typically gives) and
        ``worst_lr_test_rel_l2``.
    """
    runs = downstream(df)
    # A zero-shot cell has a single run and nothing to select; if it logged no validation
    # error, its test error stands in so that the cell is not lost.
    zero_shot = runs[schema.P_ARM] == "zero_shot"
    val = runs[schema.C_VAL_REL_L2].where(~zero_shot | runs[schema.C_VAL_REL_L2].notna(), runs[schema.C_TEST_REL_L2])
    runs = runs.assign(**{schema.C_VAL_REL_L2: val})
    runs = runs[np.isfinite(runs[schema.C_VAL_REL_L2].to_numpy(float))]
    if runs.empty:
        return runs.assign(**{C_N_LRS: pd.Series(dtype=int), C_MEDIAN_LR_TEST: pd.Series(dtype=float),
                              C_WORST_LR_TEST: pd.Series(dtype=float)})
    keys = list(CELL)
    groups = runs.groupby(keys, dropna=False, sort=True)
    best = runs.loc[groups[schema.C_VAL_REL_L2].idxmin()]
    stats = groups.agg(**{C_N_LRS: (schema.P_LR, "nunique"), C_MEDIAN_LR_TEST: (schema.C_TEST_REL_L2, "median"),
                          C_WORST_LR_TEST: (schema.C_TEST_REL_L2, "max")}).reset_index()
    return best.merge(stats, on=keys, how="left").reset_index(drop=True)
