"""MLflow tracking: the only module that writes runs (docs/design.md §1).

Store: a SQLite database ``<REPRO_HOME or ./.repro>/mlflow.db`` by default, or any tracking URI
(``--tracking-uri`` / ``REPRO_TRACKING_URI``), e.g. an ``mlflow server`` for many hosts.  The
database must be initialised (:func:`init_store`) before parallel workers start: concurrent
first writers race on the schema migration.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from repro import __version__, schema
from repro.config import RunSpec, default_tracking_uri, flatten, repro_home, run_name  # noqa: F401 (re-exported)

#: MLflow's limit on one log_batch call (params + metrics + tags), minus headroom.
_BATCH_LIMIT = 900
#: How often buffered per-epoch metrics are flushed to the store (seconds).
_FLUSH_SECONDS = 15.0
_RUN_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
log = logging.getLogger("repro.train")


class CheckpointNotFound(ValueError):
    """``init_from`` names a run_key or path that has no usable checkpoint."""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def init_store(uri: str) -> str:
    """Create the store (schema migration) and the experiment; return the experiment id.

    Idempotent and cheap when the store exists.  Call once in the launcher before workers.
    """
    if not uri.startswith("sqlite:///"):
        return experiment_id(uri)  # a tracking server migrates its own database once, at start
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow migrates a new SQLite file on first contact; two processes doing so at once race
    # (alembic: "table ... already exists").  A lock file beside the database serialises them.
    import fcntl

    try:
        lock = open(db.with_name(db.name + ".init-lock"), "a")
    except OSError:  # a read-only folder: nothing will be migrated or created there anyway
        return experiment_id(uri)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return experiment_id(uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=16)
def experiment_id(uri: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(schema.EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    # With a SQLite store, keep artifacts (checkpoints) beside the database instead of
    # MLflow's default ./mlruns under whatever directory the process happens to run in.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(schema.EXPERIMENT, artifact_location=location,
                                        tags={_T_EXPERIMENT_KIND: _KIND_TRAINING})
    except Exception:  # another process created it between our two calls
        exp = client.get_experiment_by_name(schema.EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


#: MLflow 3's UI opens an experiment by its kind: without it, on an empty GenAI traces page.
_T_EXPERIMENT_KIND = "mlflow.experimentKind"
_KIND_TRAINING = "custom_model_development"


def mark_experiment_kind(uri: str) -> None:
    """Tag the experiment as model training (stores made before the tag was set at creation)."""
    client = _client(uri)
    exp = client.get_experiment(experiment_id(uri))
    if exp.tags.get(_T_EXPERIMENT_KIND) != _KIND_TRAINING:
        client.set_experiment_tag(exp.experiment_id, _T_EXPERIMENT_KIND, _KIND_TRAINING)


@functools.lru_cache(maxsize=1)
def provenance_tags() -> dict[str, str]:
    """git SHA + dirty flag of the source tree and package versions (as MLflow tags)."""
    tags: dict[str, str] = {}
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        tags[schema.T_GIT_SHA] = sha.stdout.strip() or "unknown"
        tags[schema.T_GIT_DIRTY] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        tags[schema.T_GIT_SHA] = "unknown"
        tags[schema.T_GIT_DIRTY] = "unknown"
    import mlflow
    import numpy
    import torch

    versions = {"repro": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                "mlflow": mlflow.__version__, "python": platform.python_version()}
    tags.update({f"{schema.T_VERSION_PREFIX}{k}": v for k, v in versions.items()})
    return tags


def start_parent_run(uri: str, *, grid: str, tags: Mapping[str, str] | None = None) -> str:
    """Open the parent run of one grid invocation; returns its run id."""
    client = _client(uri)
    run = client.create_run(experiment_id(uri), run_name=f"grid:{grid}",
                            tags={schema.T_GRID: grid, schema.T_ROLE: schema.ROLE_GRID, **(tags or {})})
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = schema.FINISHED) -> None:
    _client(uri).set_terminated(run_id, status=status)


@dataclass
class RunRecorder:
    """One child run in MLflow: spec as params, tags, buffered per-epoch metrics, final state.

    Per-epoch metrics are buffered and flushed every ``_FLUSH_SECONDS`` and at the end, so
    that hundreds of short runs do not hammer a shared SQLite file with tiny writes.
    """

    uri: str
    run_id: str
    _pending: list[Any] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, uri: str, spec: RunSpec, *, extra_params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> "RunRecorder":
        from mlflow.entities import Param

        client = _client(uri)
        all_tags = {schema.T_RUN_KEY: spec.run_key, **provenance_tags(), **(tags or {})}
        if parent_run_id:
            all_tags[schema.T_PARENT_RUN_ID] = parent_run_id
        run = client.create_run(experiment_id(uri), run_name=run_name(spec, all_tags.get(schema.T_ROLE)),
                                tags=all_tags)
        params = {**flatten(spec), **(extra_params or {})}
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_LIMIT):
            client.log_batch(run.info.run_id, params=items[i:i + _BATCH_LIMIT])
        return cls(uri=uri, run_id=run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        _client(self.uri).log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        _client(self.uri).log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        client = _client(self.uri)
        for i in range(0, len(self._pending), _BATCH_LIMIT):
            client.log_batch(self.run_id, metrics=self._pending[i:i + _BATCH_LIMIT])
        self._pending.clear()
        self._last_flush = time.monotonic()

    def log_final(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, 0) for k, v in metrics.items())
        self.flush()

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        _client(self.uri).log_artifact(self.run_id, str(local_path), artifact_path)

    def finish(self) -> None:
        self.flush()
        end_run(self.uri, self.run_id, schema.FINISHED)

    def fail(self, reason: str) -> None:
        """End the run as FAILED with a one-line ``failure_reason`` tag; never raises."""
        try:
            self.flush()
        except Exception:  # the reason matters more than the lost metrics
            self._pending.clear()
        client = _client(self.uri)
        client.set_tag(self.run_id, schema.T_FAILURE_REASON, reason.strip().splitlines()[0][:4000] if reason.strip() else "unknown")
        client.set_terminated(self.run_id, status=schema.FAILED)


def copy_run(run: Any, src_uri: str, dst_uri: str, *, parent_ids: Mapping[str, str],
             artifacts: bool = False) -> str:
    """Write ``run`` (an MLflow Run read from ``src_uri``) into ``dst_uri`` as a new run: tags,
    params, every metric's full history, status and times; returns the new run id.

    ``parent_ids`` maps source parent run ids to their copies (the parent tag is rewritten, so
    the copy's grid -> run tree holds).  With ``artifacts`` the run's files (checkpoint, figure)
    are copied too.
    """
    from mlflow.entities import Metric, Param

    src, dst = _client(src_uri), _client(dst_uri)
    tags = dict(run.data.tags)
    if schema.T_PARENT_RUN_ID in tags:
        tags[schema.T_PARENT_RUN_ID] = parent_ids.get(tags[schema.T_PARENT_RUN_ID], "")
    copy = dst.create_run(experiment_id(dst_uri), start_time=run.info.start_time, tags=tags,
                          run_name=run.info.run_name)
    new_id = copy.info.run_id
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in src.get_metric_history(run.info.run_id, key)]
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), 100):  # MLflow caps one batch at 100 params and 1000 metrics
        dst.log_batch(new_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        dst.log_batch(new_id, metrics=metrics[i:i + 1000])
    if artifacts and run.info.artifact_uri:
        with tempfile.TemporaryDirectory() as tmp:
            local = src.download_artifacts(run.info.run_id, "", tmp)
            if any(Path(local).iterdir()):
                dst.log_artifacts(new_id, local)
    dst.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    return new_id


def finished_run_id(uri: str, run_key: str) -> str | None:
    """The newest FINISHED run with this run_key, if any."""
    client = _client(uri)
    runs = client.search_runs([experiment_id(uri)],
                              filter_string=f"tags.{schema.T_RUN_KEY} = '{run_key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


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
    if not _RUN_KEY_RE.match(init_from):
        raise CheckpointNotFound(f"pre-trained checkpoint {init_from!r}: no such file, and not a run_key (16 hex digits)")
    run_id = finished_run_id(uri, init_from)
    if run_id is None:
        raise CheckpointNotFound(f"pre-trained run {init_from}: no FINISHED run with this run_key in {uri}; "
                                 + recreate_hint(init_from, uri, None, grid))
    if cache_dir is None:
        store = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else repro_home()
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
        local = Path(_client(uri).download_artifacts(run_id, schema.A_CHECKPOINT, str(staging)))
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
        run_id = finished_run_id(uri, init_from)
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
            runs = _client(uri).search_runs([experiment_id(uri)], max_results=20,
                                            filter_string=f"tags.{schema.T_RUN_KEY} = '{run_key}'")
            grid = next((r.data.tags[schema.T_GRID] for r in runs if r.data.tags.get(schema.T_GRID)), None)
        except Exception:  # noqa: BLE001 - a hint must never hide the real error
            grid = None
    rerun = f"repro run-grid --grid {grid or '<the grid that pre-trains it>'} --tracking-uri {uri}"
    if run_id is None:
        return f"re-create it with `{rerun}` (a grid trains its pre-training runs first)"
    return (f"re-create it with `MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {run_id}` "
            f"(run-grid skips FINISHED runs) then `{rerun}`")


def device_name(device: str) -> str:
    """Human device name for the ``device`` tag (GPU model on CUDA, CPU model otherwise)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"
