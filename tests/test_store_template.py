"""A new SQLite store starts as a copy of an empty store MLflow migrated once (repro.tracking):
the same schema and Default experiment as MLflow's own migration, a fresh creation time, usable at
once; when the template cannot be made, MLflow migrates the new store itself, as before; and
MLflow's own first-contact migration stays safe when several processes start on one new store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import schema, tracking


def _schema(db: Path) -> tuple[list[tuple], str]:
    """Every table, index and trigger with its definition as a set of clauses: MLflow's own
    migration writes a table's constraints in an order that varies between processes (seen: the
    CHECK on ``runs.lifecycle_stage`` before or after its neighbour in 1 of 5 fresh migrations of
    MLflow 3.17.2), so two stores MLflow migrated itself differ in clause order only."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        tables = sorted((kind, name, _clauses(sql)) for kind, name, sql in rows)
        (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    return tables, version


def _clauses(sql: str | None) -> tuple[str, ...]:
    return tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines()))


def _experiments(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, artifact_location, lifecycle_stage, creation_time FROM experiments")
        return {name: rest for name, *rest in rows}


def test_a_store_from_the_template_is_the_store_mlflow_migrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment lives under ./mlruns of the creating process
    before = int(time.time() * 1000)
    copied = tmp_path / "copied" / "mlflow.db"
    copied.parent.mkdir()
    assert tracking._place_migrated_schema(copied) and copied.is_file()  # the copy, not a fallback
    assert list((tmp_path / "cache" / "repro").glob("mlflow-schema-*.db"))  # made once, kept
    tracking.init_store(f"sqlite:///{copied}")
    monkeypatch.setenv(tracking.ENV_SCHEMA_TEMPLATE, "0")
    migrated = tmp_path / "migrated" / "mlflow.db"
    tracking.init_store(f"sqlite:///{migrated}")
    assert _schema(copied) == _schema(migrated)
    got, want = _experiments(copied), _experiments(migrated)
    assert got["Default"][:2] == want["Default"][:2] and got["Default"][2] >= before
    assert set(got) == {"Default", schema.EXPERIMENT}
    client = tracking.client(f"sqlite:///{copied}")
    run = client.create_run(tracking.experiment_id(f"sqlite:///{copied}"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert not list(copied.parent.glob(".mlflow.db.*"))  # no staging file left behind


def test_without_a_usable_cache_mlflow_migrates_the_store_itself(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be created
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    assert not tracking._place_migrated_schema(db) and not db.exists()
    assert tracking.init_store(f"sqlite:///{db}")
    assert _schema(db)[1]


def test_three_processes_starting_on_one_new_store_all_succeed(tmp_path: Path) -> None:
    """MLflow's own migration (template off): without init_store's lock two first contacts race
    ("table ... already exists"); run-grid's concurrent-launcher test covers the template's copy."""
    db = tmp_path / "mlflow.db"
    env = {**os.environ, tracking.ENV_SCHEMA_TEMPLATE: "0"}
    code = f"from repro import tracking; print(tracking.init_store('sqlite:///{db}'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, the same id for all
