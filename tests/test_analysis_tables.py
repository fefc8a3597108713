"""Filters and learning-rate selection on small hand-made run tables."""

from __future__ import annotations

import math

from repro import schema
from analysis.collect import runs_to_frame
from analysis.filters import apply_filters, exclusions, flagged
from analysis.selection import C_N_LRS, select_lr


def _run(i: int, **kw) -> dict:
    row = {schema.C_RUN_ID: f"r{i}", schema.C_STATUS: schema.FINISHED, schema.C_START_TIME: 1_000 + i,
           schema.T_RUN_KEY: f"k{i}", schema.T_GRID: "g", schema.T_ROLE: "downstream", schema.P_ARM: "scratch",
           schema.P_MODEL: "xs", schema.P_N_TRAIN: "8", schema.P_LR: "0.001", schema.P_SEED: "0",
           schema.P_DATA_PDE: "poisson", schema.P_DATA_LOW: "5.0", schema.P_DATA_HIGH: "10.0",
           schema.M_TEST_REL_L2: 0.3, schema.M_BEST_VAL_REL_L2: 0.3}
    row.update(kw)
    return row


def test_filters_count_and_explain() -> None:
    df = runs_to_frame([
        _run(0),
        _run(1, **{schema.C_STATUS: schema.FAILED, schema.T_FAILURE_REASON: "CUDA out of memory",
                   schema.M_TEST_REL_L2: None, schema.M_BEST_VAL_REL_L2: None}),
        _run(2, **{schema.C_STATUS: schema.RUNNING}),
        _run(3, **{schema.M_BEST_VAL_REL_L2: 3.0}),
        _run(4, **{schema.M_TEST_REL_L2: float("nan")}),
        _run(5, **{schema.T_RUN_KEY: "k0"}),  # newer re-run of k0
    ])
    kept, reports = apply_filters(df)
    assert [(r.name, r.before, r.after) for r in reports] == [
        ("unfinished", 6, 5), ("failed", 5, 4), ("diverged", 4, 3), ("duplicate", 3, 2), ("protocol", 2, 2)]
    assert list(kept[schema.C_RUN_ID]) == ["r3", "r5"]  # val rel L2 3 > 1: flagged, not dropped
    ex = exclusions(reports).set_index(schema.C_RUN_ID)
    assert ex.loc["r1", "reason"] == "CUDA out of memory"
    assert "not finite" in ex.loc["r4", "reason"]
    assert "r3" not in ex.index
    assert ex.loc["r0", "reason"] == "superseded by newer run r5"
    fl = flagged(reports).set_index(schema.C_RUN_ID)
    assert list(fl.index) == ["r3"] and "3 > 1" in fl.loc["r3", "reason"]
    assert [r.n_flagged for r in reports] == [0, 0, 1, 0, 0]


def test_small_n_cell_above_one_survives_selection() -> None:
    """Every LR of a small-N scratch cell ends above rel L2 1: the cell is still selected (F4)."""
    df = runs_to_frame([
        _run(0, **{schema.P_LR: "0.001", schema.M_BEST_VAL_REL_L2: 1.4, schema.M_TEST_REL_L2: 1.5}),
        _run(1, **{schema.P_LR: "0.0001", schema.M_BEST_VAL_REL_L2: 1.2, schema.M_TEST_REL_L2: 1.3}),
        _run(2, **{schema.P_LR: "0.01", schema.M_BEST_VAL_REL_L2: float("inf"), schema.M_TEST_REL_L2: 9.0}),
        _run(3, **{schema.P_N_TRAIN: "64", schema.M_BEST_VAL_REL_L2: 0.4}),
    ])
    kept, reports = apply_filters(df)
    assert set(kept[schema.C_RUN_ID]) == {"r0", "r1", "r3"}  # only the non-finite run is dropped
    sel = select_lr(kept).set_index(schema.P_N_TRAIN)
    assert sel.loc[8, schema.C_RUN_ID] == "r1" and sel.loc[8, C_N_LRS] == 2
    assert set(flagged(reports)[schema.C_RUN_ID]) == {"r0", "r1"}


