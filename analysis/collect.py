"""Collect: MLflow -> one tidy pandas DataFrame, one row per child run, schema-named columns.

Only the latest value of each metric is read (MLflow's ``latest_metrics``), never per-epoch
histories.  Two readers give the same frame:

- SQL stores (``sqlite:///``, ``postgresql://``, ``mysql://``): four set-based queries on
  MLflow's own tables (runs, tags, params, latest_metrics) through SQLAlchemy + pandas.
  Measured on 10,500 runs: ~1 s, against ~30 s for ``MlflowClient.search_runs``, which builds
  one Python ``Run`` object per run (the issue's budget for the whole of fit-laws is 30 s).
- any other tracking URI (an ``mlflow server``): ``MlflowClient.search_runs``, page by page.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from repro import schema, tracking
from repro.tracking import StoreError  # the gateway's one store error, raised here for no runs to analyse
from repro.config import DatasetSpec, SpecError, default_tracking_uri  # noqa: F401 (one default for writer and readers)

#: Params parsed as integers / floats; every other param stays a string.
INT_PARAMS: tuple[str, ...] = (
    schema.P_N_TRAIN, schema.P_EPOCHS, schema.P_BATCH_SIZE, schema.P_SEED, schema.P_EVAL_EVERY,
    schema.P_DATA_RESOLUTION, schema.P_DATA_N_TRAIN, schema.P_DATA_N_VAL, schema.P_DATA_N_TEST,
    schema.P_DATA_SEED, schema.P_WIDTH, schema.P_N_MODES, schema.P_IN_CHANNELS,
)
FLOAT_PARAMS: tuple[str, ...] = (
    schema.P_LR, schema.P_DATA_LOW, schema.P_DATA_HIGH, schema.P_UPSTREAM_LOW, schema.P_UPSTREAM_HIGH,
)
STR_PARAMS: tuple[str, ...] = (
    schema.P_ARM, schema.P_MODEL, schema.P_LAYOUT, schema.P_INIT_FROM, schema.P_DATA_PDE,
    schema.P_UPSTREAM_PDE, schema.P_FAST, schema.P_SPECTRAL, schema.P_PRECISION, schema.P_DATA_STREAM,
    schema.P_DATA_PSI_TARGETING,
)
#: Final (single-value) metrics kept as columns.
FINAL_METRICS: tuple[str, ...] = (
    schema.M_TEST_REL_L2, schema.M_BEST_VAL_REL_L2, schema.M_BEST_EPOCH, schema.M_WALL_SECONDS,
    schema.M_SAMPLES_PER_SECOND, schema.M_GPU_SECONDS, schema.M_N_PARAMS,
    # convergence of trained runs (missing for zero-shot) and compute per run (issue 9 §1)
    schema.M_LATE_IMPROVEMENT, schema.M_CONVERGED, schema.M_SAMPLE_STEPS, schema.M_FLOPS, schema.M_PRETRAIN_FLOPS,
)
TAGS: tuple[str, ...] = (
    schema.T_RUN_KEY, schema.T_GRID, schema.T_ROLE, schema.T_SHIFT, schema.T_GIT_SHA, schema.T_GIT_DIRTY,
    schema.T_DEVICE, schema.T_FAILURE_REASON, schema.T_CONVERGENCE_REASON,
)
#: Every column of the collected frame, in order.
COLUMNS: tuple[str, ...] = (
    schema.C_RUN_ID, schema.C_PARENT_RUN_ID, schema.C_STATUS, schema.C_START_TIME, schema.C_TASK,
    schema.C_UPSTREAM, *TAGS, *STR_PARAMS, *INT_PARAMS, *FLOAT_PARAMS, *FINAL_METRICS,
)

#: Rows per search page (MLflow's SQL store allows up to 50,000).
_PAGE = 5000


def latest_per_run_key(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run_key (the last one of the frame), rows without a run_key dropped."""
    return df.dropna(subset=[schema.C_RUN_KEY]).drop_duplicates(schema.C_RUN_KEY, keep="last")


def _client(tracking_uri: str) -> Any:
    """The gateway's client, once a SQLite store is known to exist (reading creates nothing)."""
    if tracking_uri.startswith("sqlite:///"):
        _sqlite_path(tracking_uri)
    return tracking.client(tracking_uri)


