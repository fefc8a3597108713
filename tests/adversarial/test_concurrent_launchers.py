"""Four `repro run-grid` launchers of one grid on one store: every run_key is trained exactly once.

Real processes on a fresh store: two launchers start together (the first-contact migration race
and the claim race), two more join while the first ones train (staggered).  Every launcher exits
0; each run_key ends with exactly one FINISHED run, and no other run at all (a lost claim is
deleted, not left FAILED).  Once on SQLite, once on an `mlflow server` backed by PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid
from test_grid_postgres import PG_BIN, mlflow_server, postgres  # noqa: F401 - fixtures

from repro import schema
from repro.grid import store
from repro.grid.plan import expand
from repro.grid.plan import load_grid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

STARTS_S = (0.0, 0.0, 4.0, 8.0)  # two together, two staggered


def _launch_four(grid: Path, uri: str, home: Path, data_dir: Path) -> list[subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k != schema.ENV_TRACKING_URI}
    env.update({schema.ENV_HOME: str(home), "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "repro.cli", "run-grid", "--grid", str(grid), "--workers", "1",
           "--max-members", "1", "--device", "cpu", "--tracking-uri", uri, "--data-dir", str(data_dir)]
    procs = []
    t0 = time.monotonic()
    for i, start in enumerate(STARTS_S):
        time.sleep(max(0.0, start - (time.monotonic() - t0)))
        log = open(home.parent / f"launcher{i}.log", "w+")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
    out = []
    for proc, log in procs:
        proc.wait(timeout=360)
        log.seek(0)
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, log.read(), ""))
    return out


def _check_once_each(grid: Path, uri: str, results: list[subprocess.CompletedProcess]) -> None:
    for i, res in enumerate(results):
        assert res.returncode == 0, f"launcher {i}:\n{res.stdout[-3000:]}"
        assert "Traceback" not in res.stdout, f"launcher {i}:\n{res.stdout[-3000:]}"
    plan = expand(load_grid(grid))
    states = store.key_states(uri, plan.keys)
    per_key = {k: Counter(r.info.status for r in s.runs) for k, s in states.items()}
    assert all(c == Counter({schema.FINISHED: 1}) for c in per_key.values()), per_key
    trained = sum(int(line.split(" now")[0].rsplit("(", 1)[1]) for r in results
                  for line in r.stdout.splitlines() if line.startswith("grid ") and " now" in line)
    assert trained == len(plan), [r.stdout.splitlines()[-3:] for r in results]


def _grid(tmp_path: Path) -> Path:
    # pre-training + 4 scratch/transfer runs + zero-shot: dependants wait for a pre-training
    # run another launcher may be training
    return write_grid(tmp_path / "g.toml", "claims", lrs="[1e-3, 3e-3]", n_train="[8]", up="32",
                      pre_epochs=2, ft_epochs=2)


def test_four_launchers_on_sqlite(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    grid = _grid(tmp_path)
    _check_once_each(grid, uri, _launch_four(grid, uri, home, tmp_path / "data"))


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries not found (apt-get install postgresql)")
def test_four_launchers_on_mlflow_server_with_postgres(mlflow_server, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    grid = _grid(tmp_path)
    _check_once_each(grid, mlflow_server, _launch_four(grid, mlflow_server, home, tmp_path / "data"))