def test_lr_selection_uses_validation_not_test() -> None:
    df = runs_to_frame([
        _run(0, **{schema.P_LR: "0.001", schema.M_BEST_VAL_REL_L2: 0.20, schema.M_TEST_REL_L2: 0.25}),
        _run(1, **{schema.P_LR: "0.0001", schema.M_BEST_VAL_REL_L2: 0.22, schema.M_TEST_REL_L2: 0.10}),
        _run(2, **{schema.P_LR: "0.0001", schema.P_SEED: "1", schema.M_BEST_VAL_REL_L2: 0.1}),
        _run(5, **{schema.P_LR: "0.001", schema.P_SEED: "1", schema.M_BEST_VAL_REL_L2: 0.08}),
        _run(3, **{schema.P_ARM: "zero_shot", schema.P_N_TRAIN: "0", schema.P_LR: "0.0",
                   schema.P_UPSTREAM_PDE: "poisson", schema.P_UPSTREAM_LOW: "1.0", schema.P_UPSTREAM_HIGH: "5.0",
                   schema.M_BEST_VAL_REL_L2: None, schema.M_TEST_REL_L2: 0.4}),
        _run(4, **{schema.T_ROLE: "pretrain", schema.P_DATA_LOW: "1.0", schema.P_DATA_HIGH: "5.0",
                   schema.M_BEST_VAL_REL_L2: 0.01}),  # upstream-only task
    ])
    kept, _ = apply_filters(df)
    sel = select_lr(kept).set_index([schema.P_ARM, schema.P_SEED])
    # one LR for the cell, on the mean validation error over seeds (1e-3: 0.14, 1e-4: 0.16) - although
    # seed 1 alone would pick 1e-4 and seed 0's 1e-3 run is worse on test
    assert sel.loc[("scratch", 0), schema.C_RUN_ID] == "r0" and sel.loc[("scratch", 1), schema.C_RUN_ID] == "r5"
    assert sel.loc[("scratch", 0), C_N_LRS] == 2
    assert sel.loc[("zero_shot", 0), schema.C_SHIFT] == "poisson(1,5) -> poisson(5,10)"
    assert math.isclose(sel.loc[("zero_shot", 0), schema.C_TEST_REL_L2], 0.4)
    assert "r4" not in set(sel[schema.C_RUN_ID])  # pre-training runs are not downstream results


def test_pretrain_run_on_a_downstream_task_is_its_scratch_point() -> None:
    """A pre-training run whose RunSpec equals a scratch run's (same run_key, one MLflow run
    tagged pretrain) stays on the downstream curve; pre-training on an upstream-only task does not (F1)."""
    up = {schema.P_DATA_LOW: "1.0", schema.P_DATA_HIGH: "5.0"}
    df = runs_to_frame([
        _run(0, **{schema.P_N_TRAIN: "8"}),
        _run(1, **{schema.T_ROLE: "pretrain", schema.P_N_TRAIN: "1024"}),  # = the scratch run at the full split
        _run(2, **{schema.T_ROLE: "pretrain", schema.P_N_TRAIN: "1024", **up}),
        _run(3, **{schema.P_ARM: "transfer", schema.P_UPSTREAM_PDE: "poisson", schema.P_UPSTREAM_LOW: "1.0",
                   schema.P_UPSTREAM_HIGH: "5.0"}),
    ])
    kept, _ = apply_filters(df)
    sel = select_lr(kept)
    assert set(sel[schema.C_RUN_ID]) == {"r0", "r1", "r3"}
    scratch = sel[sel[schema.P_ARM] == "scratch"]
    assert sorted(scratch[schema.P_N_TRAIN]) == [8, 1024]
    assert set(scratch[schema.C_SHIFT]) == {""}