def _experiment_id(client: Any, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(schema.EXPERIMENT)
    if exp is None:
        raise StoreError(f"the store {tracking_uri} has no experiment {schema.EXPERIMENT!r}: no runs recorded yet")
    return exp.experiment_id


def list_grids(tracking_uri: str) -> list[str]:
    """Names of the grids (``grid`` tag of the parent runs) recorded in the store."""
    client = _client(tracking_uri)
    exp_id = _experiment_id(client, tracking_uri)
    runs = _search(client, exp_id, f"tags.{schema.T_ROLE} = 'grid'")
    return sorted({r.data.tags.get(schema.T_GRID, "") for r in runs} - {""})


def _search(client: Any, exp_id: str, filter_string: str) -> list[Any]:
    """All runs matching ``filter_string``, page by page."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=_PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def collect_runs(tracking_uri: str, grid: str | None = None,
                 keys: Collection[str] | Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read every child run (one with a ``run_key`` tag) into one tidy DataFrame.

    Parameters
    ----------
    tracking_uri
        MLflow tracking URI, e.g. ``sqlite:///.repro/mlflow.db``.
    grid
        Keep only runs whose ``grid`` tag equals this name; ``None`` keeps all grids.
    keys
        The run_keys of the grid's plan (the caller expands the grid spec).  When given, exactly
        the runs whose ``run_key`` is in ``keys`` are kept, whatever their ``grid`` tag: a run_key
        finished under one grid is skipped (never re-run nor re-tagged) by another grid that
        contains it, so the tag alone misses such shared runs; and runs tagged ``grid`` that
        are *not* in the plan (another grid file with the same label, or an older version of
        this one) are left out and counted in ``frame.attrs[OUTSIDE_PLAN]``.
        A mapping run_key -> role (:attr:`repro.grid.plan.Plan.roles`) also sets each run's
        ``role`` to the one this plan gives it: the tag records the role of the grid that
        *trained* the run, and a run_key one grid trained as a budget audit can be a curve point
        of another (cpu-study's 2x audit of N = 256 is cpu-study-v2's own budget there).

    Returns
    -------
    pandas.DataFrame
        One row per run with the columns :data:`COLUMNS` (dotted param names, metric names and
        tags as in :mod:`repro.schema`), plus ``task`` (downstream dataset label) and
        ``upstream`` (pre-training dataset label, ``""`` for scratch).  Params are typed (ints,
        floats, strings; MLflow's ``"None"`` becomes missing).

    Raises
    ------
    StoreError
        The store is missing or empty, or ``grid`` names no recorded grid.
    """
    planned_roles = dict(keys) if isinstance(keys, Mapping) else None
    keys = None if keys is None else frozenset(keys)
    client = exp_id = None  # an MLflow client costs a store connection: made only when needed
    if grid is not None and keys is None:  # selecting by label: it must name one plan (checked once)
        client = _client(tracking_uri)
        exp_id = _experiment_id(client, tracking_uri)
        _one_plan_per_label(client, exp_id, grid)
    if _is_sql(tracking_uri):
        frame = _collect_sql(tracking_uri, grid, keys)
        if frame is not None:
            return _with_planned_roles(frame, planned_roles)
    if client is None:
        client = _client(tracking_uri)
        exp_id = _experiment_id(client, tracking_uri)
    where = f"tags.{schema.T_RUN_KEY} != ''"
    if grid is not None and keys is None:
        where += f" and tags.{schema.T_GRID} = '{grid}'"
    records = list(_records(_search(client, exp_id, where)))
    outside = 0
    if keys is not None:
        outside = sum(r.get(schema.T_RUN_KEY) not in keys and grid is not None and r.get(schema.T_GRID) == grid
                      for r in records)
        records = [r for r in records if r.get(schema.T_RUN_KEY) in keys]
    if not records:
        _no_runs(tracking_uri, grid, keys, outside)
    return _with_planned_roles(_with_outside(runs_to_frame(records), outside), planned_roles)


def _with_planned_roles(frame: pd.DataFrame, roles: Mapping[str, str] | None) -> pd.DataFrame:
    """The plan's role for every run it plans (the ``role`` tag is the training grid's)."""
    if roles is not None:
        planned = frame[schema.C_RUN_KEY].map(roles)
        frame[schema.C_ROLE] = planned.where(planned.notna(), frame[schema.C_ROLE]).astype(object)
    return frame


def _one_plan_per_label(client: Any, exp_id: str, grid: str) -> None:
    """Refuse to select by a ``grid`` label that names several different plans in this store
    (two grid files with one label): their runs would merge silently."""
    parents = _search(client, exp_id, f"tags.{schema.T_ROLE} = '{schema.ROLE_GRID}' and tags.{schema.T_GRID} = '{grid}'")
    plans = sorted({p.data.tags[schema.T_GRID_PLAN] for p in parents if p.data.tags.get(schema.T_GRID_PLAN)})
    if len(plans) > 1:
        raise StoreError(f"grid label {grid!r} names {len(plans)} different plans in this store (plan hashes "
                         f"{', '.join(plans)}): pass the grid's TOML file with --grid, so that exactly its "
                         f"plan's run_keys are selected")


#: ``frame.attrs`` key of :func:`collect_runs`: runs tagged with the grid but not in its plan (left out).
OUTSIDE_PLAN = "outside_plan"


def _with_outside(frame: pd.DataFrame, outside: int) -> pd.DataFrame:
    frame.attrs[OUTSIDE_PLAN] = int(outside)
    return frame


def _no_runs(tracking_uri: str, grid: str | None, keys: frozenset[str] | None, outside: int = 0) -> None:
    if grid is not None:
        known = list_grids(tracking_uri)
        planned = f" (none of its {len(keys)} planned run_keys either)" if keys is not None else ""
        if outside:
            planned = (f": none of its {len(keys)} planned run_keys; {outside} runs are tagged grid={grid!r} but "
                       "belong to another grid file with that label (or an older version of this one)")
        raise StoreError(f"no runs of grid {grid!r}{planned} in {tracking_uri}; recorded grids: "
                         f"{', '.join(known) or 'none'}")
    if keys is not None:
        raise StoreError(f"none of the {len(keys)} planned run_keys is in {tracking_uri}")
    raise StoreError(f"the store {tracking_uri} holds no runs yet")


_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _is_sql(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _SQL_SCHEMES


def _sqlite_path(uri: str) -> Path:
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():  # MLflow would silently create an empty database
        raise StoreError(f"no MLflow store at {path} (set --tracking-uri or {schema.ENV_TRACKING_URI})")
    return path


@contextlib.contextmanager
def _connect(uri: str) -> Iterator[Callable[[str, dict[str, Any]], pd.DataFrame]]:
    """A query function on the store: stdlib sqlite3 for SQLite (fastest row fetching), else SQLAlchemy."""
    if uri.startswith("sqlite:///"):
        con = sqlite3.connect(f"file:{_sqlite_path(uri)}?mode=ro", uri=True)
        try:
            yield lambda sql, args: pd.read_sql(sql, con, params=args)
        finally:
            con.close()
        return
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as sa_con:
            yield lambda sql, args: pd.read_sql(sa.text(sql), sa_con, params=args)
    finally:
        engine.dispose()


def _collect_sql(tracking_uri: str, grid: str | None, keys: frozenset[str] | None = None) -> pd.DataFrame | None:
    """Read the runs straight from MLflow's SQL tables; ``None`` if the layout is unexpected."""
    try:
        with _connect(tracking_uri) as query:
            exp = query("SELECT experiment_id FROM experiments WHERE name = :n", {"n": schema.EXPERIMENT})
            if exp.empty:
                raise StoreError(f"the store {tracking_uri} has no experiment {schema.EXPERIMENT!r}: no runs recorded yet")
            child = ("SELECT run_uuid FROM runs WHERE experiment_id = :e AND lifecycle_stage = 'active' AND run_uuid IN "
                     "(SELECT run_uuid FROM tags WHERE key = :k AND value != '')")
            args = {"e": int(exp.iloc[0, 0]), "k": schema.T_RUN_KEY}
            runs = query(f"SELECT run_uuid, status, start_time FROM runs WHERE run_uuid IN ({child})", args)
            tags = query(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({child})", args)
            params = query(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({child})", args)
            metrics = query(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({child})", args)
    except (sqlite3.Error, ImportError):  # not MLflow's schema: let the client try
        return None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy errors without importing it eagerly
        if type(err).__module__.startswith("sqlalchemy"):
            return None
        raise
    wanted_tags = [*TAGS, schema.T_PARENT_RUN_ID]
    tags = tags[tags["key"].isin(wanted_tags)]
    metrics = metrics[metrics["key"].isin(FINAL_METRICS)]
    metrics = metrics.assign(value=metrics["value"].where(~metrics["is_nan"].astype(bool), np.nan))
    wide = runs.rename(columns={"run_uuid": schema.C_RUN_ID, "status": schema.C_STATUS,
                                "start_time": schema.C_START_TIME}).set_index(schema.C_RUN_ID)
    for long in (tags, params, metrics):
        if len(long):
            wide = wide.join(long.pivot(index="run_uuid", columns="key", values="value"))
    wide = wide.rename(columns={schema.T_PARENT_RUN_ID: schema.C_PARENT_RUN_ID}).reset_index()
    tagged = (wide[schema.T_GRID] == grid) if grid is not None and schema.T_GRID in wide else None
    outside = 0
    if keys is not None:
        planned = wide[schema.T_RUN_KEY].isin(keys)
        outside = int((tagged & ~planned).sum()) if tagged is not None else 0
        wide = wide[planned]
    elif grid is not None:
        wide = wide[tagged] if tagged is not None else wide.iloc[:0]
    if wide.empty:
        _no_runs(tracking_uri, grid, keys, outside)
    return _with_outside(runs_to_frame(wide.to_dict("records")), outside)


def _records(runs: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for run in runs:
        info, data = run.info, run.data
        row: dict[str, Any] = {schema.C_RUN_ID: info.run_id, schema.C_STATUS: info.status,
                               schema.C_START_TIME: info.start_time,
                               schema.C_PARENT_RUN_ID: data.tags.get(schema.T_PARENT_RUN_ID)}
        row.update({k: data.tags.get(k) for k in TAGS})
        row.update(data.params)
        row.update({k: data.metrics.get(k) for k in FINAL_METRICS})
        yield row


def runs_to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Type raw run records (param strings, tags, metrics) into the collected frame."""
    df = pd.DataFrame.from_records(list(records))
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    for col in INT_PARAMS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in FLOAT_PARAMS + FINAL_METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in STR_PARAMS + TAGS:
        # object dtype even when a column is all missing (e.g. no run FAILED), so string
        # operations downstream never meet a float column; MLflow's "None" means missing.
        values = df[col].astype(object)
        df[col] = values.where(values.notna() & (values != "None"), None).astype(object)
    df[schema.C_START_TIME] = pd.to_datetime(df[schema.C_START_TIME], unit="ms", utc=True)
    df[schema.C_TASK] = _labels(df, schema.P_DATA_PDE, schema.P_DATA_LOW, schema.P_DATA_HIGH)
    df[schema.C_UPSTREAM] = _labels(df, schema.P_UPSTREAM_PDE, schema.P_UPSTREAM_LOW, schema.P_UPSTREAM_HIGH)
    scratch = df[schema.P_ARM] == "scratch"
    df.loc[scratch, schema.C_UPSTREAM] = ""
    # Scratch runs have no shift: they serve every shift ending at their task.
    derived = df[schema.C_UPSTREAM] + " -> " + df[schema.C_TASK]
    df[schema.C_SHIFT] = df[schema.C_SHIFT].fillna(derived).where(~scratch, "")
    _qualify_by_resolution(df)
    return df[list(COLUMNS)].sort_values([schema.C_START_TIME, schema.C_RUN_ID], kind="stable").reset_index(drop=True)


def _qualify_by_resolution(df: pd.DataFrame) -> None:
    """Append ``@<resolution>`` to the task and shift labels of tasks seen at several resolutions.

    A task is identified by its physics label (``poisson(5,10)``), which omits the grid
    resolution; a store holding the quick grid (32²) and a paper grid (128²) of the same physics
    would otherwise pool both into one scaling curve.  Labels stay short when unambiguous.
    """
    resolution = df[schema.P_DATA_RESOLUTION]
    per_task = resolution.groupby(df[schema.C_TASK], dropna=True).nunique()
    ambiguous = df[schema.C_TASK].map(per_task).fillna(0).gt(1) & resolution.notna()
    if not ambiguous.any():
        return
    suffix = "@" + resolution[ambiguous].astype(str)
    df.loc[ambiguous, schema.C_TASK] = df.loc[ambiguous, schema.C_TASK] + suffix
    has_shift = ambiguous & df[schema.C_SHIFT].astype(bool)
    df.loc[has_shift, schema.C_SHIFT] = df.loc[has_shift, schema.C_SHIFT] + suffix[has_shift[ambiguous]]


def system_of(task: str) -> str:
    """The physics system of a task label, with its resolution qualifier if any:
    ``poisson(5,10)`` -> ``poisson``, ``poisson(5,10)@32`` -> ``poisson@32``, ``mixed`` -> ``mixed``.
    Claims and figures that group tasks by system group by this, so resolutions stay apart."""
    label, at, resolution = task.partition("@")
    return label.split("(")[0] + at + resolution


def _labels(df: pd.DataFrame, pde: str, low: str, high: str) -> pd.Series:
    """Dataset labels (``DatasetSpec.label``, e.g. ``poisson(5,10)``) for each row, "" if absent.

    Computed once per distinct (pde, low, high) through :class:`repro.config.DatasetSpec` so
    the label is the same string the writer used in the ``shift`` tag.
    """
    keys = df[[pde, low, high]].astype(object).where(df[[pde, low, high]].notna(), None)
    cache: dict[tuple[Any, Any, Any], str] = {}
    out = []
    for key in keys.itertuples(index=False, name=None):
        if key not in cache:
            cache[key] = _label(*key)
        out.append(cache[key])
    return pd.Series(out, index=df.index, dtype=object)


def _label(pde: Any, low: Any, high: Any) -> str:
    if pde is None:
        return ""
    low = None if low is None or (isinstance(low, float) and np.isnan(low)) else float(low)
    high = None if high is None or (isinstance(high, float) and np.isnan(high)) else float(high)
    try:
        return DatasetSpec(pde=str(pde), low=low, high=high).label
    except SpecError:  # a range the spec would refuse today: still label it readably
        return f"{pde}({low},{high})"
