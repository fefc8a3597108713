"""`repro ui` as a user meets it: a real MLflow server over a real store, opened in headless
Chromium on the address the command prints — the runs table of the training experiment in the
UI's model-training mode, with the grid's key columns and every training run a row of its own
(issue 12: by default MLflow 3 opened on GenAI traces, showed no param or metric column and hid
the runs under collapsed parent rows)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from synthetic_store import QUICK_SHIFTS, SyntheticGrid, write_store

from repro import schema

CHROMIUM = Path("/usr/bin/chromium")
GRID = SyntheticGrid(name="ui", shifts=QUICK_SHIFTS[:1], models=("xxs",), n_values=(8, 16), lrs=(1e-3,), seeds=(0,),
                     n_failed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")
def test_ui_opens_on_the_runs_with_their_key_columns(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_store(uri, GRID)
    from repro import tracking

    runs = tracking.client(uri).search_runs([tracking.experiment_id(uri)])
    training = [r.info.run_name for r in runs if r.data.tags.get(schema.T_ROLE) != schema.ROLE_GRID]
    parents = [r.info.run_name for r in runs if r.data.tags.get(schema.T_ROLE) == schema.ROLE_GRID]
    assert training and parents
    env = {**os.environ, schema.ENV_HOME: str(tmp_path / "home")}
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # "starting ..." first, then the address once the server answers
            lines.append(line)
            if "ready:" in line:
                break
        # keep reading what the server logs, or a full pipe would stall it
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        assert lines[0].startswith("starting the MLflow UI"), lines
        url = lines[-1].split("ready:")[1].split()[0]
        assert "viewStateShareKey=" in url and "workflowType=machine_learning" in url, url
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 3200, "height": 900})  # ag-grid renders only visible columns
                page.goto(url)
                header = page.locator("[role=columnheader]")
                header.filter(has_text=schema.M_TEST_REL_L2).first.wait_for(timeout=60_000)
                names = " ".join(header.all_inner_texts())
                page.get_by_text(f"{len(training)} matching runs").wait_for(timeout=30_000)
                shown = page.locator("[role=gridcell]").all_inner_texts()
            finally:
                browser.close()
        # every training run is a row without a click; the grid's parent run is not one of them
        for name in training:
            assert any(name in cell for cell in shown), (name, shown)
        assert not any(parent in cell for parent in parents for cell in shown), shown
        for column in (schema.P_ARM, schema.P_N_TRAIN, schema.M_TEST_REL_L2):
            assert column in names, names
        # the role column tells a pre-training run from a downstream one (both have arm = scratch)
        assert schema.T_ROLE in names and any(schema.ROLE_PRETRAIN == cell.strip() for cell in shown), shown
    finally:
        proc.terminate()  # `repro ui` stops its server (and the server's workers) with it
        proc.wait(30)
    with socket.socket() as s:  # nothing is left listening on the port
        # SO_REUSEADDR: the browser's closed connections may leave the port in TIME_WAIT, which
        # is no listener; Linux still refuses the bind while any socket listens on it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
