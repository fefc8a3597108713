"""Two grid files with one label in one store are never merged silently by a label selection."""

from __future__ import annotations

import pytest
from conftest import write_grid

from analysis.collect import StoreError, _one_plan_per_label, collect_runs
from repro import schema
from repro.grid.plan import expand
from repro.grid.plan import load_grid
from repro.tracking import client, experiment_id, init_store


def test_one_label_two_plans_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    a = expand(load_grid(write_grid(tmp_path / "a.toml", "twins", seeds="[0]")))
    b = expand(load_grid(write_grid(tmp_path / "b.toml", "twins", seeds="[0, 1]")))
    assert a.plan_hash != b.plan_hash and a.plan_hash == expand(load_grid(tmp_path / "a.toml")).plan_hash
    c = client(uri)
    exp = experiment_id(uri)
    for plan in (a,):
        c.create_run(exp, tags={schema.T_ROLE: schema.ROLE_GRID, schema.T_GRID: "twins",
                                schema.T_GRID_PLAN: plan.plan_hash})
    _one_plan_per_label(c, exp, "twins")  # one plan: fine
    c.create_run(exp, tags={schema.T_ROLE: schema.ROLE_GRID, schema.T_GRID: "twins", schema.T_GRID_PLAN: b.plan_hash})
    with pytest.raises(StoreError, match="names 2 different plans"):
        collect_runs(uri, "twins")
