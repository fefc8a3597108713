"""Export one grid's runs from any MLflow store into a new, portable SQLite store.

For sharing a grid's results (e.g. committing them under ``reports/``) or moving them off a
cluster's tracking server: the copy holds the grid's parent runs and every child run of its plan
with tags, params, full metric histories and statuses, so ``repro status``, ``fit-laws``,
``report`` and ``repro ui`` work on it as on the original.  Failed and killed runs are copied
too (failures are data).  Checkpoints and figures only with ``artifacts=True``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from repro import tracking
from repro.grid import store
from repro.grid.plan import Plan


@dataclass(frozen=True)
class ExportResult:
    path: Path
    n_parents: int
    n_runs: int


def grid_runs(plan: Plan, uri: str) -> tuple[list[Any], list[Any]]:
    """(parent runs, child runs) of ``plan`` in the store: children by planned run_key (also those
    finished under another grid that shares them), parents those children hang from."""
    children = [run for state in store.key_states(uri, plan.keys).values() for run in state.runs]
    parents = store.parents_of(uri, children)
    return sorted(parents.values(), key=lambda r: r.info.start_time), sorted(children, key=lambda r: r.info.start_time)


def export_grid(plan: Plan, src_uri: str, dst: Path, *, artifacts: bool = False,
                on_run: Callable[[], None] = lambda: None) -> ExportResult:
    """Copy ``plan``'s runs from ``src_uri`` into a new SQLite store at ``dst``.

    Raises
    ------
    tracking.StoreError
        ``dst`` exists (an export never overwrites a store) or the grid has no runs.
    """
    from repro import tracking

    dst = Path(dst)
    if dst.exists():
        raise tracking.StoreError(f"{dst}: already exists; an export never overwrites a store (choose a new path)")
    _check_writable_folder(dst)
    parents, children = grid_runs(plan, src_uri)
    if not children:
        raise tracking.StoreError(f"grid {plan.grid.label!r}: no runs in {src_uri}")
    # Written under a temporary name and renamed when complete: an interrupted export leaves no
    # half store at ``dst`` (and so never blocks the next attempt).  The name is new per attempt:
    # MLflow caches its database engine (and we the experiment id) per URI.
    folder = dst.resolve().parent
    for stale in folder.glob(f".{dst.name}.*.partial*"):  # left by a killed export (and its init lock)
        stale.unlink(missing_ok=True)
    partial = folder / f".{dst.name}.{uuid.uuid4().hex[:12]}.partial"
    dst_uri = f"sqlite:///{partial}"
    try:
        tracking.init_store(dst_uri)
        parent_ids: dict[str, str] = {}
        for run in parents:
            parent_ids[run.info.run_id] = tracking.copy_run(run, src_uri, dst_uri, parent_ids={}, artifacts=False)
            on_run()
        for run in children:
            tracking.copy_run(run, src_uri, dst_uri, parent_ids=parent_ids, artifacts=artifacts)
            on_run()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:  # the lock tracking.init_store took beside the new database
        partial.with_name(partial.name + ".init-lock").unlink(missing_ok=True)
    partial.replace(dst)
    return ExportResult(path=dst, n_parents=len(parents), n_runs=len(children))


def _check_writable_folder(dst: Path) -> None:
    """Refuse, before reading anything, a destination whose folder cannot hold a new file."""
    import os

    folder = dst.resolve().parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise tracking.StoreError(f"{dst}: {existing} is a file, not a folder")
    if existing is None or not os.access(existing, os.W_OK | os.X_OK) or str(existing).startswith(("/proc", "/sys")):
        raise tracking.StoreError(f"{dst}: cannot write in {existing or folder} (choose a writable folder)")

