"""Stores that cannot answer, and bad destinations: one clear line, a non-zero exit, no traceback,
and no minutes of silence.  Real processes (the console script's own error handling) and real
sockets: a refused port and a server that accepts connections but never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro import schema
from repro.cli import app

pytestmark = pytest.mark.timeout(240)


def _repro(args: list[str], home: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if k not in (schema.ENV_TRACKING_URI, "MLFLOW_TRACKING_URI")}
    full.update({schema.ENV_HOME: str(home), **env})
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "repro", *args], env=full, capture_output=True, text=True,
                         timeout=120)
    return res, time.monotonic() - t0


def _one_clear_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_and_silent_tracking_servers(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{_closed_port()}"
    for args in (["status"], ["fit-laws"], ["run-grid", "--dry-run"]):
        res, took = _repro([*args, "--tracking-uri", refused], tmp_path)
        _one_clear_line(res, refused, "cannot be reached")
        assert took < 60, took
    # MLflow's own variable is honoured (REPRO_TRACKING_URI still wins when both are set)
    res, _ = _repro(["status"], tmp_path, MLFLOW_TRACKING_URI=refused)
    _one_clear_line(res, refused)

    with socket.socket() as silent:  # listens (the kernel completes the handshake), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        res, took = _repro(["export", "--to", str(tmp_path / "x.db"), "--tracking-uri", uri], tmp_path,
                           REPRO_STORE_TIMEOUT="2")
        _one_clear_line(res, uri, "did not answer within 2 s")
        assert took < 60, took


def test_bad_export_destinations_and_ui_port(tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "mlflow.db"
    from repro.tracking import init_store

    init_store(f"sqlite:///{store}")
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for dst, needle in ((a_file / "x.db", "is a file, not a folder"), (Path("/proc/x.db"), "cannot write in")):
        res = runner.invoke(app, ["export", "--grid", "quick", "--to", str(dst), "--tracking-uri", f"sqlite:///{store}"])
        assert res.exit_code == 2 and needle in res.output, res.output
    res = runner.invoke(app, ["ui", "--port", "99999", "--tracking-uri", f"sqlite:///{store}"])
    assert res.exit_code == 2 and "less than or equal to 65535" in res.output, res.output


def test_an_unexpected_error_is_one_line_unless_debug(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The console script's last line of defence: a bug shows as one line and exit 1; --debug
    (or REPRO_DEBUG=1) lets the traceback through."""
    import repro.cli as cli

    def boom(**_kw) -> None:
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setenv(cli.ENV_DEBUG, "")  # restored afterwards (main() sets it for --debug)
    monkeypatch.setattr(sys, "argv", ["repro", "train"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "RuntimeError: kaboom" in err and "second line" not in err, err
    assert "--debug" in err
    monkeypatch.setattr(sys, "argv", ["repro", "train", "--debug"])
    with pytest.raises(RuntimeError, match="kaboom"):
        cli.main()


def test_each_retry_against_a_gone_server_is_announced_and_the_end_is_one_line(monkeypatch, capsys) -> None:
    """A tracking server that stops answering mid-command: MLflow's retries are announced (the
    first at once, naming the server and the reason), and when they run out the command's error
    is one line that says what is kept and what to do."""
    import logging

    from repro.tracking import RetryAnnouncer, client, configure_store_logs, retry_text, server_gone

    pool = logging.getLogger("urllib3.connectionpool")
    monkeypatch.setattr(pool, "handlers", [h for h in pool.handlers if not isinstance(h, RetryAnnouncer)])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    configure_store_logs()
    configure_store_logs()  # idempotent: one announcer
    port = _closed_port()
    with pytest.raises(Exception) as caught:
        client(f"http://127.0.0.1:{port}").search_experiments()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, lines  # two retries, one line: at most one per 30 s per process
    assert f"the MLflow server 127.0.0.1:{port} is not answering (" in lines[0] and "Connection refused" in lines[0]
    assert "retrying /api/2.0/mlflow/experiments/search, 1 retry left" in lines[0], lines[0]
    message = server_gone(caught.value)
    assert message is not None and message.startswith(f"the MLflow server http://127.0.0.1:{port} stopped answering")
    assert "run the same command again" in message
    assert server_gone(RuntimeError("database is locked")) is None
    # A connection reset does not name its server: the line names the one this process talks to.
    from urllib3.exceptions import ProtocolError
    from urllib3.util.retry import Retry

    reset = ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    assert retry_text(Retry(total=5), reset, "/api/2.0/mlflow/runs/create").startswith(
        f"the MLflow server 127.0.0.1:{port} is not answering (Connection reset by peer); retrying")
    from urllib3.exceptions import ReadTimeoutError

    timeout = ReadTimeoutError(None, "/x", f"HTTPConnectionPool(host='127.0.0.1', port={port}): Read timed out. "
                                           "(read timeout=30)")
    assert f"127.0.0.1:{port} is not answering (Read timed out. (read timeout=30)); retrying" in \
        retry_text(Retry(total=1), timeout, "/x")
    gone = server_gone(RuntimeError("API request to http://user:secret@db.example:5000/api/2.0/mlflow/runs/create "
                                    "failed with exception HTTPConnectionPool(...)"))
    assert gone is not None and "secret" not in gone and "http://db.example:5000 stopped answering" in gone
