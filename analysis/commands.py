"""What ``repro fit-laws`` and ``repro report`` do, as library functions (the CLI only parses).

Both read MLflow once (:func:`analysis.collect.collect_runs`), run :func:`analysis.analyze.analyze`,
then either print + write tables or render the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Collection

from rich.console import Console
from rich.table import Table

from analysis.analyze import AnalysisResult, analyze, write_outputs
from analysis.claims import FAIL, NOT_ENOUGH, PASS
from analysis.numbers import format_estimate, format_interval, format_number, format_percent
from analysis.collect import OUTSIDE_PLAN, collect_runs
from analysis.fits import N_BOOT
from analysis.report import render_report
from analysis.transfer import EXTRAPOLATION_ABOVE

_VERDICT_STYLE = {PASS: "bold green", FAIL: "bold red", NOT_ENOUGH: "dim"}


def default_out_dir(grid: str | None) -> Path:
    """``<REPRO_HOME>/reports/<grid>`` (``.../all`` without a grid filter).

    Beside the store, not the checkout's ``reports/``: that folder holds the committed results,
    which a user's own run must neither overwrite nor mix with.  A grid given as a TOML path is
    named by its file stem.
    """
    from repro.config import repro_home

    name = "all" if grid is None else (Path(grid).stem if grid.endswith(".toml") else Path(grid).name)
    return repro_home() / "reports" / name


def selection_note(grid: str | None, keys: Collection[str] | None) -> str:
    """How the runs were chosen, in words (shown in the provenance)."""
    if keys is not None:
        where = f"grid {grid!r}" if grid is not None else "the given plan"
        return f"run_key in the plan of {where} ({len(keys)} run_keys)"
    if grid is not None:
        return f"tagged grid={grid!r} (no grid spec of that name could be loaded)"
    return "every run in the store"


def load(tracking_uri: str, grid: str | None, n_boot: int = N_BOOT, workers: int | None = None,
         keys: Collection[str] | None = None) -> AnalysisResult:
    """Collect and analyse (raises :class:`analysis.collect.StoreError` for an empty store / unknown grid).

    ``keys``: the run_keys of ``grid``'s plan, when the caller could expand the grid spec: runs are
    then selected by run_key, so runs shared with another grid count and runs tagged with the grid's
    label but outside its plan (another file with the same label) do not; the selection note says
    how many were left out.  Given as the plan's run_key -> role mapping, each run also takes the
    role this plan gives it (:func:`analysis.collect.collect_runs`).
    """
    runs = collect_runs(tracking_uri, grid, keys)
    selection = selection_note(grid, keys)
    if runs.attrs.get(OUTSIDE_PLAN):
        selection += (f"; {runs.attrs[OUTSIDE_PLAN]} runs tagged grid={grid!r} are not in this plan (another grid "
                      "file with the same label, or an older version of it) and were left out")
    return analyze(runs, tracking_uri=tracking_uri, n_boot=n_boot, workers=workers, selection=selection)


def print_result(result: AnalysisResult, console: Console) -> None:
    """Rich tables: fits, transfer metrics, claims with stability and regime; then convergence and skips.

    On a narrow terminal (< 120 columns) the tables keep their key columns only (every column is in
    the CSV files), so no cell is folded letter by letter; the claims are blocks, not a table.
    """
    narrow = console.width < 120
    fits = Table(title="Fitted laws per curve (law chosen by AICc; 95% intervals from whole-seed-curve bootstrap)",
                 show_lines=False)
    cols = ("task / shift", "model", "arm", "pts", "law", "E", "α", "α CI", "seed sd", "not identified",
            "held-out err")
    keep = 8 if narrow else len(cols)
    for col in cols[:keep]:
        fits.add_column(col, overflow="fold")
    for key, fit in result.curves.items():
        held = f"{fit.heldout.rel_error:+.1%}" if fit.heldout else "-"
        seed_sd = format_number(fit.seed_effects.sigma_seed) if fit.seed_effects else "n/a"
        alpha_ci = format_interval(*fit.intervals["alpha"]) if not fit.interval_note else "none (one seed)"
        row = (key.shift or key.task, key.model, key.arm, str(fit.n_points), fit.law,
               format_number(fit.params["E"]), format_number(fit.params["alpha"]), alpha_ci, seed_sd,
               " ".join(fit.unidentified) or "-", held)
        fits.add_row(*row[:keep])
    console.print(fits)
    summary = result.transfer_summary
    if len(summary):
        tm = Table(title="Data-efficiency multiplier at the level Finding 1 decides on",
                   caption=f"≥ / ≤: a lower / upper bound; laws are never inverted below the smallest N run nor beyond "
                           f"{EXTRAPOLATION_ABOVE:g}× the largest (catch-up inf: not within it); every level is in "
                           "multiplier.csv")
        cols = ("shift", "model", "ε", "multiplier", "95% CI", "level", "zero-shot ≤ ε", "D_T(N_min)", "catch-up N")
        keep = 5 if narrow else len(cols)
        for col in cols[:keep]:
            tm.add_column(col, overflow="fold")
        for row in summary.to_dict("records"):
            cells = (row["shift"], row["model"], format_number(row["eps"]), *format_estimate(row, "multiplier"),
                     str(row["level"]), "yes" if row["zero_shot_reaches"] else "no",
                     format_estimate(row, "d_t_nmin")[0], format_number(row["catch_up"]))
            tm.add_row(*cells[:keep])
        console.print(tm)
    console.print("[bold]The paper's findings on these runs[/] (decided on 95% intervals; stability = share of "
                  "bootstrap replicates giving the same verdict)")
    for c in result.claims:
        console.print(f"[bold]F{c.id}[/] [{_VERDICT_STYLE[c.verdict]}]{c.verdict}[/] (stability "
                      f"{format_percent(c.stability)}) — the paper: {c.finding}")
        console.print(f"    {c.summary}", highlight=False)
        if c.regime:
            console.print(f"    [dim]{c.regime}[/]", highlight=False)
    if len(result.convergence):
        console.print("convergence of the selected runs: " + "; ".join(
            f"{r.arm} {r.converged}/{r.with_diagnostic} converged ({format_percent(r.share_converged)})"
            for r in result.convergence.itertuples(index=False)))
    if len(result.audit):
        console.print("budget audit (the same runs with a longer budget): " + "; ".join(
            f"{r.arm} at the {r.lr} LR x{r.budget_factor:g}: median gain {r.median_gain:.1%}, largest "
            f"{r.max_gain:.1%}, {r.within_tolerance}/{r.audited_runs} within {r.tolerance:.0%}"
            if r.audited_runs else f"{r.arm}: {r.audit_runs} audit run(s) without a finished pair"
            for r in result.audit.itertuples(index=False)))
    for message in result.skipped:
        console.print(f"[yellow]skipped:[/] {message}")
    excluded = sum(r.n_excluded for r in result.filter_reports)
    flagged = ", ".join(f"{r.n_flagged} {r.name}" for r in result.filter_reports if r.n_flagged)
    console.print(f"runs selected: {result.provenance.selection}")
    console.print(f"{result.provenance.n_runs} runs, {excluded} excluded ("
                  + ", ".join(f"{r.name} {r.n_excluded}" for r in result.filter_reports) + ")"
                  + (f"; flagged but kept: {flagged}" if flagged else ""))


def fit_laws(tracking_uri: str, grid: str | None, out_dir: Path | None, *, n_boot: int = N_BOOT,
             workers: int | None = None, console: Console | None = None,
             keys: Collection[str] | None = None) -> list[Path]:
    """``repro fit-laws``: analyse, print tables, write CSV + JSON files; returns their paths."""
    console = console or Console()
    t0 = time.perf_counter()
    result = load(tracking_uri, grid, n_boot, workers, keys)
    print_result(result, console)
    paths = write_outputs(result, out_dir or default_out_dir(grid))
    console.print(f"wrote {len(paths)} files to {paths[0].parent} in {time.perf_counter() - t0:.1f} s")
    return paths


def report(tracking_uri: str, grid: str | None, out_dir: Path | None, *, n_boot: int = N_BOOT,
           workers: int | None = None, console: Console | None = None, keys: Collection[str] | None = None) -> Path:
    """``repro report``: analyse and render ``index.html``; returns its path."""
    console = console or Console()
    t0 = time.perf_counter()
    result = load(tracking_uri, grid, n_boot, workers, keys)
    for message in result.skipped:
        console.print(f"[yellow]skipped:[/] {message}")
    path = render_report(result, out_dir or default_out_dir(grid))
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return path