def test_pretrain_run_on_another_stream_of_the_task_is_not_its_scratch_point() -> None:
    """An ID downstream task drawn from its own stream (E4) shares the upstream's label but not its
    dataset: the pre-training run is not a point of that task's scratch curve."""
    df = runs_to_frame([
        _run(0, **{schema.P_N_TRAIN: "8", "data.stream": "downstream"}),
        _run(1, **{schema.T_ROLE: "pretrain", schema.P_N_TRAIN: "1024", "data.stream": "default"}),
    ])
    kept, _ = apply_filters(df)
    assert set(select_lr(kept)[schema.C_RUN_ID]) == {"r0"}


def test_a_curve_point_pooling_two_protocols_is_flagged_not_dropped() -> None:
    """Two grids of one physics and resolution, other epochs: analysed together, their runs meet in
    one curve point; every run is kept and flagged, naming what differs."""
    df = runs_to_frame([
        _run(0, **{schema.P_EPOCHS: "100", schema.P_LR: "0.001"}),
        _run(1, **{schema.P_EPOCHS: "100", schema.P_LR: "0.003"}),  # LR differs: one protocol
        _run(2, **{schema.P_EPOCHS: "500", schema.P_LR: "0.001"}),  # another grid's schedule
        _run(3, **{schema.P_EPOCHS: "500", schema.P_N_TRAIN: "16"}),  # alone at its N
        _run(4, **{schema.P_N_TRAIN: "32", schema.P_DATA_SEED: "0"}),  # another point, other data seeds
        _run(5, **{schema.P_N_TRAIN: "32", schema.P_DATA_SEED: "1"}),
    ])
    kept, reports = apply_filters(df)
    assert len(kept) == 6
    fl = flagged(reports).set_index(schema.C_RUN_ID)
    assert sorted(fl.index) == ["r0", "r1", "r2", "r4", "r5"]
    assert "pools 2 protocols (differing in epochs)" in fl.loc["r2", "reason"] and "--grid" in fl.loc["r2", "reason"]
    assert "(differing in data.seed)" in fl.loc["r4", "reason"]  # each run names its own point's difference


