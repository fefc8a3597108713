"""A tracking server that dies in the middle of a grid and comes back: real processes throughout.

`mlflow server` over a SQLite backend; `repro run-grid` against it; once runs have finished the
server is killed (its whole process group, SIGKILL) and started again on the same port 6 s later.
The launcher must announce that the server is not answering, carry on once it answers again, and
end with every run_key FINISHED exactly once and exit status 0 -- a restart must not fail runs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid
from test_grid_postgres import free_port

from repro import schema
from repro.grid import store
from repro.grid.plan import expand, load_grid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

DOWN_S = 6.0  # how long the server stays dead (then a few seconds to start)


def _start_server(backend: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{backend}",
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(proc)
                raise RuntimeError("mlflow server did not start:\n" + log.read_text()[-3000:]) from None
            time.sleep(0.3)


def _kill(proc: subprocess.Popen | None) -> None:
    """SIGKILL the server's whole process group (uvicorn and its worker); nothing if already gone."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def _finished(backend: Path) -> int:
    """FINISHED runs in the server's own database, read while the server is up (after a SIGKILL
    a hot rollback journal may be left that a read-only connection cannot roll back)."""
    with sqlite3.connect(f"file:{backend}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]


def test_a_server_restart_mid_grid_is_announced_and_fails_no_run(tmp_path: Path) -> None:
    backend, artifacts, log = tmp_path / "server.db", tmp_path / "artifacts", tmp_path / "server.log"
    port = free_port()
    server = _start_server(backend, artifacts, port, log)
    uri = f"http://127.0.0.1:{port}"
    # One pre-training, then 8 fine-tuning runs of one member each and a zero-shot evaluation.
    grid = write_grid(tmp_path / "g.toml", "restart", lrs="[1e-3, 3e-3]", ft_epochs=5)
    plan = expand(load_grid(grid))
    env = {k: v for k, v in os.environ.items() if k != schema.ENV_TRACKING_URI}
    env.update({schema.ENV_HOME: str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"})
    launcher_log = tmp_path / "launcher.log"
    launcher = subprocess.Popen([sys.executable, "-m", "repro.cli", "run-grid", "--grid", str(grid), "--workers", "1",
                                 "--max-members", "1", "--device", "cpu", "--tracking-uri", uri,
                                 "--data-dir", str(tmp_path / "data")],
                                env=env, stdout=open(launcher_log, "w"), stderr=subprocess.STDOUT)
    server_now: subprocess.Popen | None = server
    try:
        deadline = time.monotonic() + 150
        finished = 0
        while finished < 2:  # the pre-training and a downstream run
            assert launcher.poll() is None, "the grid ended before the server could be killed"
            assert time.monotonic() < deadline, "no run finished in 150 s"
            time.sleep(0.3)
            finished = _finished(backend) if backend.exists() else 0
        _kill(server)
        server_now = None
        assert launcher.poll() is None, "the grid ended before the server died"
        assert finished < len(plan), (finished, len(plan))  # the server really dies mid-grid
        time.sleep(DOWN_S)
        server_now = _start_server(backend, artifacts, port, log)
        launcher.wait(timeout=180)
        out = launcher_log.read_text()
        assert launcher.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert f"the MLflow server 127.0.0.1:{port} is not answering" in out, out[-3000:]
        states = store.key_states(uri, plan.keys)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _kill(server_now)
    # Trained once each.  A request the server committed but whose answer died with it is sent
    # again by MLflow's retries: a run created twice leaves one record nobody trains, never a
    # second FINISHED run (the next invocation closes such a record KILLED: its owner is gone).
    finished_per_key = {k: Counter(r.info.status for r in s.runs)[schema.FINISHED] for k, s in states.items()}
    assert all(n == 1 for n in finished_per_key.values()), finished_per_key
