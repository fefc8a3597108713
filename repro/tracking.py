"""The MLflow gateway: every call to MLflow goes through this module (docs/design.md §1).

Client, experiment, the run recorder, failed-run records, run copies for export, searches and
the one :class:`StoreError`; the grid's liveness and claim rules (:mod:`repro.grid.store`) and
the analysis reader (:mod:`analysis.collect`, whose SQL fast path reads the database with
sqlite3 / SQLAlchemy directly) use it, and so does the tests' synthetic-store fixture.  An
import-linter contract keeps ``mlflow`` imports here.  Torch-free.

Store: a SQLite database ``<REPRO_HOME or ./.repro>/mlflow.db`` by default, or any tracking URI
(``--tracking-uri`` / ``REPRO_TRACKING_URI``), e.g. an ``mlflow server`` for many hosts.  The
database must be initialised (:func:`init_store`) before parallel workers start: concurrent
first writers race on the schema migration.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from repro import __version__, schema
from repro.config import RunSpec, default_tracking_uri, flatten, repro_home, run_name  # noqa: F401 (re-exported)

#: MLflow's limits on one log_batch call: 100 params (and 100 tags), 1000 metrics.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
#: How often buffered per-epoch metrics are flushed to the store (seconds).
_FLUSH_SECONDS = 15.0
log = logging.getLogger("repro.train")
_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The tracking store cannot be read or written (unreachable server, bad URI, no such store
    or grid); its message is one line for the CLI."""


#: What a store says when its disk is full (SQLite; a file artifact store; PostgreSQL).
_FULL = ("database or disk is full", "no space left on device", "could not extend file", "disk full")


def store_is_full(err: BaseException | str | None) -> bool:
    """Whether ``err`` (an exception and what it was raised from, or a worker's error text) says a
    disk is full.  Only the ``raise ... from`` chain counts, not an error met while handling one."""
    seen = 0
    while err is not None and seen < 8:
        text = str(err).lower()
        if any(marker in text for marker in _FULL) or getattr(err, "errno", None) == 28:  # ENOSPC
            return True
        if isinstance(err, str):
            return False
        err = err.__cause__
        seen += 1
    return False


def flush_async_logging() -> None:
    """Write out what MLflow's async logging queued, for a process about to leave with
    ``os._exit``.  Only when ``MLFLOW_ENABLE_ASYNC_LOGGING`` is on and MLflow is loaded: otherwise
    nothing is queued, and MLflow's flush would open its default store (2.6 s)."""
    import sys

    if "mlflow" not in sys.modules:
        return
    from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING

    if MLFLOW_ENABLE_ASYNC_LOGGING.get():
        import mlflow

        mlflow.flush_async_logging()


def configure_store_logs() -> None:
    """Store logs for a command-line process (the CLI, and every local grid worker; a SLURM array
    task runs its share in-process and calls it too).

    MLflow logs a full traceback (at ERROR) for every failed SQL commit before it raises; the
    error itself reaches the user as one line, so that log stays off the console (--debug keeps
    it).  And each retry of an HTTP request to a tracking server becomes one warning line
    (:class:`RetryAnnouncer`): a server that stops answering mid-grid is minutes of MLflow's
    patient retries, which must not be minutes of silence.
    """
    if not os.environ.get(schema.ENV_DEBUG):
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    pool = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(h, RetryAnnouncer) for h in pool.handlers):
        pool.addHandler(RetryAnnouncer())


