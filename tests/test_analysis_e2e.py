"""End to end on a real SQLite MLflow store of quick-grid shape: collect -> fit-laws -> report.

The store is written once per module through the training engine's run recorder, in its
layout (``tests/synthetic_store.py``): scratch / transfer / zero-shot, 2 shifts, 2 model sizes,
N = 8 .. 256, 3 LRs, 2 seeds, pre-training runs, one FAILED run (re-run FINISHED), plus a
tiny second grid whose curves have too few N to fit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from repro import schema
from repro.cli import app
from analysis.analyze import CurveKey, analyze
from analysis.collect import COLUMNS, StoreError, collect_runs, default_tracking_uri, list_grids
from synthetic_store import QUICK_SHIFTS, SyntheticGrid, frame, plan, write_store

QUICK = SyntheticGrid(name="synthetic")  # quick-grid shape, under its own label
TINY = SyntheticGrid(name="tiny", shifts=QUICK_SHIFTS[:1], models=("xxs",), n_values=(8, 16), lrs=(1e-3,),
                     seeds=(0,), n_failed=0)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    write_store(uri, QUICK)
    write_store(uri, TINY)
    return uri


@pytest.fixture(scope="module")
def runs(store: str):
    return collect_runs(store, "synthetic")


def test_collect_round_trips_the_store(store: str, runs) -> None:
    planned = plan(QUICK)
    assert len(runs) == len(planned)
    assert list(runs.columns) == list(COLUMNS)
    assert list_grids(store) == ["synthetic", "tiny"]
    assert set(runs[schema.P_ARM]) == {"scratch", "transfer", "zero_shot"}
    assert runs[schema.P_N_TRAIN].dtype.name == "Int64" and runs[schema.P_LR].dtype == float
    failed = runs[runs[schema.C_STATUS] == schema.FAILED]
    assert len(failed) == 1 and failed[schema.C_FAILURE_REASON].iloc[0].startswith("diverged")
    scratch = runs[runs[schema.P_ARM] == "scratch"]
    assert (scratch[schema.C_SHIFT] == "").all() and (scratch[schema.C_UPSTREAM] == "").all()
    transfer = runs[runs[schema.P_ARM] == "transfer"]
    assert set(transfer[schema.C_SHIFT]) == {"poisson(1,5) -> poisson(2.5,7.5)", "poisson(1,5) -> poisson(5,10)"}
    assert set(transfer[schema.C_TASK]) == {"poisson(2.5,7.5)", "poisson(5,10)"}
    assert runs[schema.C_PARENT_RUN_ID].notna().all()
    # a planted value survives the round trip
    one = planned[-1]
    row = runs[runs[schema.C_RUN_KEY] == one.spec.run_key].iloc[-1]
    assert row[schema.C_TEST_REL_L2] == pytest.approx(one.metrics[schema.M_TEST_REL_L2])
    assert len(collect_runs(store)) == len(planned) + len(plan(TINY))


def test_the_in_memory_frame_equals_the_stores_read_back(runs) -> None:
    """synthetic_store.frame (what the pinned-claims tests analyse, without MLflow) is the frame
    collect_runs reads back from write_store's store, column by column, but for ids, times and git."""
    local = frame(QUICK)
    skip = {schema.C_RUN_ID, schema.C_PARENT_RUN_ID, schema.C_START_TIME, schema.T_GIT_SHA, schema.T_GIT_DIRTY}
    cols = [c for c in COLUMNS if c not in skip]
    order = [schema.T_RUN_KEY, schema.C_STATUS]
    want = runs.sort_values(order).reset_index(drop=True)[cols]
    got = local.sort_values(order).reset_index(drop=True)[cols]
    pd.testing.assert_frame_equal(got, want)


