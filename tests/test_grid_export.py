"""`repro export`: one grid's runs copied into a new SQLite store that the readers treat as the original."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import write_grid
from typer.testing import CliRunner

from repro import schema, tracking
from repro.cli import app
from repro.grid.launcher import Options, run_grid
from repro.execution import RunContext
from repro.grid.plan import expand
from repro.grid.plan import load_grid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object, Path]:
    """A real grid with one diverging LR (FAILED runs are data too), run twice (two parents)."""
    root = tmp_path_factory.mktemp("export")
    grid = write_grid(root / "g.toml", "export-me", lrs="[3e-3, 1e6]")
    plan = expand(load_grid(grid))
    uri = f"sqlite:///{root / 'src' / 'mlflow.db'}"
    opts = Options(RunContext(tracking_uri=uri, data_dir=root / "data"), workers=2)
    assert not run_grid(plan, opts, live=False).ok  # the 1e6 runs fail
    run_grid(plan, opts, live=False)  # and fail again under a second parent
    return uri, plan, grid


def _tree(uri: str, keys) -> list[tuple]:
    """Each run of ``keys`` as (run_key, status, params, final metrics, val history, parent's grid tag)."""
    from repro.grid import store

    out = []
    for key, state in store.key_states(uri, keys).items():
        parents = store.parents_of(uri, state.runs)
        client = tracking.client(uri)
        for run in state.runs:
            parent = parents[run.data.tags[schema.T_PARENT_RUN_ID]]
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, schema.M_VAL_REL_L2)]
            out.append((key, run.info.status, tuple(sorted(run.data.params.items())),
                        # nan != nan: a NaN metric (a diagnostic too short to compute) compares as a string
                        tuple(sorted((k, 'nan' if v != v else v) for k, v in run.data.metrics.items())),
                        tuple(sorted(history)),
                        run.data.tags.get(schema.T_FAILURE_REASON), parent.data.tags[schema.T_GRID],
                        run.info.start_time, run.info.end_time))
    return sorted(out, key=repr)


def test_export_copies_every_run_with_history_status_and_parents(source, tmp_path: Path) -> None:
    uri, plan, grid = source
    dst = tmp_path / "out" / "mlflow.db"
    res = CliRunner().invoke(app, ["export", "--grid", str(grid), "--tracking-uri", uri, "--to", str(dst)])
    assert res.exit_code == 0, res.output
    assert "grid invocation(s)" in res.output
    copy = f"sqlite:///{dst}"
    assert _tree(copy, plan.keys) == _tree(uri, plan.keys)
    statuses = Counter(t[1] for t in _tree(copy, plan.keys))
    assert statuses[schema.FAILED] == 2 * sum(plan[k].spec.lr == 1e6 for k in plan.keys)
    # the readers work on the copy: status and the analysis see the same grid
    st = CliRunner().invoke(app, ["status", "--grid", str(grid), "--tracking-uri", copy])
    assert st.exit_code == 0 and "failures (" in st.output
    from analysis.collect import collect_runs

    a, b = collect_runs(uri, "export-me"), collect_runs(copy, "export-me")
    cols = [schema.C_RUN_KEY, schema.C_STATUS, schema.C_TEST_REL_L2, schema.C_SHIFT]
    assert a[cols].sort_values(cols[:2]).reset_index(drop=True).equals(b[cols].sort_values(cols[:2]).reset_index(drop=True))


def test_export_never_overwrites_and_copies_checkpoints_on_request(source, tmp_path: Path) -> None:
    from repro.train.pretrained import resolve_checkpoint

    uri, plan, grid = source
    dst = tmp_path / "with-artifacts.db"
    res = CliRunner().invoke(app, ["export", "--grid", str(grid), "--tracking-uri", uri, "--to", str(dst), "--artifacts"])
    assert res.exit_code == 0, res.output
    pretrain = plan.pretrain[0].run_key
    ckpt = resolve_checkpoint(pretrain, f"sqlite:///{dst}", cache_dir=tmp_path / "cache")
    assert ckpt.is_file() and ckpt.stat().st_size > 0  # a fine-tune could start from the copy
    before = dst.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["export", "--grid", str(grid), "--tracking-uri", uri, "--to", str(dst)])
    assert again.exit_code == 2 and "never overwrites" in again.output and dst.stat().st_mtime_ns == before
    empty = CliRunner().invoke(app, ["export", "--grid", "quick", "--tracking-uri", uri, "--to", str(tmp_path / "q.db")])
    assert empty.exit_code == 2 and "no runs" in empty.output


def test_an_interrupted_export_leaves_nothing_behind(source, tmp_path: Path, monkeypatch) -> None:
    import repro.tracking as tracking
    from repro.grid.export import export_grid
    from repro.grid.store import key_states

    uri, plan, _ = source
    real, calls = tracking.copy_run, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "copy_run", dies_on_the_third)
    dst = tmp_path / "e.db"
    with pytest.raises(KeyboardInterrupt):
        export_grid(plan, uri, dst)
    assert not dst.exists() and not list(tmp_path.glob(".e.db.*"))
    monkeypatch.setattr(tracking, "copy_run", real)
    result = export_grid(plan, uri, dst)  # the next attempt is not blocked
    assert dst.is_file() and result.n_runs == sum(len(s.runs) for s in key_states(uri, plan.keys).values())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
