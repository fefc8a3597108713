"""End to end, as a newcomer runs it: README's main job (`repro run-grid`, the quick grid) on a
fresh home directory, then `repro fit-laws` and `repro report` on what it recorded.

This is the real pipeline (spectral solves -> HDF5 -> training -> MLflow SQLite -> fits -> HTML)
with no fakes; it also checks the quick grid's promise that transfer beats scratch at the
smallest N on a physics shift.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.collect import collect_runs
from analysis.selection import downstream, select_lr
from repro import schema

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _repro(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, schema.ENV_HOME: str(home / ".repro")}
    env.pop(schema.ENV_TRACKING_URI, None)
    env.pop("REPRO_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], cwd=home, env=env, capture_output=True,
                          text=True, timeout=840)


def test_quick_grid_then_fit_laws_then_report(tmp_path: Path) -> None:
    grid = _repro("run-grid", home=tmp_path)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    assert "42/42 runs finished" in grid.stdout

    uri = f"sqlite:///{tmp_path / '.repro' / 'mlflow.db'}"
    runs = collect_runs(uri, "quick")
    assert len(runs) == 42 and (runs[schema.C_STATUS] == schema.FINISHED).all()
    best = select_lr(downstream(runs))
    at_8 = best[best[schema.P_N_TRAIN] == 8].groupby([schema.P_MODEL, schema.P_ARM])[schema.C_TEST_REL_L2].mean()
    assert at_8[("xs", "transfer")] < at_8[("xs", "scratch")], at_8

    again = _repro("run-grid", home=tmp_path)  # idempotent: nothing left to do
    assert again.returncode == 0 and "0 now, 42 before" in again.stdout, again.stdout[-2000:]

    fit = _repro("fit-laws", "--out", str(tmp_path / "fit"), home=tmp_path)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    result = json.loads((tmp_path / "fit" / "analysis.json").read_text())
    assert len(result["claims"]) == 6, result["claims"]
    # the quick grid's budgets are set so that both arms converge (issue 9 section 1)
    conv = (tmp_path / "fit" / "convergence.csv").read_text().splitlines()[1:]
    assert len(conv) == 2 and all(line.split(",")[2] == line.split(",")[3] for line in conv), conv

    report = _repro("report", "--out", str(tmp_path / "report"), home=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    html = (tmp_path / "report" / "index.html").read_text()
    assert '<svg class="figure"' in html and "claims" in html.lower()  # figures are inline SVG
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
