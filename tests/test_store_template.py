"""A new SQLite store starts as a copy of an empty store MLflow migrated once (repro.tracking):
the same schema as MLflow's own migration, a fresh Default experiment, usable at once; and when the
template cannot be made, MLflow migrates the new store itself, as before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from repro import schema, tracking


def _schema(db: Path) -> tuple[list[tuple], str]:
    with sqlite3.connect(db) as con:
        tables = con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                             "ORDER BY type, name").fetchall()
        (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    return tables, version


def test_a_store_from_the_template_is_the_store_mlflow_migrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = int(time.time() * 1000)
    copied = tmp_path / "copied" / "mlflow.db"
    tracking.init_store(f"sqlite:///{copied}")
    assert list((tmp_path / "cache" / "repro").glob("mlflow-*-empty.db"))  # made once, kept
    monkeypatch.setenv(tracking.ENV_SCHEMA_TEMPLATE, "0")
    migrated = tmp_path / "migrated" / "mlflow.db"
    tracking.init_store(f"sqlite:///{migrated}")
    assert _schema(copied) == _schema(migrated)
    with sqlite3.connect(copied) as con:
        rows = dict(con.execute("SELECT name, creation_time FROM experiments").fetchall())
    assert set(rows) == {"Default", schema.EXPERIMENT} and min(rows.values()) >= before
    client = tracking.client(f"sqlite:///{copied}")
    run = client.create_run(tracking.experiment_id(f"sqlite:///{copied}"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_without_a_usable_cache_mlflow_migrates_the_store_itself(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be created
    db = tmp_path / "store" / "mlflow.db"
    assert tracking.init_store(f"sqlite:///{db}")
    assert _schema(db)[1] and not list(tmp_path.glob("**/.mlflow.db.*.new"))