class RetryAnnouncer(logging.Handler):
    """A stderr line when an HTTP request to the tracking server is retried (urllib3 logs
    "Retrying (Retry(total=K, ...)) after connection broken by 'ERROR': PATH" at WARNING, and
    nothing shows it), naming the server, the reason and the retries left: the first retry at
    once, then at most one line per :data:`EVERY_S` per process (a grid's launcher and workers
    all retry at once; one line each is enough to say why nothing moves)."""

    EVERY_S = 30.0

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._last = -math.inf
        self._since = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not (isinstance(record.args, tuple) and len(record.args) == 3 and "Retrying" in str(record.msg)):
            return
        self._since += 1
        now = time.monotonic()
        if now - self._last < self.EVERY_S:
            return
        retry, err, path = record.args
        more = f" [{self._since} retries in this process since the last line]" if self._since > 1 else ""
        self._last, self._since = now, 0
        try:
            import sys

            sys.stderr.write(f"warning: {retry_text(retry, err, path)}{more}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a log line must never break the request it describes
            pass


def retry_text(retry: Any, err: BaseException, path: str) -> str:
    """"the MLflow server HOST:PORT is not answering (REASON); retrying PATH, N retries left"."""
    import re

    text = str(err)
    where = re.search(r"host='([^']+)', port=(\d+)", text)
    named = f"{where.group(1)}:{where.group(2)}" if where else None
    if named is None:  # a connection reset names no server: it is this process's tracking server
        server = f"the MLflow server {_last_server or '(its address unknown)'}"
    elif _last_server in (None, named):
        server = f"the MLflow server {named}"
    else:  # another host (an artifact store behind the server, say) is not called MLflow's
        server = f"the server {named}"
    left = getattr(retry, "total", None)
    retries = f", {left} {'retry' if left == 1 else 'retries'} left" if isinstance(left, int) else ""
    return (f"{server} is not answering ({_retry_reason(err)}); retrying {path}{retries} "
            f"(nothing recorded is lost; the command goes on when it answers)")


def _retry_reason(err: BaseException) -> str:
    """The human part of a urllib3 connection error: "[Errno 111] Connection refused", "Read timed
    out. (read timeout=30)", "Connection reset by peer"."""
    text = str(err)
    args = getattr(err, "args", ())
    inner = next((a for a in reversed(args) if isinstance(a, BaseException)), None)
    if inner is not None:  # ProtocolError('Connection aborted.', ConnectionResetError(104, '...'))
        return getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    if ": " in text:  # "HTTPConnectionPool(host=..., port=...): Read timed out. (read timeout=30)"
        return text.rsplit(": ", 1)[-1].strip(" '\"")
    message = next((a for a in reversed(args) if isinstance(a, str)), None)  # ConnectTimeoutError(conn, "...")
    return message or type(err).__name__


def server_gone(err: BaseException) -> str | None:
    """The one-line error for a command whose tracking server stopped answering after MLflow's
    retries (None for any other error)."""
    import re

    text = str(err)
    found = re.match(r"API request to (\S+) failed with (?:timeout )?exception", text)
    if found is None:
        return None
    from urllib.parse import urlsplit

    url = urlsplit(found.group(1))
    reason = "it did not answer in time" if "timeout exception" in text else "it cannot be reached"
    return (f"the MLflow server {url.scheme}://{_without_password(url.netloc)} stopped answering ({reason}, after MLflow's retries); "
            f"what finished is kept there: run the same command again when the server is back")


def client(uri: str):
    """An MLflow client on ``uri`` (cheap: MLflow caches the store behind it)."""
    from mlflow.tracking import MlflowClient

    _note_server(uri)
    return MlflowClient(tracking_uri=uri)


#: ``HOST:PORT`` of the last tracking server this process opened a client on: a retry whose error
#: does not name its server (a connection reset, a read timeout) is announced under this name.
_last_server: str | None = None


def is_tracking_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (http/https), not a local store."""
    return uri.startswith(("http://", "https://"))


def _note_server(uri: str) -> None:
    global _last_server
    from urllib.parse import urlsplit

    netloc = urlsplit(uri).netloc
    if is_tracking_server(uri) and netloc:
        _last_server = _without_password(netloc)


def _without_password(netloc: str) -> str:
    """``HOST:PORT`` of a URL's network location: never a ``user:password@`` into a message."""
    return netloc.rsplit("@", 1)[-1]


def retrying(fn: Callable[[], _T], *, attempts: int = 12, what: str = "MLflow call") -> _T:
    """Call ``fn`` again (with backoff) when a shared SQLite store says "database is locked".

    SQLite serialises writers; under many concurrent workers a write can time out even in WAL
    mode.  Any other error propagates at once.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - only lock contention is retried
            text = str(err).lower()
            if attempt == attempts - 1 or not ("database is locked" in text or "database table is locked" in text
                                               or "busy" in text):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def search_runs(uri: str, filter_string: str, *, max_results: int = 5000) -> list[Any]:
    """Every (not deleted) run of the project's experiment matching ``filter_string``."""
    c = client(uri)
    exp = experiment_id(uri)
    out: list[Any] = []
    token = None
    while True:
        page = retrying(lambda: c.search_runs([exp], filter_string=filter_string, max_results=max_results,
                                              page_token=token))
        out.extend(page)
        token = page.token
        if not token:
            return out


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags of one run in one call."""
    from mlflow.entities import RunTag

    c = client(uri)
    retrying(lambda: c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def record_failed(uri: str, spec: RunSpec, reason: str, *, grid: str, role: str, parent_run_id: str | None) -> str:
    """Record a run that was never launched (its pre-training or dataset failed) as FAILED.

    Same params and tags as the engine's runs, so analysis lists it among the exclusions.
    """
    from mlflow.entities import Param, RunTag

    c = client(uri)
    tags = {schema.T_RUN_KEY: spec.run_key, schema.T_GRID: grid, schema.T_ROLE: role,
            schema.T_FAILURE_REASON: reason[:4000]}
    if parent_run_id:
        tags[schema.T_PARENT_RUN_ID] = parent_run_id
    # A locked SQLite store created nothing, so retrying the whole creation cannot make a twin.
    rid = retrying(lambda: create_run_once(uri, run_name(spec, role), tags))
    params = [Param(k, str(v)) for k, v in flatten(spec).items()]
    for i in range(0, len(params), _PARAMS_PER_BATCH):
        batch = params[i:i + _PARAMS_PER_BATCH]
        retrying(lambda: c.log_batch(rid, params=batch))
    retrying(lambda: c.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()]))
    retrying(lambda: c.set_terminated(rid, status=schema.FAILED))
    return rid


def create_run_once(uri: str, name: str, tags: Mapping[str, str]) -> str:
    """Create a run in the project's experiment and return its id, leaving no twin behind.

    MLflow retries every request to a tracking server, ``runs/create`` included: a server that
    committed the run and then lost the connection (killed, restarted, a proxy timeout) gets the
    request again and creates a second run.  The first is nobody's -- no id came back for it -- yet
    it carries the run_key and a live owner, so a claim (:func:`repro.grid.store.claim`) would see
    it as a rival that sorts first and give the key up.  So each creation carries a fresh
    :data:`schema.T_CREATE_TOKEN`, and on a server store (SQLite cannot half-commit) the runs with
    it other than the one returned are deleted at once (one search per run created); a twin
    committed after that search is the claim's to drop (``store._without_twins``).
    """
    token = uuid.uuid4().hex
    c = client(uri)
    run_id = c.create_run(experiment_id(uri), run_name=name, tags={**tags, schema.T_CREATE_TOKEN: token}).info.run_id
    if is_tracking_server(uri):
        try:
            for twin in search_runs(uri, f"tags.`{schema.T_CREATE_TOKEN}` = '{token}'"):
                if twin.info.run_id != run_id:
                    c.delete_run(twin.info.run_id)
        except Exception as err:  # noqa: BLE001 - extra care: the run itself exists and is good
            log.warning("could not look for a twin of run %s (%s); a claim still drops one it meets", run_id, err)
    return run_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for any other store)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]) if uri.startswith("sqlite:///") else None


def init_store(uri: str) -> str:
    """Create the store (schema migration) and the experiment; return the experiment id.

    Idempotent and cheap when the store exists.  Call once in the launcher before workers.
    """
    db = sqlite_path(uri)
    if db is None:
        return experiment_id(uri)  # a tracking server migrates its own database once, at start
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
            if not db.exists():
                _place_migrated_schema(db)
            return experiment_id(uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: Environment variable: ``0`` makes every new SQLite store run MLflow's own migrations (no template).
ENV_SCHEMA_TEMPLATE = "REPRO_SCHEMA_TEMPLATE"


def _place_migrated_schema(db: Path) -> bool:
    """Start a new SQLite store as a copy of an empty one migrated to this MLflow's schema head.

    MLflow migrates a new database through ~50 alembic revisions on first contact: 1.5-2 s of every
    fresh store, paid again by every test and every new ``REPRO_HOME``.  The migrated result depends
    only on the schema head, so it is made once (by MLflow itself, in :func:`_schema_template`) and
    copied; MLflow then finds its schema at head and migrates nothing.  The copy's Default
    experiment gets the current time and the artifact location MLflow would give it here.  Returns
    whether ``db`` was placed; on any failure it stays absent and MLflow creates it as before
    (``REPRO_SCHEMA_TEMPLATE=0``: always).  Called under :func:`init_store`'s lock.
    """
    import contextlib
    import sqlite3

    if os.environ.get(ENV_SCHEMA_TEMPLATE, "1") == "0":
        return False
    template = _schema_template()
    if template is None:
        return False
    for stale in db.parent.glob(f".{db.name}.*.new"):  # left by a process killed while copying
        stale.unlink(missing_ok=True)
    staged = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        with contextlib.closing(sqlite3.connect(template.as_uri() + "?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(staged)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # every byte in the one file that is linked
            now = int(time.time() * 1000)
            dst.execute("UPDATE experiments SET creation_time = ?, last_update_time = ?", (now, now))
            dst.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (str(Path("mlruns").resolve() / "0"),))  # MLflow's default root: ./mlruns here
            dst.commit()
        os.link(staged, db)  # never over a store that appeared meanwhile (FileExistsError)
        return True
    except (OSError, sqlite3.Error) as err:
        log.debug("schema template not used for %s: %s", db, err)
        return False
    finally:
        staged.unlink(missing_ok=True)


def _schema_template() -> Path | None:
    """An empty SQLite store migrated by the installed MLflow, cached per schema head (the alembic
    revision, not the version string: a development build can add migrations under one version)
    under ``$XDG_CACHE_HOME/repro`` (default ``~/.cache/repro``); ``None`` where it cannot be made."""
    import contextlib
    import sqlite3

    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = _get_latest_schema_revision()
    except Exception as err:  # noqa: BLE001 - MLflow moved its internals: migrate as before
        log.debug("no MLflow schema head: %s", err)
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repro"
    template = cache / f"mlflow-schema-{head}.db"
    if template.is_file():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            made = Path(tmp) / "made.db"
            client(f"sqlite:///{made}").search_experiments(max_results=1)  # MLflow migrates it
            staged = Path(tmp) / "template.db"
            with contextlib.closing(sqlite3.connect(made)) as src, contextlib.closing(sqlite3.connect(staged)) as dst:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                (version,) = dst.execute("SELECT version_num FROM alembic_version").fetchone()
            if version != head:
                raise RuntimeError(f"MLflow migrated a new store to {version}, not its head {head}")
            os.replace(staged, template)
        return template
    except Exception as err:  # noqa: BLE001 - a read-only home, a full disk: migrate as before
        log.debug("no MLflow schema template: %s", err)
        return None


@functools.lru_cache(maxsize=16)
def experiment_id(uri: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(schema.EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    # With a SQLite store, keep artifacts (checkpoints) beside the database instead of
    # MLflow's default ./mlruns under whatever directory the process happens to run in.
    db = sqlite_path(uri)
    location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
    try:
        return c.create_experiment(schema.EXPERIMENT, artifact_location=location,
                                        tags={_T_EXPERIMENT_KIND: _KIND_TRAINING})
    except Exception:  # another process created it between our two calls
        exp = c.get_experiment_by_name(schema.EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


#: MLflow 3's UI opens an experiment by its kind: without it, on an empty GenAI traces page.
_T_EXPERIMENT_KIND = "mlflow.experimentKind"
_KIND_TRAINING = "custom_model_development"


def mark_experiment_kind(uri: str) -> None:
    """Tag the experiment as model training (stores made before the tag was set at creation)."""
    c = client(uri)
    exp = c.get_experiment(experiment_id(uri))
    if exp.tags.get(_T_EXPERIMENT_KIND) != _KIND_TRAINING:
        c.set_experiment_tag(exp.experiment_id, _T_EXPERIMENT_KIND, _KIND_TRAINING)


#: The MLflow UI's shared views (MLflow >= 2.10, read off the 3.17 UI): an experiment tag
#: ``mlflow.sharedViewState.<key>`` holding the runs table's state as JSON, opened with
#: ``?viewStateShareKey=<key>``.  Without it the UI shows no param or metric column at all.
_T_SHARED_VIEW = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "repro-runs"
#: What a user of a grid compares first: the run's role (a pre-training run's arm reads "scratch":
#: it trains from scratch), its place in the grid, then its errors.
RUNS_VIEW_COLUMNS = (f"tags.`{schema.T_ROLE}`",) + tuple(
    f"params.`{k}`" for k in (schema.P_ARM, schema.P_DATA_PDE, schema.P_DATA_LOW, schema.P_DATA_HIGH,
                              schema.P_MODEL, schema.P_N_TRAIN, schema.P_LR, schema.P_SEED)) + tuple(
    f"metrics.`{k}`" for k in (schema.M_BEST_VAL_REL_L2, schema.M_TEST_REL_L2, schema.M_CONVERGED))


#: The training runs without their grid-invocation parents.
RUNS_VIEW_FILTER = f"tags.{schema.T_ROLE} != '{schema.ROLE_GRID}'"
#: Sorted by run name (arm, task, model, N, lr, seed): the 3.17 UI nests child runs under a
#: collapsed parent row whenever the table is sorted by date (or unsorted and unfiltered), and a
#: shared view cannot keep rows expanded (3.17 drops ``runsExpanded`` from it); sorted by any
#: other key it lists every run as a row of its own.
RUNS_VIEW_ORDER = "tags.`mlflow.runName`"
#: MLflow 3's UI has two modes, GenAI and model training, chosen by this URL parameter (else by
#: the browser's last choice, GenAI on a first visit); the experiment kind alone does not switch it.
_UI_WORKFLOW = "workflowType=machine_learning"


def set_runs_view(uri: str) -> str:
    """Store the runs view repro opens the UI on (the key columns, every training run a row,
    sorted by name); returns the URL query that opens it in the UI's model-training mode."""
    state = json.dumps({"orderByKey": RUNS_VIEW_ORDER, "orderByAsc": True, "searchFilter": RUNS_VIEW_FILTER,
                        "selectedColumns": list(RUNS_VIEW_COLUMNS)})
    c, exp, tag = client(uri), experiment_id(uri), _T_SHARED_VIEW + RUNS_VIEW_KEY
    if c.get_experiment(exp).tags.get(tag) != state:  # written once: opening a store stays a read
        retrying(lambda: c.set_experiment_tag(exp, tag, state), what="storing the runs view")
    return f"viewStateShareKey={RUNS_VIEW_KEY}&{_UI_WORKFLOW}"


@functools.lru_cache(maxsize=1)
def provenance_tags() -> dict[str, str]:
    """git SHA + dirty flag of the source tree and package versions (as MLflow tags)."""
    tags: dict[str, str] = {}
    root = Path(__file__).resolve().parents[1]  # the source tree: repro/tracking.py -> project root
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        tags[schema.T_GIT_SHA] = sha.stdout.strip() or "unknown"
        tags[schema.T_GIT_DIRTY] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        tags[schema.T_GIT_SHA] = "unknown"
        tags[schema.T_GIT_DIRTY] = "unknown"
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:  # read from the installed metadata: the gateway never imports torch
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    versions = {"repro": __version__, "torch": installed("torch"), "numpy": installed("numpy"),
                "mlflow": installed("mlflow"), "python": platform.python_version()}
    tags.update({f"{schema.T_VERSION_PREFIX}{k}": v for k, v in versions.items()})
    return tags


def start_parent_run(uri: str, *, grid: str, tags: Mapping[str, str] | None = None) -> str:
    """Open the parent run of one grid invocation; returns its run id."""
    c = client(uri)
    run = c.create_run(experiment_id(uri), run_name=f"grid:{grid}",
                            tags={schema.T_GRID: grid, schema.T_ROLE: schema.ROLE_GRID, **(tags or {})})
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = schema.FINISHED) -> None:
    client(uri).set_terminated(run_id, status=status)


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

        c = client(uri)
        all_tags = {schema.T_RUN_KEY: spec.run_key, **provenance_tags(), **(tags or {})}
        if parent_run_id:
            all_tags[schema.T_PARENT_RUN_ID] = parent_run_id
        run_id = create_run_once(uri, run_name(spec, all_tags.get(schema.T_ROLE)), all_tags)
        params = {**flatten(spec), **(extra_params or {})}
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            c.log_batch(run_id, params=items[i:i + _PARAMS_PER_BATCH])
        return cls(uri=uri, run_id=run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        client(self.uri).log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        client(self.uri).log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        c = client(self.uri)
        for i in range(0, len(self._pending), _METRICS_PER_BATCH):
            c.log_batch(self.run_id, metrics=self._pending[i:i + _METRICS_PER_BATCH])
        self._pending.clear()
        self._last_flush = time.monotonic()

    def log_final(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, 0) for k, v in metrics.items())
        self.flush()

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        client(self.uri).log_artifact(self.run_id, str(local_path), artifact_path)

    def finish(self) -> None:
        self.flush()
        end_run(self.uri, self.run_id, schema.FINISHED)

    def fail(self, reason: str) -> None:
        """End the run as FAILED with a one-line ``failure_reason`` tag; never raises."""
        try:
            self.flush()
        except Exception:  # the reason matters more than the lost metrics
            self._pending.clear()
        c = client(self.uri)
        c.set_tag(self.run_id, schema.T_FAILURE_REASON, reason.strip().splitlines()[0][:4000] if reason.strip() else "unknown")
        c.set_terminated(self.run_id, status=schema.FAILED)


