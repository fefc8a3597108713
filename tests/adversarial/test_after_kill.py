"""After a kill -9: `status` calls a dead owner's RUNNING run stale, and the next invocation closes
the dead launcher's parent run KILLED (a real SQLite store; the dead process is a pid that is gone)."""

from __future__ import annotations

import time

from conftest import write_grid

from repro import schema
from repro import tracking
from repro.grid import console, launcher, store
from repro.grid.plan import expand
from repro.grid.plan import load_grid
from repro.tracking import experiment_id, init_store


def test_dead_owner_is_stale_in_status_and_its_parent_is_closed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    plan = expand(load_grid(write_grid(tmp_path / "g.toml", "killed")))
    dead = f"{store.process_identity().rsplit(':', 2)[0]}:999999999:1"  # this host, no such process
    c = tracking.client(uri)
    parent = c.create_run(experiment_id(uri), tags={schema.T_GRID: "killed", schema.T_ROLE: schema.ROLE_GRID,
                                                    store.T_LAUNCHER: dead, store.T_EXECUTOR: "local",
                                                    store.T_HEARTBEAT: f"{time.time():.0f}"}).info.run_id
    key = plan.keys[0]
    c.create_run(experiment_id(uri), tags={schema.T_RUN_KEY: key, schema.T_PARENT_RUN_ID: parent,
                                           store.T_WORKER: dead, store.T_HEARTBEAT: f"{time.time():.0f}"})

    rep = launcher.grid_status(plan, uri)
    assert key in rep.stale and key not in rep.running
    text = console.status_text(rep)
    assert "1 stale (owner gone)" in text and "0 running" in text, text
    assert c.get_run(parent).info.status == schema.RUNNING  # status reads, it never writes

    sv = launcher.survey(plan, uri)  # what run-grid does first
    assert sv.states[key].status == schema.KILLED
    closed = c.get_run(parent)
    assert closed.info.status == schema.KILLED
    assert "launcher" in closed.data.tags[schema.T_FAILURE_REASON]
