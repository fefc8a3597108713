"""A tracking server that dies in the middle of a grid and comes back, and one whose answer to a
run's creation is lost: real processes and sockets throughout.

`mlflow server` over a SQLite backend; `repro run-grid` against it; once runs have finished the
server is killed (its whole process group, SIGKILL) and started again on the same port 6 s later.
The launcher must announce that the server is not answering, carry on once it answers again, and
end with every run_key FINISHED exactly once and exit status 0 -- a restart must not fail runs.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid
from test_grid_postgres import free_port, start_mlflow_server

from repro import schema
from repro.grid import store
from repro.grid.plan import expand, load_grid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

DOWN_S = 6.0  # how long the server stays dead (then a few seconds to start)


def _start_server(backend: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    return start_mlflow_server(f"sqlite:///{backend}", artifacts, port, log, workers=1, wait_s=60)


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
    # Trained once each, and no other record: a create the server committed before it died and
    # MLflow sent again leaves no twin (the test below makes that case happen on purpose).
    per_key = {k: Counter(r.info.status for r in s.runs) for k, s in states.items()}
    assert all(c == Counter({schema.FINISHED: 1}) for c in per_key.values()), per_key


class _DropFirstCreateAnswer(threading.Thread):
    """A TCP proxy to the tracking server that forwards everything, except that the server's
    answer to the first ``runs/create`` is swallowed and the connection closed: the server has
    committed the run, the client never hears so and (MLflow retries every method) asks again."""

    def __init__(self, server_port: int) -> None:
        super().__init__(daemon=True)
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed, self.dropped = True, 0
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                client_side, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=self._serve, args=(client_side,), daemon=True).start()

    def _serve(self, client_side: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.server_port))
        except OSError:
            client_side.close()
            return
        swallow = threading.Event()

        def answers() -> None:
            while data := upstream.recv(65536):
                if swallow.is_set():  # the server answered the create: committed, and nobody hears it
                    self.dropped += 1
                    break
                client_side.sendall(data)
            for s in (client_side, upstream):  # shutdown first: the other thread is blocked in recv on it
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        threading.Thread(target=answers, daemon=True).start()
        try:
            while data := client_side.recv(65536):
                with self._lock:
                    if self.armed and b"POST /api/2.0/mlflow/runs/create " in data:
                        self.armed = False
                        swallow.set()
                upstream.sendall(data)
        except OSError:
            pass


def test_a_create_retried_after_the_server_committed_it_leaves_one_run(tmp_path: Path) -> None:
    """Without the request's token a retried create leaves a second RUNNING run of the key whose
    id nobody holds, which a claim would take for a rival of another invocation."""
    from repro.config import DatasetSpec, RunSpec
    from repro.tracking import RunRecorder, configure_store_logs, search_runs

    server = _start_server(tmp_path / "server.db", tmp_path / "artifacts", free_port(), tmp_path / "server.log")
    proxy = _DropFirstCreateAnswer(int(server.args[server.args.index("--port") + 1]))
    proxy.start()
    try:
        configure_store_logs()
        uri = f"http://127.0.0.1:{proxy.port}"
        data = DatasetSpec(pde="poisson", low=5, high=10, resolution=16, n_train=16, n_val=16, n_test=16, seed=1)
        spec = RunSpec(arm="scratch", data=data, model="xxs", n_train=8, lr=1e-3, epochs=2, seed=0, batch_size=8)
        recorder = RunRecorder.start(uri, spec)
        runs = search_runs(uri, f"tags.`{schema.T_RUN_KEY}` = '{spec.run_key}'")
    finally:
        proxy.listener.close()
        _kill(server)
    assert proxy.dropped == 1  # the server did create a run whose answer was lost
    assert [r.info.run_id for r in runs] == [recorder.run_id]
