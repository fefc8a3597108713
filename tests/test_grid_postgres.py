"""Multi-host tracking: a real PostgreSQL server + ``mlflow server``, a small grid with 4 workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import write_grid

from repro import schema

def find_pg_bin() -> Path | None:
    """The PostgreSQL server binaries (initdb, pg_ctl), any version: $REPRO_PG_BIN, then
    ``pg_config --bindir``, then PATH, then the newest /usr/lib/postgresql/<version>/bin."""
    candidates: list[Path] = []
    if os.environ.get("REPRO_PG_BIN"):
        candidates.append(Path(os.environ["REPRO_PG_BIN"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates += versions
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


PG_BIN = find_pg_bin()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries (initdb, pg_ctl) not found "
                                 "in $REPRO_PG_BIN, pg_config --bindir, PATH or /usr/lib/postgresql/*/bin "
                                 "(apt-get install postgresql)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg(cmd: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (postgres refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture()
def postgres():
    root = Path(tempfile.mkdtemp(prefix="repro-pg-", dir="/tmp"))
    os.chmod(root, 0o777)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True,
                   capture_output=True)
    subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                          f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]), check=True,
                   capture_output=True)
    try:
        subprocess.run(as_pg([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                              "mlflow"]), check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", root
    finally:
        subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def start_mlflow_server(backend_uri: str, artifacts: Path, port: int, log: Path, *, workers: int = 2,
                        wait_s: float = 90) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` in its own process group, once it answers
    ``/health`` (its output appended to ``log``); a server that does not start is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                raise RuntimeError("mlflow server did not start:\n" + log.read_text()[-3000:]) from None
            time.sleep(0.3)


@pytest.fixture()
def mlflow_server(postgres, tmp_path):
    db_uri, _ = postgres
    port = free_port()
    proc = start_mlflow_server(db_uri, tmp_path / "artifacts", port, tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_grid_with_four_workers_against_mlflow_server_on_postgres(mlflow_server, tmp_path):
    from repro.grid import store
    from repro.grid.plan import expand
    from repro.grid.plan import load_grid

    grid = write_grid(tmp_path / "g.toml", "postgres", lrs="[1e-3, 3e-3]", up="32", pre_epochs=2, ft_epochs=2)
    plan = expand(load_grid(grid))
    env = {**os.environ, schema.ENV_HOME: str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-m", "repro.cli", "run-grid", "--grid", str(grid), "--workers", "4",
                          "--max-members", "1", "--device", "cpu", "--tracking-uri", mlflow_server,
                          "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    states = store.key_states(mlflow_server, plan.keys)
    assert all(s.status == schema.FINISHED and len(s.runs) == 1 for s in states.values())
    # checkpoints went through the server's artifact proxy
    assert any((tmp_path / "artifacts").rglob("model.pt"))
    st = subprocess.run([sys.executable, "-m", "repro.cli", "status", "--grid", str(grid), "--tracking-uri",
                         mlflow_server], env=env, capture_output=True, text=True, timeout=120)
    assert f"{len(plan)}/{len(plan)} finished" in st.stdout, st.stdout + st.stderr
