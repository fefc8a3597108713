"""A store whose disk fills mid-grid (a real 1.5 MB tmpfs): run-grid stops with one clear line
naming the store, marks its own runs KILLED (with the space it held in reserve), and once space
is freed a re-run finishes the grid with one FINISHED run per run_key (skipped where mounting is
not allowed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid

from repro import schema, tracking

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _run_grid(grid: Path, uri: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPRO_HOME": str(home)}
    env.pop("REPRO_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "repro.cli", "run-grid", "--grid", str(grid), "--tracking-uri", uri,
                           "--workers", "2"], capture_output=True, text=True, env=env, timeout=600)


def test_a_full_disk_stops_the_grid_clearly_and_a_rerun_after_freeing_space_finishes_it(
        tmp_path: Path, small_disk: Path) -> None:
    grid = write_grid(tmp_path / "g.toml", "disk-full", n_train="[8, 16, 32, 64]", seeds="[0, 1, 2]", down="64")
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    full = _run_grid(grid, uri, tmp_path / "home")
    text = full.stdout + full.stderr
    assert full.returncode != 0
    assert "Traceback" not in text, text[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert "full" in last and uri in last and "run the grid again" in last, last
    # the launcher closed its own runs (with the space it held in reserve), not the next invocation
    assert "marked KILLED" in last and "could not be closed" not in last, last
    left = tracking.search_runs(uri, f"tags.`{schema.T_RUN_KEY}` != ''")
    assert left and not [r for r in left if r.info.status == schema.RUNNING]
    assert not list(small_disk.glob("*.reserve-*"))  # the reserve is given back

    # free space: the same store, on a disk with room
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True, capture_output=True)
    again = _run_grid(grid, uri, tmp_path / "home")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    runs = tracking.search_runs(uri, f"tags.`{schema.T_RUN_KEY}` != ''")
    finished = Counter(r.data.tags[schema.T_RUN_KEY] for r in runs if r.info.status == schema.FINISHED)
    assert finished and max(finished.values()) == 1  # no key trained twice
    assert not [r for r in runs if r.info.status == schema.RUNNING]
    parents = tracking.search_runs(uri, f"tags.`{schema.T_ROLE}` = '{schema.ROLE_GRID}'")
    assert not [p for p in parents if p.info.status == schema.RUNNING]