def test_budget_audit_runs_pair_with_the_runs_they_audit_and_stay_off_the_curves() -> None:
    """Audit runs (role audit, 2x the epochs) are never curve points, are not flagged as a second
    protocol, and each is paired with the grid run of the same cell, LR and seed."""
    from analysis.analyze import AUDIT_TOLERANCE, budget_audit_pairs, budget_audit_table

    audit = {schema.T_ROLE: schema.ROLE_AUDIT, schema.P_EPOCHS: "200"}
    ckpt = {schema.P_ARM: "transfer", schema.P_INIT_FROM: "pre0", schema.P_UPSTREAM_PDE: "poisson",
            schema.P_UPSTREAM_LOW: "1.0", schema.P_UPSTREAM_HIGH: "5.0"}
    df = runs_to_frame([
        _run(0, **{schema.P_EPOCHS: "100", schema.M_TEST_REL_L2: 0.20}),
        _run(1, **{schema.P_EPOCHS: "100", schema.P_SEED: "1", schema.M_TEST_REL_L2: 0.22}),
        _run(2, **audit, **{schema.M_TEST_REL_L2: 0.15, schema.M_BEST_VAL_REL_L2: 0.01}),  # 25 % better: not converged
        _run(3, **{schema.P_EPOCHS: "100", schema.M_TEST_REL_L2: 0.10}, **ckpt),
        _run(4, **audit, **{schema.M_TEST_REL_L2: 0.099}, **ckpt),  # 1 % better: within tolerance
        _run(5, **audit, **{schema.P_N_TRAIN: "64"}),  # its grid run is missing: no pair
        _run(6, **{schema.P_EPOCHS: "50", schema.M_TEST_REL_L2: 0.5}),  # a shorter schedule of another grid
        _run(7, **{schema.P_EPOCHS: "100", schema.P_DATA_SEED: "1", schema.M_TEST_REL_L2: 0.9}),  # other data
        _run(8, **audit, **{schema.P_SEED: "2", schema.C_STATUS: schema.FAILED}),  # recorded, never paired
    ])
    kept, reports = apply_filters(df.drop(index=[6, 7]))
    assert not len(flagged(reports))  # the audit's other epochs are not a second protocol
    sel = select_lr(kept)
    assert set(sel[schema.C_RUN_ID]) == {"r0", "r1", "r3"}  # the audit's lower val error is never selected
    # one base per audit run, the longest shorter schedule on the same data: never the 50-epoch run of
    # another grid nor the run on another data seed
    both = budget_audit_pairs(df)
    assert len(both) == 2 and set(both[schema.C_RUN_ID]) == {"r0", "r3"}
    pairs = budget_audit_pairs(kept).set_index(schema.P_ARM)
    assert sorted(pairs.index) == ["scratch", "transfer"]
    assert math.isclose(pairs.loc["scratch", "gain"], 0.25) and not pairs.loc["scratch", "within"]
    assert math.isclose(pairs.loc["transfer", "gain"], 0.01) and pairs.loc["transfer", "within"]
    assert (pairs["audit_epochs"] == 2 * pairs["epochs"]).all()
    # Without the selection no audit is known to be at the selected LR; with it, both are (r0 and r3
    # are their cells' selected runs).
    assert not budget_audit_pairs(kept)["at_selected_lr"].any()
    selected_pairs = budget_audit_pairs(kept, sel)
    assert selected_pairs["at_selected_lr"].all()
    table = budget_audit_table(selected_pairs, df).set_index(["arm", "lr"])
    assert table.loc[("transfer", "selected"), "within_tolerance"] == 1
    assert table.loc[("scratch", "selected"), "within_tolerance"] == 0
    # scratch: three audit runs recorded: one paired, and two (one without a grid run, one failed) unpaired
    assert table.loc[("scratch", "selected"), "audited_runs"] == 1
    assert table.loc[("scratch", "unpaired"), "audit_runs"] == 2 and table.loc[("scratch", "unpaired"), "audited_runs"] == 0
    assert table.loc[("scratch", "selected"), "budget_factor"] == 2
    assert table.loc[("scratch", "selected"), "tolerance"] == AUDIT_TOLERANCE
    # An audit of another LR of the sweep (transfer at 1e-3 against the selected 3e-3's cell) is "other".
    other = runs_to_frame([
        _run(10, **{schema.P_EPOCHS: "100", schema.M_TEST_REL_L2: 0.10, schema.M_BEST_VAL_REL_L2: 0.10}, **ckpt),
        _run(11, **{schema.P_EPOCHS: "100", schema.P_LR: "0.003", schema.M_TEST_REL_L2: 0.09,
                    schema.M_BEST_VAL_REL_L2: 0.09}, **ckpt),
        _run(12, **audit, **{schema.M_TEST_REL_L2: 0.08}, **ckpt),
        # the same audit FAILED once before its re-run finished: one audit, paired, not an unpaired one
        _run(13, **audit, **{schema.T_RUN_KEY: "k12", schema.C_STATUS: schema.FAILED}, **ckpt),
        _run(14, **{**audit, schema.P_EPOCHS: "400", schema.M_TEST_REL_L2: 0.078}, **ckpt),  # a 4x audit of r10
    ])
    kept, _ = apply_filters(other)
    pairs = budget_audit_pairs(kept, select_lr(kept))
    assert list(pairs[schema.C_RUN_ID]) == ["r10", "r10"] and not pairs["at_selected_lr"].any()
    table = budget_audit_table(pairs, other)
    assert list(table["lr"]) == ["other", "other"]  # one row per budget factor, and no "unpaired" row
    assert list(table["budget_factor"]) == [2.0, 4.0] and list(table["audited_runs"]) == [1, 1]
