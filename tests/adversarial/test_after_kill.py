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


def test_a_slurm_launcher_beats_while_it_waits_and_a_silent_one_is_closed(tmp_path):
    """A SLURM launcher blocks on its array jobs for hours: it beats from a thread (store.Beating),
    so a later invocation closes the parent of one that stopped beating (on another host: no pid
    to ask) and leaves the parent of one that beats."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    c = tracking.client(uri)
    elsewhere = "login-node-7:4242:1"  # another host: only the heartbeat tells
    stale = f"{time.time() - 2 * store.STALE_AFTER_S:.0f}"

    def parent(beat: str) -> str:
        return c.create_run(experiment_id(uri), tags={
            schema.T_GRID: "slurm-grid", schema.T_ROLE: schema.ROLE_GRID, store.T_LAUNCHER: elsewhere,
            store.T_EXECUTOR: "slurm", store.T_HEARTBEAT: beat}).info.run_id

    silent, beating = parent(stale), parent(stale)
    with store.Beating(uri, beating, every=0.05):
        deadline = time.monotonic() + 30
        while c.get_run(beating).data.tags[store.T_HEARTBEAT] == stale and time.monotonic() < deadline:
            time.sleep(0.05)
        reaped = store.reap_dead_parents(uri, "slurm-grid")
    assert set(reaped) == {silent} and "no heartbeat from its launcher" in reaped[silent], reaped
    assert c.get_run(silent).info.status == schema.KILLED
    assert c.get_run(beating).info.status == schema.RUNNING


def test_the_slurm_launcher_beats_while_it_blocks(tmp_path, monkeypatch):
    """run_grid with --executor slurm beats its parent run while run_slurm blocks (stubbed: a sleep
    in place of the array jobs), so the heartbeat moves although no step of the launcher runs."""
    from repro.execution import RunContext
    from repro.grid import slurm

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = expand(load_grid(write_grid(tmp_path / "g.toml", "slurm-beat")))
    beats = []

    def blocked(plan, todo, finished, settings, opts, outcome, *, console=None):
        c = tracking.client(uri)
        for _ in range(3):
            time.sleep(1.1)  # heartbeat tags have whole seconds
            beats.append(float(c.get_run(settings.context.parent_run_id).data.tags[store.T_HEARTBEAT]))

    monkeypatch.setattr(slurm, "run_slurm", blocked)
    launcher.run_grid(plan, launcher.Options(RunContext(tracking_uri=uri, data_dir=tmp_path / "data"),
                                             executor="slurm", heartbeat_s=0.2), live=False)
    assert beats[-1] > beats[0], beats
