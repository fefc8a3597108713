"""Pre-trained checkpoints for the transfer and zero-shot arms: a run_key (or a path) -> a loaded
checkpoint, through a local cache beside the store that heals a damaged copy by fetching it
again, and errors that say which command re-creates a lost pre-training run."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from repro import schema, tracking
from repro.config import repro_home

_RUN_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
log = logging.getLogger("repro.train")


def is_run_key(text: str) -> bool:
    """Whether ``text`` has the form of a run_key (16 lowercase hex digits)."""
    return bool(_RUN_KEY_RE.match(text))


class CheckpointNotFound(ValueError):
    """``init_from`` names a run_key or path that has no usable checkpoint."""


def resolve_checkpoint(init_from: str, uri: str, cache_dir: Path | None = None, *, refetch: bool = False,
                       grid: str | None = None) -> Path:
    """Turn ``init_from`` (a checkpoint path or a run_key) into a local checkpoint file.

    A run_key's checkpoint is downloaded once into ``cache_dir`` (default: ``checkpoints/``
    beside a SQLite store, else ``<home>/checkpoints``) and reused: a grid fine-tunes from one pre-trained model
    many times, and an xl checkpoint is over 1 GB.  A FINISHED run's artifacts never change, so
    a cached copy that is not a whole checkpoint archive (truncated), or any cached copy with
    ``refetch`` (one that failed to load, see :func:`load_pretrained`), is fetched again from the
    artifact; the new download replaces the copy only once it is complete, so a copy is never
    lost to a failed download.

    Raises :class:`CheckpointNotFound` naming ``init_from`` when there is no such file or no
    FINISHED run with that key, or its checkpoint artifact is missing; the message says which
    commands re-create the pre-training run (``grid`` names the invocation's grid, else the
    pre-training run's own ``grid`` tag is used).
    """
    path = Path(init_from).expanduser()
    if path.is_file():
        return path
    if not is_run_key(init_from):
        raise CheckpointNotFound(f"pre-trained checkpoint {init_from!r}: no such file, and not a run_key (16 hex digits)")
    run_id = tracking.finished_run_id(uri, init_from)
    if run_id is None:
        raise CheckpointNotFound(f"pre-trained run {init_from}: no FINISHED run with this run_key in {uri}; "
                                 + recreate_hint(init_from, uri, None, grid))
    if cache_dir is None:
        db = tracking.sqlite_path(uri)
        store = db.parent if db is not None else repro_home()
        cache_dir = store / "checkpoints"
    target = Path(cache_dir) / init_from / run_id
    cached = target / schema.A_CHECKPOINT
    damaged = cached.is_file() and (refetch or not zipfile.is_zipfile(cached))
    if cached.is_file() and not damaged:
        return cached
    target.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        # Download beside the final place, then rename: concurrent workers never see half a file.
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target))
        local = Path(tracking.client(uri).download_artifacts(run_id, schema.A_CHECKPOINT, str(staging)))
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, cached)
    except Exception as err:  # noqa: BLE001 - any artifact-store error means "not usable"
        copy = f"; the cached copy {cached} is damaged" if damaged else ""
        raise CheckpointNotFound(f"pre-trained run {init_from} (MLflow run {run_id}): checkpoint artifact "
                                 f"{schema.A_CHECKPOINT} unreadable: {str(err).splitlines()[0]}{copy}; "
                                 + recreate_hint(init_from, uri, run_id, grid)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if damaged:
        log.warning("pre-trained run %s: cached checkpoint %s was damaged; fetched again from MLflow run %s",
                    init_from, cached, run_id)
    return cached


def load_pretrained(init_from: str, uri: str, cache_dir: Path | None = None, *, grid: str | None = None,
                    map_location: str = "cpu") -> Any:
    """:func:`resolve_checkpoint` + :func:`repro.models.checkpoint.load_checkpoint`; a cached copy
    of a run_key's checkpoint that fails to load is dropped and fetched again from the artifact
    (once).  A checkpoint path given directly is loaded as it is.

    Raises :class:`CheckpointNotFound` (as :func:`resolve_checkpoint`, or when the artifact
    fetched again does not load either, with the commands that re-create it) or
    :class:`repro.models.checkpoint.CheckpointError` (a path given directly does not load).
    """
    from repro.models.checkpoint import CheckpointError, load_checkpoint

    path = resolve_checkpoint(init_from, uri, cache_dir, grid=grid)
    try:
        return load_checkpoint(path, map_location=map_location)
    except CheckpointError as err:
        if Path(init_from).expanduser().is_file():  # the caller's own file: nothing to fetch again
            raise
        first = str(err).splitlines()[0]
    log.warning("%s; fetching it again from the pre-training run's artifact", first)
    path = resolve_checkpoint(init_from, uri, cache_dir, refetch=True, grid=grid)
    try:
        return load_checkpoint(path, map_location=map_location)
    except CheckpointError as err:
        run_id = tracking.finished_run_id(uri, init_from)
        raise CheckpointNotFound(f"pre-trained run {init_from} (MLflow run {run_id}): checkpoint artifact "
                                 f"{schema.A_CHECKPOINT} does not load even when fetched again "
                                 f"({str(err).splitlines()[0]}); "
                                 + recreate_hint(init_from, uri, run_id, grid)) from None


def recreate_hint(run_key: str, uri: str, run_id: str | None, grid: str | None = None) -> str:
    """The commands that re-create a pre-training run whose checkpoint is gone (one line).

    ``run-grid`` skips FINISHED run_keys, so a FINISHED run whose artifact is lost is deleted
    first (``mlflow runs delete``: the survey and :func:`finished_run_id` see active runs only);
    the grid is ``grid``, else the ``grid`` tag of any run with this key.
    """
    if grid is None:
        try:
            runs = tracking.client(uri).search_runs([tracking.experiment_id(uri)], max_results=20,
                                            filter_string=f"tags.{schema.T_RUN_KEY} = '{run_key}'")
            grid = next((r.data.tags[schema.T_GRID] for r in runs if r.data.tags.get(schema.T_GRID)), None)
        except Exception:  # noqa: BLE001 - a hint must never hide the real error
            grid = None
    rerun = f"repro run-grid --grid {grid or '<the grid that pre-trains it>'} --tracking-uri {uri}"
    if run_id is None:
        return f"re-create it with `{rerun}` (a grid trains its pre-training runs first)"
    return (f"re-create it with `MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {run_id}` "
            f"(run-grid skips FINISHED runs) then `{rerun}`")