def test_client_and_sql_readers_agree(store: str, runs, monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.collect as collect

    monkeypatch.setattr(collect, "_is_sql", lambda uri: False)
    slow = collect.collect_runs(store, "synthetic")
    key = [schema.C_RUN_ID]
    a, b = runs.sort_values(key).reset_index(drop=True), slow.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # the plan's roles reach the client reader's frame as they do the SQL reader's
    roles = dict.fromkeys(runs[schema.C_RUN_KEY], schema.ROLE_AUDIT)
    assert (collect.collect_runs(store, "synthetic", keys=roles)[schema.C_ROLE] == schema.ROLE_AUDIT).all()


def test_store_errors_are_clear(tmp_path: Path, store: str) -> None:
    with pytest.raises(StoreError, match="no MLflow store"):
        collect_runs(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(StoreError, match="recorded grids: synthetic, tiny"):
        collect_runs(store, "nope")


def test_default_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(schema.ENV_TRACKING_URI, "sqlite:///x.db")
    assert default_tracking_uri() == "sqlite:///x.db"
    monkeypatch.delenv(schema.ENV_TRACKING_URI)
    monkeypatch.setenv(schema.ENV_HOME, str(tmp_path))
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_analysis_recovers_the_planted_truth(runs) -> None:
    result = analyze(runs, n_boot=50, workers=1)
    assert [r.n_excluded for r in result.filter_reports] == [0, 1, 0, 0, 0, 0]
    assert result.filter_reports[-1].name == "unconverged"
    assert len(result.curves) == 2 * 2 * 2  # (scratch per task + transfer per shift) x 2 models
    fit = result.curves[CurveKey("poisson(5,10)", "", "xs", "scratch")]
    assert fit.params["alpha"] == pytest.approx(QUICK.alpha, abs=0.1)
    assert fit.seed_effects is not None and fit.seed_effects.n_seeds == len(QUICK.seeds)
    # planted multiplier b^(1/alpha), b = benefit * growth^size / (1 + 2 * shift), at every level
    from analysis.transfer import shift_magnitude

    b = QUICK.benefit * QUICK.growth / (1 + 2 * shift_magnitude(*QUICK_SHIFTS[1]))
    metrics = next(m for k, m in result.transfer.items() if k.model == "xs" and k.task == "poisson(5,10)")
    inside = metrics.level == "inside both ranges"
    assert inside.any()
    assert np.all(metrics.multiplier.lo[inside] <= b ** (1 / QUICK.alpha))
    assert np.all(b ** (1 / QUICK.alpha) <= metrics.multiplier.hi[inside])
    # one LR per (cell, N) for all seeds, chosen on their mean validation error
    transfer = result.selected[result.selected[schema.P_ARM] == "transfer"]
    assert transfer.groupby([schema.C_SHIFT, schema.P_MODEL, schema.P_N_TRAIN])[schema.P_LR].nunique().max() == 1
    assert transfer[schema.P_LR].eq(1e-4).mean() > 0.8
    verdicts = {c.id: c.verdict for c in result.claims}
    # two model sizes: no trend (>= 3); no mixture; transfer's best LR is not the pre-training LR
    assert verdicts[3] == verdicts[5] == "NOT ENOUGH DATA"
    assert verdicts[2] == verdicts[6] == "PASS"
    for c in result.claims:
        assert c.verdict == "NOT ENOUGH DATA" or 0.0 <= c.stability <= 1.0
        assert c.verdict == "NOT ENOUGH DATA" or "errors reached" in c.regime
    assert set(result.convergence["arm"]) == {"scratch", "transfer"}


def test_fit_laws_cli(store: str, tmp_path: Path) -> None:
    out = tmp_path / "fits"
    res = CliRunner().invoke(app, ["fit-laws", "--grid", "synthetic", "--tracking-uri", store, "--out", str(out),
                                   "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "Fitted laws" in res.output and "PASS" in res.output
    doc = json.loads((out / "analysis.json").read_text())
    assert [c["id"] for c in doc["claims"]] == [1, 2, 3, 4, 5, 6]
    for name in ("fits", "multiplier", "d_t", "transfer_summary", "selected_runs", "exclusions"):
        assert (out / f"{name}.csv").stat().st_size > 0
    fits = pd.read_csv(out / "fits.csv")
    assert len(fits) == 8 and {"E_lo", "alpha_hi", "delta_aic", "heldout_rel_error"} <= set(fits.columns)


def test_fit_laws_cli_reports_skipped_cells_and_carries_on(store: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["fit-laws", "--grid", "tiny", "--tracking-uri", store, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "2 distinct N (need >= 3" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["--grid", "nope"], "no runs of grid 'nope'"),
    ([], "no MLflow store"),
])
def test_cli_errors_are_one_line(store: str, tmp_path: Path, args: list[str], message: str) -> None:
    uri = store if args else f"sqlite:///{tmp_path / 'none.db'}"
    res = CliRunner().invoke(app, ["fit-laws", "--tracking-uri", uri, *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


@pytest.fixture(scope="module")
def report_path(store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(app, ["report", "--grid", "synthetic", "--tracking-uri", store, "--out", str(out),
                                   "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    return out / "index.html"


def test_report_is_self_contained(report_path: Path) -> None:
    html = report_path.read_text()
    assert 'id="claims-table"' in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert html.count('<svg class="figure"') >= 5 and "<img" not in html  # vector figures, inlined
    for section in ("error-vs-n", "multiplier", "model-size", "ood", "mixed", "fits", "provenance"):
        assert f'id="{section}"' in html
    assert "diverged: train/loss is NaN" in html  # the exclusion and its reason


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")
def test_report_in_headless_chromium(report_path: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report_path.as_uri())
            page.wait_for_load_state("load")
            widths = page.evaluate("Array.from(document.querySelectorAll('svg.figure'))"
                                   ".map(s => s.getBoundingClientRect().width)")
            content = page.evaluate("document.querySelector('h2').getBoundingClientRect().width")
            rows = page.locator("#claims-table tr").count()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(widths) >= 5 and min(widths) >= content - 1, (widths, content)  # every figure at full content width
    assert rows == 7  # header + six findings
    assert errors == []
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")
@pytest.mark.parametrize("width", [1000, 1400])
def test_report_never_overflows_and_every_arm_drawn_is_in_the_legend(report_path: Path, width: int) -> None:
    """Issue 12: at 1,000 and 1,400 px (every <details> open) the page never scrolls sideways, wide
    tables scroll in their own box, and the legend of every E1 figure names each arm it draws."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(report_path.as_uri())
            page.wait_for_load_state("load")
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            scroll = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            e1 = page.evaluate("""Array.from(document.querySelectorAll('figure[data-figure="e1"]')).map(f => ({
                arms: f.dataset.arms.split('|'),
                legend: Array.from(f.querySelectorAll('svg g.legend-text')).map(g => g.dataset.label)}))""")
        finally:
            browser.close()
    assert scroll[0] <= scroll[1], f"page overflows horizontally at {width} px: scrollWidth {scroll[0]}"
    assert len(e1) == len(QUICK_SHIFTS)
    for fig in e1:
        assert set(fig["arms"]) == {"scratch", "transfer", "zero-shot"}, fig  # the synthetic grid runs all three
        assert set(fig["arms"]) <= set(fig["legend"]), fig


def test_report_figures_say_what_they_cannot_show(store: str, runs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: a D_T series clipped at the horizon throughout is not drawn but named in a sentence;
    a model-size trend through 2 sizes is markers only; run ids link to the MLflow UI when it is known."""
    import analysis.report as report
    from analysis import figures
    from analysis.transfer import EITHER, LOWER_BOUND
    from mlflow.tracking import MlflowClient

    result = analyze(runs, tracking_uri=store, n_boot=20, workers=1)
    assert figures.d_t_all_clipped(result) == []
    plot = figures.benefit_vs_size(result)  # two model sizes per shift: no line
    assert plot is not None and not any(type(layer.geom).__name__ == "geom_line" for layer in plot.layers)
    html = report.render_html(result, workers=1)
    assert "2 sizes: no trend" in html and 'id="d-t-clipped"' not in html and "<a href" not in html

    clipped = {k: dataclasses.replace(m, d_t=dataclasses.replace(m.d_t, bound=np.full_like(m.d_t.bound, LOWER_BOUND))) for k, m in
               result.transfer.items()}
    all_clipped = dataclasses.replace(result, transfer=clipped)
    assert len(figures.d_t_all_clipped(all_clipped)) == len(clipped)
    assert figures.data_transferred(all_clipped) is None
    # a level where both arms are clipped at the same end is not identified: not drawn, named in a sentence
    drawn = len(figures.multiplier_vs_eps(result).data)
    key, m = next(iter(result.transfer.items()))
    i = next(j for j, (v, b) in enumerate(zip(m.multiplier.value, m.multiplier.bound))
             if np.isfinite(v) and v > 0 and b != EITHER)  # a level that is drawn
    either = dataclasses.replace(m, multiplier=dataclasses.replace(
        m.multiplier, bound=np.where(np.arange(len(m.eps)) == i, EITHER, m.multiplier.bound).astype(np.int8)))
    one_unidentified = dataclasses.replace(result, transfer={**result.transfer, key: either})
    before = figures.unidentified_levels(result)  # e.g. the paper's 1e-2, below both floors
    assert all(np.isclose(e, 1e-2) for _, _, e in before)
    planted = (m.shift, m.model, float(m.eps[i]))
    assert planted not in before and set(figures.unidentified_levels(one_unidentified)) == {*before, planted}
    assert len(figures.multiplier_vs_eps(one_unidentified).data) == drawn - 1
    assert 'id="multiplier-unidentified"' in report.render_html(one_unidentified, workers=1)
    monkeypatch.setenv(report.ENV_UI_URL, "http://mlflow.example:5000/")
    html = report.render_html(all_clipped, workers=1)
    assert 'id="d-t-clipped"' in html and 'aria-label="D_T vs N"' not in html
    run_id = result.selected[schema.C_RUN_ID].iloc[0]
    experiment = MlflowClient(store).get_experiment_by_name(schema.EXPERIMENT).experiment_id
    assert f'<a href="http://mlflow.example:5000/#/experiments/{experiment}/runs/{run_id}">{run_id}</a>' in html


def test_collect_by_planned_run_keys_counts_runs_shared_with_another_grid(store: str, runs) -> None:
    """A run_key finished under one grid is part of every grid that plans it (F2)."""
    tiny = collect_runs(store, "tiny")
    shared = set(runs[schema.C_RUN_KEY].iloc[:3])  # finished (and tagged) under 'synthetic'
    got = collect_runs(store, "tiny", keys=shared | set(tiny[schema.C_RUN_KEY]))
    assert set(got[schema.C_RUN_KEY]) == shared | set(tiny[schema.C_RUN_KEY])
    assert set(collect_runs(store, None, keys=shared)[schema.C_RUN_KEY]) == shared
    # Runs tagged with the label but outside the plan (another grid file with the same label) are left out,
    # and counted: a custom grid labelled like a shipped one cannot mix into its analysis.
    part = set(sorted(tiny[schema.C_RUN_KEY])[:3])
    got = collect_runs(store, "tiny", keys=part)
    assert set(got[schema.C_RUN_KEY]) == part and got.attrs["outside_plan"] == len(tiny) - len(part)
    with pytest.raises(StoreError, match=f"{len(tiny)} runs are tagged grid='tiny' but belong to another grid file"):
        collect_runs(store, "tiny", keys=set())
    with pytest.raises(StoreError, match="planned run_keys"):
        collect_runs(store, "nope", keys={"no-such-key"})


def test_collect_by_plan_roles_gives_each_run_the_role_of_the_plan_analysed(store: str, runs) -> None:
    """A run_key one grid trained as a budget audit is a curve point of a grid whose own budget it
    is (cpu-study's 2x audit at N = 256 is cpu-study-v2's N = 256 run): its ``role`` tag says
    ``audit``, the plan analysed says ``downstream``, and the plan wins for the runs it plans."""
    downstream = runs[runs[schema.C_ROLE] == schema.ROLE_DOWNSTREAM]
    key = downstream[schema.C_RUN_KEY].iloc[0]
    roles = dict.fromkeys(runs[schema.C_RUN_KEY], schema.ROLE_DOWNSTREAM) | {key: schema.ROLE_AUDIT}
    got = collect_runs(store, "synthetic", keys=roles).set_index(schema.C_RUN_KEY)[schema.C_ROLE]
    assert (got.loc[[key]] == schema.ROLE_AUDIT).all()  # every run of the key (a re-run shares it)
    assert (got.drop(key) == schema.ROLE_DOWNSTREAM).all()
    # A plain collection of keys keeps the tags' roles.
    tagged = collect_runs(store, "synthetic", keys=set(roles)).set_index(schema.C_RUN_KEY)[schema.C_ROLE]
    assert (tagged.loc[[key]] == schema.ROLE_DOWNSTREAM).all() and set(tagged) == set(runs[schema.C_ROLE])


def test_cli_selects_by_the_grid_plan_when_the_grid_spec_loads(store: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import repro.cli as cli

    seen = {}

    def fake_keys(grid):
        seen["grid"] = grid
        return frozenset(collect_runs(store, "tiny")[schema.C_RUN_KEY]) if grid == "shared" else None

    monkeypatch.setattr(cli, "_grid_keys", fake_keys)
    res = CliRunner().invoke(app, ["fit-laws", "--grid", "shared", "--tracking-uri", store, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "analysis.json").read_text())["provenance"]
    assert seen["grid"] == "shared" and prov["n_runs"] == len(collect_runs(store, "tiny"))
    assert prov["selection"].startswith("run_key in the plan of grid 'shared'")
    res = CliRunner().invoke(app, ["fit-laws", "--grid", "tiny", "--tracking-uri", store, "--out", str(tmp_path)])
    prov = json.loads((tmp_path / "analysis.json").read_text())["provenance"]
    assert "tagged grid='tiny'" in prov["selection"]


def test_grid_keys_expand_shipped_grids_and_fall_back_for_tags() -> None:
    from repro.cli import _grid_keys
    from repro.grid import expand, load_grid

    assert _grid_keys("quick") == expand(load_grid("quick")).roles  # run_key -> the plan's role
    assert _grid_keys("no-such-grid") is None and _grid_keys(None) is None


def test_transfer_tables_are_computed_once(runs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """analyze stores the transfer tables; outputs, console and report reuse them (F9)."""
    import analysis.analyze as az
    from rich.console import Console

    from analysis.commands import print_result
    from analysis.report import _context

    calls = []
    real = az.transfer_tables
    monkeypatch.setattr(az, "transfer_tables", lambda r: calls.append(1) or real(r))
    result = analyze(runs, n_boot=20, workers=1)
    assert len(calls) == 1 and len(result.transfer_summary) == len(result.transfer)
    monkeypatch.setattr(az, "transfer_tables", lambda r: pytest.fail("recomputed"))
    az.write_outputs(result, tmp_path)
    print_result(result, Console(file=open(tmp_path / "out.txt", "w")))
    print_result(result, Console(file=open(tmp_path / "narrow.txt", "w"), width=80))
    narrow = (tmp_path / "narrow.txt").read_text()
    assert "F1 " in narrow and "the paper: Transfer reaches" in narrow  # what each finding says
    assert max(len(line) for line in narrow.splitlines()) <= 80
    # no table cell folded letter by letter: every table row's cells hold >= 2 characters of text
    cells = [c.strip() for line in narrow.splitlines() if line.startswith("│") for c in line.strip("│").split("│")]
    assert all(len(c) != 1 or c in "0123456789-" for c in cells if c), [c for c in cells if len(c) == 1]
    monkeypatch.setattr("analysis.report._figures", lambda result, workers: {})
    assert _context(result, 1)["summary"] is not None
    assert "multiplier_ci" not in result.transfer_summary  # the report adds columns to a copy


def test_same_physics_at_two_resolutions_are_separate_tasks(tmp_path: Path) -> None:
    """A store holding one task at 32² and at 64² never pools both into one curve."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_store(uri, TINY)
    write_store(uri, SyntheticGrid(name="tiny64", shifts=TINY.shifts, models=TINY.models, n_values=TINY.n_values,
                                   lrs=TINY.lrs, seeds=TINY.seeds, n_failed=0, resolution=64))
    both = collect_runs(uri)
    downstream = both[both[schema.T_ROLE] == schema.ROLE_DOWNSTREAM]
    assert set(downstream[schema.C_TASK]) == {"poisson(2.5,7.5)@32", "poisson(2.5,7.5)@64"}
    transfer = downstream[downstream[schema.P_ARM] == "transfer"]
    assert set(transfer[schema.C_SHIFT]) == {"poisson(1,5) -> poisson(2.5,7.5)@32", "poisson(1,5) -> poisson(2.5,7.5)@64"}
    for task, g in downstream.groupby(schema.C_TASK):
        assert set(g[schema.P_DATA_RESOLUTION]) == {int(task.rsplit("@", 1)[1])}
    # one grid alone keeps the short labels
    assert set(collect_runs(uri, "tiny64").loc[lambda d: d[schema.T_ROLE] == schema.ROLE_DOWNSTREAM, schema.C_TASK]) \
        == {"poisson(2.5,7.5)"}
    result = analyze(both, n_boot=10, workers=1)
    assert len(result.pointwise) == 2 * len(TINY.n_values)  # one row per (resolution, N), never pooled
    assert set(result.benefit["pde"]) == {"poisson@32", "poisson@64"}  # the OOD-ladder claim groups by this


def test_synthetic_runs_carry_convergence_and_compute_and_plant_unconverged_ones() -> None:
    import dataclasses

    converged = plan(TINY)
    trained = [r for r in converged if r.spec.arm != "zero_shot" and r.status == schema.FINISHED]
    assert all(r.metrics[schema.M_CONVERGED] == 1.0 and r.metrics[schema.M_LATE_IMPROVEMENT] < 0.005 for r in trained)
    assert all(r.metrics[schema.M_FLOPS] > 0 for r in converged if r.status == schema.FINISHED)
    assert all(r.metrics[schema.M_PRETRAIN_FLOPS] > 0 for r in converged if r.spec.init_from and r.metrics)
    grid = dataclasses.replace(TINY, seeds=(0, 1, 2, 3), lrs=(1e-4, 1e-3), unconverged=0.5, unconverged_arms=("scratch",))
    runs = [r for r in plan(grid) if r.metrics and r.tags[schema.T_ROLE] == "downstream"]
    flagged = [r for r in runs if r.metrics.get(schema.M_CONVERGED) == 0.0]
    scratch = [r for r in runs if r.spec.arm == "scratch"]
    assert {r.spec.arm for r in flagged} == {"scratch"} and 0.2 < len(flagged) / len(scratch) < 0.8
    assert all(r.metrics[schema.M_LATE_IMPROVEMENT] >= 0.05 for r in flagged)
    # planting moves no other run's draw
    same = {r.spec.run_key: r.metrics[schema.M_TEST_REL_L2] for r in plan(dataclasses.replace(grid, unconverged=0.0))
            if r.metrics}
    keys = {r.spec.run_key for r in flagged}
    assert all(same[r.spec.run_key] == r.metrics[schema.M_TEST_REL_L2] for r in runs if r.spec.run_key not in keys)
    assert all(same[k] < r.metrics[schema.M_TEST_REL_L2] for r in flagged for k in [r.spec.run_key])  # worse


def test_a_custom_grid_labelled_like_a_shipped_one_never_mixes_into_it(tmp_path: Path) -> None:
    """Issue 11 #7: runs of another grid file that reuses the label 'quick' are not the shipped quick
    grid's runs: fit-laws --grid quick selects by quick's plan and says why nothing matched."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_store(uri, dataclasses.replace(TINY, name="quick"))
    res = CliRunner().invoke(app, ["fit-laws", "--grid", "quick", "--tracking-uri", uri, "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "tagged grid='quick' but belong to another grid file with that label" in res.output
