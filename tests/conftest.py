"""Shared test helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

#: Settings of the tiny one-shift grid the grid tests run (16^2, xxs, a few epochs).
TINY_GRID = dict(resolution=16, models='["xxs"]', n_train="[8, 16]", arms='["scratch", "transfer", "zero_shot"]',
            lrs="[3e-3]", seeds="[0]", up="64", down="16", pre_epochs=3, ft_epochs=3)


def write_grid(path: Path, label: str, **over) -> Path:
    """Write a tiny poisson(1,5) -> poisson(5,10) grid TOML; ``over`` replaces TINY_GRID entries."""
    p = {**TINY_GRID, **over}
    path.write_text(textwrap.dedent(f"""
        label = "{label}"
        resolution = {p['resolution']}
        models = {p['models']}
        n_train = {p['n_train']}
        arms = {p['arms']}
        lrs = {p['lrs']}
        seeds = {p['seeds']}
        batch_size = 16
        [upstream]
        n_train = {p['up']}
        n_val = 16
        n_test = 16
        [downstream]
        n_train = {p['down']}
        n_val = 16
        n_test = 16
        [pretrain]
        epochs = {p['pre_epochs']}
        lr = 3e-3
        [finetune]
        epochs = {p['ft_epochs']}
        [[shifts]]
        upstream = "poisson(1,5)"
        downstream = "poisson(5,10)"
        """))
    return path


@pytest.fixture(autouse=True)
def _no_outside_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MLFLOW_TRACKING_URI / REPRO_TRACKING_URI never reaches a test (or the
    processes it starts): every test picks its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("REPRO_TRACKING_URI", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory):
    """The suite (and every process it starts) keeps its MLflow schema template in a folder of its
    own, made once per session: never the developer's ~/.cache/repro, so a stale copy there cannot
    fail the suite, and the suite cannot write one there."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


#: The test files that take longest, heaviest first (seconds of one run on 2 idle cores, 2026-12-04).
#: Files go to the two test processes in collection order (pyproject: ``--no-loadscope-reorder``;
#: xdist's own order, by number of tests, silently put the single 4.5-minute quick-grid test last):
#: longest first, the short files fill the gaps at the end.  Measured: 644 s (xdist's order) vs
#: 635 s (this one) -- the suite is CPU-bound on 2 cores, so the order moves little; what it buys is
#: a predictable schedule.
HEAVIEST_FIRST = (
    "tests/test_e2e.py",                               # 273
    "tests/test_grid_run.py",                          # 176
    "tests/adversarial/test_concurrent_launchers.py",  # 98
    "tests/adversarial/test_server_restart.py",        # 87
    "tests/test_paper_grids.py",                       # 60
    "tests/test_grid_postgres.py",                     # 53
    "tests/test_analysis_e2e.py",                      # 40
    "tests/test_train.py",                             # 38
    "tests/adversarial/test_disk_full.py",             # 38
    "tests/test_committed_reports.py",                 # 36
    "tests/test_ui.py",                                # 33
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest test files first (:data:`HEAVIEST_FIRST`), the rest in collection order."""
    rank = {path: i for i, path in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
