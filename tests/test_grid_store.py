"""Stale-run detection, process identity and the SQLite retry wrapper (no training)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from repro import schema, tracking
from repro.grid import store


def fake_run(status=schema.RUNNING, tags=None, start_s=None, run_id="r1"):
    start = (time.time() if start_s is None else start_s) * 1000
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=start, run_id=run_id),
                           data=SimpleNamespace(tags=dict(tags or {})))


def dead_identity() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = store.process_identity(proc.pid)
    proc.wait()
    return ident


def test_identity_and_liveness():
    me = store.process_identity()
    assert me.startswith(socket.gethostname() + ":")
    assert store.identity_alive(me) is True
    assert store.identity_alive(dead_identity()) is False
    host, pid, start = me.rsplit(":", 2)
    assert store.identity_alive(f"{host}:{pid}:{int(start) + 1}") is False  # a reused pid is not us
    assert store.identity_alive(f"elsewhere.example:{pid}:{start}") is None
    assert store.identity_alive("garbage") is None


def test_stale_reason_rules():
    now = time.time()
    me, dead = store.process_identity(), dead_identity()
    live_parent = fake_run(tags={store.T_LAUNCHER: me, store.T_HEARTBEAT: f"{now:.0f}"}, run_id="p")
    # worker on this host: alive -> not stale, gone -> stale at once
    assert store.stale_reason(fake_run(tags={store.T_WORKER: me}), live_parent) is None
    assert "worker" in store.stale_reason(fake_run(tags={store.T_WORKER: dead}), live_parent)
    # worker on another host: only an old heartbeat makes it stale
    remote = "node7:123:456"
    assert store.stale_reason(fake_run(tags={store.T_WORKER: remote, store.T_HEARTBEAT: f"{now - 5:.0f}"}), None) is None
    assert "heartbeat" in store.stale_reason(
        fake_run(tags={store.T_WORKER: remote, store.T_HEARTBEAT: f"{now - 3600:.0f}"}), None)
    # no worker beat yet: the launcher decides
    assert store.stale_reason(fake_run(), live_parent) is None
    dead_parent = fake_run(tags={store.T_LAUNCHER: dead}, run_id="p")
    assert "launcher" in store.stale_reason(fake_run(), dead_parent)
    ended = fake_run(status=schema.FAILED, run_id="p")
    assert "ended FAILED" in store.stale_reason(fake_run(), ended)
    slurm_parent = fake_run(tags={store.T_LAUNCHER: dead, store.T_EXECUTOR: "slurm",
                                  store.T_HEARTBEAT: f"{now:.0f}"}, run_id="p")
    # a SLURM launcher on this host is asked like a local one (it beats from a thread elsewhere)
    assert "launcher" in store.stale_reason(fake_run(), slurm_parent)
    remote_slurm = fake_run(tags={store.T_LAUNCHER: "login7:1:2", store.T_EXECUTOR: "slurm",
                                  store.T_HEARTBEAT: f"{now:.0f}"}, run_id="p")
    assert store.stale_reason(fake_run(), remote_slurm) is None
    remote_slurm.data.tags[store.T_HEARTBEAT] = f"{now - 3600:.0f}"
    assert "no heartbeat from its launcher" in store.stale_reason(fake_run(), remote_slurm)
    # nothing to check: age decides
    assert store.stale_reason(fake_run(start_s=now - 10), None) is None
    assert "no owner" in store.stale_reason(fake_run(start_s=now - 7200), None)
    # finished runs are never stale
    assert store.stale_reason(fake_run(status=schema.FINISHED, tags={store.T_WORKER: dead}), None) is None


def test_retrying_only_retries_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retrying(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking.retrying(lambda: (_ for _ in ()).throw(ValueError("other")))


def test_reap_and_record_on_a_real_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from repro.config import DatasetSpec, RunSpec
    from repro.tracking import experiment_id, init_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri)
    store.prepare_sqlite(uri)
    c = MlflowClient(tracking_uri=uri)
    spec = RunSpec(arm="scratch", data=DatasetSpec(pde="poisson", low=1, high=5, resolution=16, n_train=8, n_val=4,
                                                   n_test=4), model="xxs", n_train=8, lr=1e-3, epochs=1)
    parent = c.create_run(experiment_id(uri), tags={store.T_LAUNCHER: dead_identity()}).info.run_id
    orphan = c.create_run(experiment_id(uri), tags={schema.T_RUN_KEY: spec.run_key,
                                                   schema.T_PARENT_RUN_ID: parent}).info.run_id
    states = store.key_states(uri, [spec.run_key, "0" * 16])
    assert states[spec.run_key].status == schema.RUNNING and states["0" * 16].status == "MISSING"
    reaped = store.reap_stale(uri, states)
    assert list(reaped) == [orphan]
    run = c.get_run(orphan)
    assert run.info.status == schema.KILLED and "launcher" in run.data.tags[schema.T_FAILURE_REASON]
    rid = tracking.record_failed(uri, spec, "pre-training run abc failed", grid="g", role="downstream",
                              parent_run_id=parent)
    run = c.get_run(rid)
    assert run.info.status == schema.FAILED and run.data.params["data.pde"] == "poisson"
    assert run.data.tags[schema.T_RUN_KEY] == spec.run_key
    assert store.key_states(uri, [spec.run_key])[spec.run_key].status == schema.FAILED


def test_a_zombie_worker_counts_as_gone() -> None:
    """A worker killed with its launcher stays a zombie until PID 1 reaps it (in containers,
    maybe never); its RUNNING runs must still be recognised as stale."""
    from repro.grid import store

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = store.process_identity(child.pid)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.05)
    try:
        assert store.identity_alive(identity) is False
    finally:
        child.wait()
    assert store.identity_alive(store.process_identity()) is True


def test_device_slots_pin_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """One slot per GPU × --runs-per-gpu, each with its own CUDA_VISIBLE_DEVICES; CPU slots split threads."""
    from repro.grid.local import make_slots

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = make_slots(device="cuda", workers=None, runs_per_gpu=2, n_gpus=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert [s.index for s in slots] == [0, 1, 2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the job's allocation, e.g. under SLURM
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in make_slots(device="cuda", workers=None, n_gpus=2)] == ["3", "5"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in make_slots(device="cuda", workers=3, n_gpus=2)] == ["3", "5", "3"]
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        make_slots(device="cuda", workers=None, n_gpus=0)
    monkeypatch.setattr("repro.grid.local.cpu_count", lambda: 8)
    cpu = make_slots(device="cpu", workers=4)
    assert len(cpu) == 4 and all(s.env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                                           "CUDA_VISIBLE_DEVICES": ""} for s in cpu)


def test_space_reserve_is_held_given_back_and_a_dead_launchers_is_dropped(tmp_path) -> None:
    """The full-disk reserve (tests/adversarial/test_disk_full.py): a real file of zeros beside a SQLite
    store, none for a server URI; a reserve left by a killed launcher on this host is dropped."""
    import socket
    import subprocess

    from repro.grid.store import RESERVE_BYTES, SpaceReserve

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f"mlflow.db.reserve-{host}-{gone.pid}"
    alive = tmp_path / f"mlflow.db.reserve-{host}-1"  # pid 1 lives
    elsewhere = tmp_path / "mlflow.db.reserve-another-host-7"  # not ours to judge
    for f in (dead, alive, elsewhere):
        f.write_bytes(b"x")
    reserve = SpaceReserve(f"sqlite:///{tmp_path / 'mlflow.db'}").hold()
    assert reserve.path.stat().st_size == RESERVE_BYTES
    assert not dead.exists() and alive.exists() and elsewhere.exists()
    reserve.release()
    reserve.release()  # idempotent
    assert not reserve.path.exists()
    assert SpaceReserve("http://127.0.0.1:5000").hold().path is None
