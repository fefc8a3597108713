"""A store on a read-only filesystem (WAL mode, as run-grid leaves it): status, fit-laws and export
read it; run-grid says why it cannot write.  A real read-only bind mount (skipped where mounting
is not allowed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthetic_store import QUICK_SHIFTS, SyntheticGrid, write_store
from repro.cli import app
from repro.grid import store

TINY = SyntheticGrid(name="tiny", shifts=QUICK_SHIFTS[:1], models=("xxs",), n_values=(8, 16, 32), lrs=(1e-3,),
                     seeds=(0, 1))


@pytest.fixture()
def read_only_store(tmp_path: Path):
    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    uri = f"sqlite:///{src / 'mlflow.db'}"
    write_store(uri, TINY)
    store.prepare_sqlite(uri)  # WAL, as the launcher leaves a store
    if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(src), str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield mnt / "mlflow.db"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_read_only_store_is_readable_and_run_grid_says_why_not(read_only_store: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{read_only_store}"
    runner = CliRunner()
    res = runner.invoke(app, ["fit-laws", "--grid", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "fit"),
                              "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fit" / "fits.csv").exists()
    res = runner.invoke(app, ["status", "--grid", "quick", "--tracking-uri", uri])
    assert res.exit_code == 0 and "0/42 finished" in res.output, res.output
    res = runner.invoke(app, ["run-grid", "--grid", "quick", "--tracking-uri", uri])
    assert res.exit_code == 2 and "is read-only" in res.output, res.output
