"""The committed example results reproduce from their committed MLflow stores.

``reports/<grid>/mlflow.db.gz`` is the exported store of a finished grid; the CSV/JSON files and
``index.html`` beside it were regenerated from it with (README "Results"):

    gunzip -k reports/quick/mlflow.db.gz
    repro fit-laws --tracking-uri sqlite:///reports/quick/mlflow.db --grid quick --out reports/quick
    repro report   --tracking-uri sqlite:///reports/quick/mlflow.db --grid quick --out reports/quick

Re-running the analysis on the store must give the committed verdicts and numbers: a change to the
fits, the rules or the store that moves them has to regenerate the example.  The numbers are compared
to 1e-9; the claim texts word for word, except that a printed number (3 significant digits) may
differ in its last digit: another numpy/scipy build moves a bootstrap quantile by ~1e-11, which flips
the rounding of a value that sits on a rounding boundary (seen: 0.0750 printed as 0.075 or 0.0751).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis.analyze import analyze
from analysis.claims import claims_frame
from analysis.collect import collect_runs
from repro.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[1] / "reports"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def assert_same_text(got: str, want: str) -> None:
    """Equal words; numbers equal up to one unit in the last printed place (integers exactly)."""
    assert _NUMBER.sub("#", got) == _NUMBER.sub("#", want), (got, want)
    for g, w in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if "e" in g + w:  # 3 significant digits in exponent form
            assert float(g) == pytest.approx(float(w), rel=1e-2), (g, w, got)
            continue
        places = max(len(x.split(".")[1]) if "." in x else 0 for x in (g, w))
        assert abs(float(g) - float(w)) <= 10.0 ** -places * (1 + 1e-9), (g, w, got)
GRIDS = sorted(p.parent.name for p in ROOT.glob("*/mlflow.db.gz"))


@pytest.mark.parametrize("grid", GRIDS)
def test_committed_report_reproduces_from_its_store(grid: str, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with gzip.open(ROOT / grid / "mlflow.db.gz", "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    runs = collect_runs(f"sqlite:///{db}", grid, expand(load_grid(grid)).roles)
    result = analyze(runs, workers=1)
    committed = json.loads((ROOT / grid / "analysis.json").read_text())
    got = claims_frame(result.claims)
    assert got["verdict"].tolist() == [c["verdict"] for c in committed["claims"]]
    for text, c in zip(got["summary"].tolist(), committed["claims"], strict=True):
        assert_same_text(text, c["summary"])
    want = pd.read_csv(ROOT / grid / "transfer_summary.csv")
    # Not bit-equality: the fits are iterative optimisations.  The point fits are solved tightly
    # (another machine's BLAS moved one crossing level by 2e-9, relative); the bootstrap replicates
    # are refitted stacked to ftol 1e-9, which analysis.fits promises within 0.1 % of one-by-one
    # fits, and an AMD EPYC moved an interval end by 2e-4 from the Intel machine that wrote it.
    for col, rel in (("eps", 1e-6), ("multiplier", 1e-6), ("multiplier_lo", 1e-3), ("multiplier_hi", 1e-3)):
        assert result.transfer_summary[col].to_numpy() == pytest.approx(want[col].to_numpy(), rel=rel), col
    conv = pd.read_csv(ROOT / grid / "convergence.csv")
    assert result.convergence["converged"].tolist() == conv["converged"].tolist()
