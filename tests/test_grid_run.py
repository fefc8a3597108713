"""The launcher with real processes on CPU: resumability, faults, parallel writers.

Tiny grids (16x16, the xxs model, a few epochs) run through ``python -m repro.cli run-grid``
in subprocesses against a SQLite store in a temporary REPRO_HOME.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid

from repro import schema
from repro.grid.worker import WORKER_PROCESS_NAME
from repro.grid.plan import expand
from repro.grid.plan import load_grid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("grid-data")


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != schema.ENV_TRACKING_URI}
    env[schema.ENV_HOME] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(args: list[str], home: Path, *, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], env=env_for(home), capture_output=True,
                          text=True, timeout=timeout, cwd=home.parent)


def uri_of(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def runs_by_key(uri: str, keys) -> dict[str, list]:
    from repro.grid import store

    return {k: s.runs for k, s in store.key_states(uri, keys).items()}


def finished_counts(uri: str, keys) -> Counter:
    return Counter({k: sum(r.info.status == schema.FINISHED for r in runs) for k, runs in runs_by_key(uri, keys).items()})


def test_run_diverge_rerun_status(tmp_path, data_dir):
    """One lr diverges (FAILED with reason, exit 1), the rest completes; re-running skips FINISHED."""
    home = tmp_path / "home"
    grid = write_grid(tmp_path / "g.toml", "diverge", lrs="[3e-3, 1e6]")
    plan = expand(load_grid(grid))
    res = cli(["run-grid", "--grid", str(grid), "--workers", "2", "--data-dir", str(data_dir), "--device", "cpu"], home)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "failed runs:" in res.stdout and "lr=1e+06" in res.stdout
    uri = uri_of(home)
    runs = runs_by_key(uri, plan.keys)
    bad = [k for k in plan.keys if plan[k].spec.lr == 1e6]
    good = [k for k in plan.keys if k not in bad]
    assert bad and good
    for k in good:
        assert [r.info.status for r in runs[k]] == [schema.FINISHED], k
    for k in bad:
        (run,) = runs[k]
        assert run.info.status == schema.FAILED
        reason = run.data.tags[schema.T_FAILURE_REASON].lower()
        assert "nan" in reason or "finite" in reason or "diverge" in reason, reason
    first_ids = {k: runs[k][0].info.run_id for k in good}
    parents = {r.data.tags.get(schema.T_PARENT_RUN_ID) for k in plan.keys for r in runs[k]}
    assert len(parents) == 1 and None not in parents  # one parent run per invocation

    st = cli(["status", "--grid", str(grid)], home)
    assert st.returncode == 0, st.stderr
    assert f"{len(good)}/{len(plan)} finished" in st.stdout
    assert "completion per axis" in st.stdout and "failures (" in st.stdout

    dry = cli(["run-grid", "--grid", str(grid), "--dry-run", "--device", "cpu"], home)
    assert dry.returncode == 0, dry.stderr
    assert f"finished {len(good)}," in dry.stdout and f"to do {len(bad)}" in dry.stdout
    assert "estimated cost" in dry.stdout and "cpu-hours" in dry.stdout

    again = cli(["run-grid", "--grid", str(grid), "--workers", "2", "--data-dir", str(data_dir), "--device", "cpu"],
                home)
    assert again.returncode == 1
    assert f"0 now, {len(good)} before), {len(bad)} failed" in again.stdout, again.stdout
    runs2 = runs_by_key(uri, plan.keys)
    for k in good:  # nothing finished is re-run
        assert [r.info.run_id for r in runs2[k]] == [first_ids[k]]
    for k in bad:
        assert [r.info.status for r in runs2[k]] == [schema.FAILED, schema.FAILED]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        out += children
        todo += children
    return out


def _is_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().strip() == WORKER_PROCESS_NAME
    except OSError:
        return False


def _db_ready(home: Path) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(home / "mlflow.db", timeout=5) as con:
            return con.execute("select count(*) from runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _busy_worker(uri: str, keys) -> int | None:
    """pid of a worker process that is training a run now (from its grid.worker tag)."""
    from repro.grid import store

    for runs in runs_by_key(uri, keys).values():
        for r in runs:
            ident = r.data.tags.get(store.T_WORKER)
            if r.info.status == schema.RUNNING and ident and store.identity_alive(ident):
                return int(ident.rsplit(":", 2)[1])
    return None


def _statuses(uri: str, keys) -> Counter:
    return Counter(r.info.status for runs in runs_by_key(uri, keys).values() for r in runs)


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_worker_and_launcher_then_resume(tmp_path, data_dir):
    """kill -9 a worker, then the launcher; the next run-grid completes with one FINISHED run per key."""
    home = tmp_path / "home"
    grid = write_grid(tmp_path / "g.toml", "kills", lrs="[1e-3, 2e-3]", seeds="[0, 1]", ft_epochs=250)
    plan = expand(load_grid(grid))
    uri = uri_of(home)
    args = [sys.executable, "-m", "repro.cli", "run-grid", "--grid", str(grid), "--workers", "2", "--max-members", "1",
            "--data-dir", str(data_dir), "--device", "cpu"]
    log = open(tmp_path / "launcher.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(args, env=env_for(home), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # Touch the store through MLflow only once the launcher has migrated it (two first
        # writers would race on the schema migration).
        _wait(lambda: _db_ready(home), 60, "the launcher to create the store")
        busy: list[int] = []

        def ready() -> bool:
            if _statuses(uri, plan.keys)[schema.FINISHED] < 2:
                return False
            pid = _busy_worker(uri, plan.keys)
            busy[:] = [pid] if pid is not None else []
            return bool(busy)

        _wait(ready, 150, "finished runs and a worker training")
        worker = busy[0]
        assert worker in _descendants(proc.pid) and _is_worker(worker)
        os.kill(worker, signal.SIGKILL)
        _wait(lambda: _statuses(uri, plan.keys)[schema.KILLED] >= 1, 60, "the dead worker's run marked KILLED")
        _wait(lambda: _statuses(uri, plan.keys)[schema.RUNNING] >= 1, 60, "a run in progress")
        finished_before = {k: [r.info.run_id for r in runs if r.info.status == schema.FINISHED]
                           for k, runs in runs_by_key(uri, plan.keys).items()}
        # The replacement worker names itself once it has started (a moment on a loaded machine).
        _wait(lambda: len([p for p in _descendants(proc.pid) if _is_worker(p)]) == 2, 30, "both workers up")
        workers = [p for p in _descendants(proc.pid) if _is_worker(p)]
        proc.kill()  # kill -9 of the launcher, mid-grid; its workers die with it
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait(lambda: not any(_is_worker(p) for p in [*workers, *_children(1)]), 30, "workers to exit")
    assert _statuses(uri, plan.keys)[schema.RUNNING] >= 1, (_statuses(uri, plan.keys), (tmp_path / "launcher.log").read_text()[-3000:])  # left behind by the dead launcher

    res = cli(args[3:], home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stale RUNNING runs marked KILLED" in res.stdout
    counts = finished_counts(uri, plan.keys)
    assert all(counts[k] == 1 for k in plan.keys), counts
    after = runs_by_key(uri, plan.keys)
    for k, ids in finished_before.items():  # nothing finished was lost or recomputed
        if ids:
            assert [r.info.run_id for r in after[k] if r.info.status == schema.FINISHED] == ids
    assert not any(r.info.status == schema.RUNNING for runs in after.values() for r in runs)
    killed = [r for runs in after.values() for r in runs if r.info.status == schema.KILLED]
    assert killed and all(r.data.tags.get(schema.T_FAILURE_REASON) for r in killed)


def _artifact_file(uri: str, run_id: str) -> Path:
    from mlflow.tracking import MlflowClient

    art = MlflowClient(tracking_uri=uri).get_run(run_id).info.artifact_uri
    return Path(art.removeprefix("file://")) / schema.A_CHECKPOINT


def test_missing_and_unreadable_checkpoint(tmp_path, data_dir):
    """Dependants of a pre-training run whose checkpoint is gone / corrupt fail naming it; others finish."""
    home = tmp_path / "home"
    over = dict(models='["xxs", "xs"]', n_train="[8]", arms='["scratch", "transfer"]', ft_epochs=2, pre_epochs=2)
    first = write_grid(tmp_path / "a.toml", "ckpt", **over)
    common = ["--workers", "2", "--data-dir", str(data_dir), "--device", "cpu"]
    res = cli(["run-grid", "--grid", str(first), *common], home)
    assert res.returncode == 0, res.stdout + res.stderr
    uri = uri_of(home)
    plan = expand(load_grid(first))
    pre = {r.spec.model: r for r in plan.pretrain}
    states = runs_by_key(uri, [r.run_key for r in pre.values()])
    missing = _artifact_file(uri, states[pre["xxs"].run_key][0].info.run_id)
    corrupt = _artifact_file(uri, states[pre["xs"].run_key][0].info.run_id)
    missing.unlink()
    corrupt.write_bytes(b"not a checkpoint")
    # Workers keep a local copy of each checkpoint they used (beside the store); a fresh host
    # has none, and then the store's missing / corrupt artifact is all there is.
    shutil.rmtree(home / "checkpoints")

    second = write_grid(tmp_path / "b.toml", "ckpt", seeds="[7]", **over)  # same pre-training, new runs
    plan2 = expand(load_grid(second))
    assert {r.run_key for r in plan2.pretrain} == {r.run_key for r in plan.pretrain}
    res = cli(["run-grid", "--grid", str(second), *common], home)
    assert res.returncode == 1, res.stdout + res.stderr
    runs = runs_by_key(uri, plan2.keys)
    for r in plan2.downstream:
        (run,) = [x for x in runs[r.run_key]]
        if r.spec.arm == "scratch":
            assert run.info.status == schema.FINISHED
        else:
            assert run.info.status == schema.FAILED
            reason = run.data.tags[schema.T_FAILURE_REASON]
            assert r.spec.init_from in reason, reason
            # ... and says how to re-create it (issue 11 #3)
            assert "mlflow runs delete --run-id" in reason and "`repro run-grid --grid ckpt --tracking-uri" in reason

    # Doing what the reason says, with the real `mlflow` command: the pre-training runs train
    # again and their dependants finish.
    for key in pre.values():
        (run,) = states[key.run_key]
        rm = subprocess.run([str(Path(sys.executable).with_name("mlflow")), "runs", "delete", "--run-id",
                             run.info.run_id], env={**env_for(home), "MLFLOW_TRACKING_URI": uri},
                            capture_output=True, text=True, timeout=120)
        assert rm.returncode == 0, rm.stdout + rm.stderr
    res = cli(["run-grid", "--grid", str(second), *common], home)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = runs_by_key(uri, plan2.keys)
    assert all(any(x.info.status == schema.FINISHED for x in runs[k]) for k in plan2.keys)


def test_pretrain_failure_fails_dependants_without_launching(tmp_path, data_dir):
    """A diverging pre-training run: its dependants are recorded FAILED naming it; scratch completes."""
    home = tmp_path / "home"
    grid = write_grid(tmp_path / "g.toml", "prefail", n_train="[8]", ft_epochs=2, pre_epochs=2)
    grid.write_text(grid.read_text().replace("[pretrain]\nepochs = 2\nlr = 3e-3", "[pretrain]\nepochs = 2\nlr = 1e6"))
    plan = expand(load_grid(grid))
    res = cli(["run-grid", "--grid", str(grid), "--workers", "2", "--data-dir", str(data_dir), "--device", "cpu"], home)
    assert res.returncode == 1
    runs = runs_by_key(uri_of(home), plan.keys)
    (pre,) = plan.pretrain
    for r in plan.downstream:
        (run,) = runs[r.run_key]
        if r.spec.arm == "scratch":
            assert run.info.status == schema.FINISHED
        else:
            assert run.info.status == schema.FAILED
            reason = run.data.tags[schema.T_FAILURE_REASON]
            assert f"pre-training run {pre.run_key}" in reason and "failed" in reason, reason


def test_sixteen_workers_on_sqlite(tmp_path, data_dir):
    """16 parallel workers writing to one SQLite store: zero write errors, every run FINISHED."""
    home = tmp_path / "home"
    lrs = "[" + ", ".join(f"{1e-3 * (1 + i / 16):.6g}" for i in range(16)) + "]"
    grid = write_grid(tmp_path / "g.toml", "sixteen", arms='["scratch"]', n_train="[8]", lrs=lrs, ft_epochs=2)
    plan = expand(load_grid(grid))
    assert len(plan) == 16
    res = cli(["run-grid", "--grid", str(grid), "--workers", "16", "--max-members", "1", "--data-dir", str(data_dir),
               "--device", "cpu"], home, timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "locked" not in (res.stdout + res.stderr).lower()
    counts = finished_counts(uri_of(home), plan.keys)
    assert all(counts[k] == 1 for k in plan.keys)