def copy_run(run: Any, src_uri: str, dst_uri: str, *, parent_ids: Mapping[str, str],
             artifacts: bool = False) -> str:
    """Write ``run`` (an MLflow Run read from ``src_uri``) into ``dst_uri`` as a new run: tags,
    params, every metric's full history, status and times; returns the new run id.

    ``parent_ids`` maps source parent run ids to their copies (the parent tag is rewritten, so
    the copy's grid -> run tree holds).  With ``artifacts`` the run's files (checkpoint, figure)
    are copied too.
    """
    from mlflow.entities import Metric, Param

    src, dst = client(src_uri), client(dst_uri)
    tags = dict(run.data.tags)
    if schema.T_PARENT_RUN_ID in tags:
        tags[schema.T_PARENT_RUN_ID] = parent_ids.get(tags[schema.T_PARENT_RUN_ID], "")
    copy = dst.create_run(experiment_id(dst_uri), start_time=run.info.start_time, tags=tags,
                          run_name=run.info.run_name)
    new_id = copy.info.run_id
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in src.get_metric_history(run.info.run_id, key)]
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), _PARAMS_PER_BATCH):
        dst.log_batch(new_id, params=params[i:i + _PARAMS_PER_BATCH])
    for i in range(0, len(metrics), _METRICS_PER_BATCH):
        dst.log_batch(new_id, metrics=metrics[i:i + _METRICS_PER_BATCH])
    if artifacts and run.info.artifact_uri:
        with tempfile.TemporaryDirectory() as tmp:
            local = src.download_artifacts(run.info.run_id, "", tmp)
            if any(Path(local).iterdir()):
                dst.log_artifacts(new_id, local)
    dst.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    return new_id


def finished_run_id(uri: str, run_key: str) -> str | None:
    """The newest FINISHED run with this run_key, if any."""
    c = client(uri)
    runs = c.search_runs([experiment_id(uri)],
                              filter_string=f"tags.{schema.T_RUN_KEY} = '{run_key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
