"""Render an :class:`~analysis.analyze.AnalysisResult` as one self-contained ``index.html``.

The report only renders: no fitting here (docs/design.md §3.9).  Figures are plotnine SVGs inlined
at the full content width (vector; glyphs drawn as paths, so they look alike in every browser) and the
CSS is inline, so the file opens with no network.  Wide tables scroll inside their own box; the page
itself never scrolls sideways.

Run ids link to the MLflow UI when its address is known (``ui_url`` or the ``REPRO_UI_URL``
environment variable): ``{ui_url}/#/experiments/{experiment_id}/runs/{run_id}``.  The experiment id
is then read from the tracking store (the only MLflow call here); without either, ids stay text.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from repro import schema
from analysis import figures
from analysis.claims import FAIL, NOT_ENOUGH, PASS
from analysis.numbers import format_estimate, format_percent, table_number
from analysis.claims import PAPER_REGIME
from analysis.transfer import EXTRAPOLATION_ABOVE

if TYPE_CHECKING:  # pragma: no cover
    from analysis.analyze import AnalysisResult

#: Rows of the per-run provenance table shown before "and N more" (the CSV has them all).
MAX_RUN_ROWS = 3000
#: Environment variable with the MLflow UI's address (the fallback of ``ui_url``).
ENV_UI_URL = "REPRO_UI_URL"
#: Figure width in inches: every figure is drawn this wide and shown at the full content width.
FIG_WIDTH = 11.0


def _interval(lo: Any, hi: Any) -> str:
    return f"[{table_number(lo)}, {table_number(hi)}]"


#: The result being rendered, visible to forked figure workers (set only inside _figures).
_RESULT: "AnalysisResult | None" = None


def _render_job(job: tuple[str, str, tuple[Any, ...], float, float]) -> tuple[str, tuple[str | None, list[str]]]:
    """(name, (inline SVG or None, arms drawn))."""
    name, func, args, width, height = job
    assert _RESULT is not None
    plot = getattr(figures, func)(_RESULT, *args)
    if plot is None:
        return name, (None, [])
    return name, (figures.to_svg(plot, width, height, f"fig-{name}"), figures.arms_drawn(plot))


def _figures(result: "AnalysisResult", workers: int = 1) -> dict[str, Any]:
    """All figures as inline SVG (``None`` where there is nothing to draw), with what the text needs.

    Figures are independent and plotnine renders on one core, so they are drawn in
    ``workers`` forked processes (the result is inherited, not pickled).
    """
    global _RESULT
    sel = result.selected
    shifts = sorted(set(sel.loc[sel[schema.P_ARM] == "transfer", schema.C_SHIFT]))
    n_panels = max(1, len({(k.task, k.shift) for k in result.transfer}))
    rows = math.ceil(n_panels / figures.NCOL)
    clipped = figures.d_t_all_clipped(result)
    d_t_rows = math.ceil(max(1, len({k.shift for k in result.transfer if (k.shift, k.model) not in clipped}))
                         / figures.NCOL)
    # Most expensive first, so the pool's last task is a short one.
    jobs: list[tuple[str, str, tuple[Any, ...], float, float]] = [
        ("multiplier", "multiplier_vs_eps", (), FIG_WIDTH, 3.0 * rows + 1.2),
        ("d_t", "data_transferred", (), FIG_WIDTH, 3.0 * d_t_rows + 1.2),
    ]
    for i, shift in enumerate(shifts):
        n_models = sel.loc[(sel[schema.C_SHIFT] == shift) & (sel[schema.P_ARM] == "transfer"), schema.P_MODEL].nunique()
        height = 3.4 * math.ceil(max(n_models, 1) / figures.NCOL) + 1.0
        jobs.append((f"e1-{i}", "error_vs_n", (shift,), FIG_WIDTH, height))
    jobs += [("benefit", "benefit_vs_size", (), FIG_WIDTH, 4.5), ("ood", "ood_ladder", (), FIG_WIDTH, 4.2)]
    _RESULT = result
    try:
        if workers > 1 and len(jobs) > 2 and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
                done = dict(pool.map(_render_job, jobs))
        else:
            done = dict(_render_job(job) for job in jobs)
    finally:
        _RESULT = None
    svg = {name: markupsafe.Markup(img) if img else None for name, (img, _) in done.items()}
    sizes = figures.sizes_per_shift(result)
    return {
        "error_vs_n": [{"shift": shift, "svg": svg[f"e1-{i}"],
                        "arms": [figures.ARM_LABELS.get(a, a) for a in done[f"e1-{i}"][1]]}
                       for i, shift in enumerate(shifts)],
        "multiplier": svg["multiplier"], "d_t": svg["d_t"], "benefit": svg["benefit"], "ood": svg["ood"],
        "d_t_clipped": [f"{m} on {s}" for s, m in clipped],
        "unidentified": [f"{m} on {s} at ε = {e:.3g}" for s, m, e in figures.unidentified_levels(result)],
        "no_trend": [f"{s} ({n} size{'s' if n != 1 else ''})" for s, n in sorted(sizes.items())
                     if n < figures.MIN_TREND_SIZES],
        "min_trend": figures.MIN_TREND_SIZES,
    }


def _run_link(ui_url: str | None, experiment_id: str | None):
    """``run_id -> <a>`` to the MLflow UI, or ``None`` when its address or the experiment is unknown."""
    if not ui_url or not experiment_id:
        return None

    def link(run_id: str) -> markupsafe.Markup:
        href = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return markupsafe.Markup('<a href="{}">{}</a>').format(href, run_id)

    return link


def _experiment_id(tracking_uri: str) -> str | None:
    """The id of the runs' MLflow experiment in ``tracking_uri`` (``None`` if it cannot be read)."""
    try:
        from analysis.collect import _client, _experiment_id as experiment_id

        return str(experiment_id(_client(tracking_uri), tracking_uri))
    except Exception:  # noqa: BLE001 - a link is a convenience: never fail the report for it
        return None


def _table(df: pd.DataFrame, columns: dict[str, str], limit: int | None = None, run_link=None) -> dict[str, Any]:
    """A DataFrame as header + formatted rows for the template (run ids linked by ``run_link``)."""
    shown = df if limit is None else df.head(limit)
    link_at = list(columns).index(schema.C_RUN_ID) if run_link is not None and schema.C_RUN_ID in columns else -1
    rows = [[run_link(v) if i == link_at and isinstance(v, str) and v else table_number(v) if not isinstance(v, str) else v
             for i, v in enumerate(rec)]
            for rec in shown[[c for c in columns]].itertuples(index=False, name=None)]
    return {"header": list(columns.values()), "rows": rows, "more": max(0, len(df) - len(shown))}


def _context(result: "AnalysisResult", workers: int, ui_url: str | None = None) -> dict[str, Any]:
    from analysis.analyze import fit_table, joint_table, SELECTED_COLUMNS

    ui_url = (ui_url or os.environ.get(ENV_UI_URL) or "").strip().rstrip("/") or None
    run_link = _run_link(ui_url, _experiment_id(result.provenance.tracking_uri) if ui_url else None)

    fits = fit_table(result)
    if len(fits):
        for p in ("E", "A", "alpha"):
            fits[f"{p}_ci"] = [_interval(lo, hi) for lo, hi in zip(fits[f"{p}_lo"], fits[f"{p}_hi"])]
        fits["scope"] = np.where(fits["shift"] == "", fits["task"], fits["shift"])
    joint = joint_table(result)
    if len(joint):
        for p in ("E", "A", "a", "B", "b"):
            joint[f"{p}_ci"] = [_interval(lo, hi) for lo, hi in zip(joint[f"{p}_lo"], joint[f"{p}_hi"])]
    summary = result.transfer_summary.copy()  # columns are added below
    if len(summary):
        rows = summary.to_dict("records")
        for name, ci in (("multiplier", "multiplier_ci"), ("d_t_nmin", "d_t_ci")):
            summary[name], summary[ci] = zip(*(format_estimate(row, name) for row in rows))
        summary["catch_up_ci"] = [_interval(a, b) for a, b in zip(summary["catch_up_lo"], summary["catch_up_hi"])]
    runs = result.selected[[c for c in SELECTED_COLUMNS if c in result.selected]]
    filters = [{"name": r.name, "description": r.description, "before": r.before, "after": r.after,
                "excluded": r.n_excluded, "flagged": r.n_flagged} for r in result.filter_reports]
    return {
        "prov": result.provenance,
        "claims": result.claims,
        "badge": {PASS: "pass", FAIL: "fail", NOT_ENOUGH: "nodata"},
        "figs": _figures(result, workers),
        "extrapolation": f"{EXTRAPOLATION_ABOVE:g}",
        "paper_regime": f"{PAPER_REGIME:g}",
        "regime": _table(result.regime, {"arm": "arm", "min_test_rel_l2": "smallest test rel L2",
                                         "median_test_rel_l2": "median", "max_test_rel_l2": "largest"})
        if len(result.regime) else None,
        "regime_min": float(result.regime["min_test_rel_l2"].min()) if len(result.regime) else float("nan"),
        "convergence": _table(result.convergence, {"arm": "arm", "selected_runs": "selected runs",
                                                   "with_diagnostic": "with diagnostic", "converged": "converged",
                                                   "share_converged": "share",
                                                   "median_late_improvement": "median late improvement"})
        if len(result.convergence) else None,
        "audit": _table(result.audit, {"arm": "arm", "lr": "LR audited", "audit_runs": "audit runs",
                                       "audited_runs": "paired",
                                       "budget_factor": "budget ×",
                                       "n_values": "N", "median_gain": "median gain", "max_gain": "largest gain",
                                       "within_tolerance": "within tolerance", "tolerance": "tolerance"})
        if len(result.audit) else None,
        "compute": _table(result.compute, {"arm": "arm", "selected_sample_steps": "sample-steps (selected runs)",
                                           "selected_flops": "FLOPs (selected runs)",
                                           "sweep_flops": "FLOPs (whole LR sweep)",
                                           "pretrain_flops": "pre-training FLOPs inherited",
                                           "median_flops_per_run": "median FLOPs per run"})
        if len(result.compute) else None,
        "skipped": result.skipped,
        "fits": _table(fits, {"scope": "task / shift", "model": "model", "arm": "arm", "n_points": "points",
                              "E": "E", "E_ci": "E 95% CI", "A": "A", "A_ci": "A 95% CI", "alpha": "α",
                              "alpha_ci": "α 95% CI", "law": "law", "delta_aic": "ΔAICc (pure − sat.)",
                              "unidentified": "not identified", "seed_sd": "seed sd", "point_sd": "point sd",
                              "interval_note": "interval",
                              "rms_log_residual": "rms log resid.", "heldout_n": "held-out N",
                              "heldout_rel_error": "held-out rel. error"}) if len(fits) else None,
        "joint": _table(joint, {"task": "task", "shift": "shift", "arm": "arm", "n_models": "sizes",
                                "n_points": "points", "E": "E", "E_ci": "E CI", "A": "A", "a": "a", "a_ci": "a CI",
                                "B": "B", "b": "b", "b_ci": "b CI"}) if len(joint) else None,
        "summary": _table(summary, {"shift": "shift", "model": "model", "eps": "ε", "level": "level",
                                    "n_scratch": "N_scratch(ε)", "n_transfer": "N_transfer(ε)",
                                    "multiplier": "multiplier", "zero_shot_reaches": "zero-shot ≤ ε",
                                    "multiplier_ci": "95% CI",
                                    "multiplier_undefined": "undefined bootstrap share",
                                    "multiplier_censored": "censored bootstrap share", "extrapolated": "N_transfer below grid",
                                    "n_min": "N", "d_t_nmin": "D_T(N)", "d_t_ci": "D_T 95% CI",
                                    "horizon": "horizon N", "catch_up": "catch-up N", "catch_up_ci": "catch-up 95% CI"})
        if len(summary) else None,
        "zero_shot": _table(result.zero_shot, {schema.C_SHIFT: "shift", schema.P_MODEL: "model",
                                               "zero_shot": "zero-shot test rel L2", "magnitude": "shift magnitude",
                                               "n_runs": "runs"}) if len(result.zero_shot) else None,
        "benefit": _table(result.benefit, {schema.C_SHIFT: "shift", schema.P_MODEL: "model", "n_params": "parameters",
                                           "benefit": "benefit", "n_common": "N values", "magnitude": "shift magnitude",
                                           "zero_shot": "zero-shot"}) if len(result.benefit) else None,
        "mixed": _table(result.mixed, {schema.C_TASK: "task", schema.P_MODEL: "model", schema.P_N_TRAIN: "N",
                                       "scratch": "scratch", "transfer_mixed": "fine-tuned (mixture)",
                                       "transfer_single": "fine-tuned (single system)",
                                       "zero_shot_mixed": "zero-shot (mixture)",
                                       "zero_shot_single": "zero-shot (single system)"}) if len(result.mixed) else None,
        "filters": filters,
        "exclusions": _table(result.exclusions, {"filter": "filter", "reason": "reason", schema.P_ARM: "arm",
                                                 schema.C_TASK: "task", schema.P_MODEL: "model",
                                                 schema.P_N_TRAIN: "N", schema.P_LR: "lr", schema.P_SEED: "seed",
                                                 schema.C_RUN_ID: "MLflow run id"}, run_link=run_link)
        if len(result.exclusions) else None,
        "runs": _table(runs, {c: c for c in runs.columns}, limit=MAX_RUN_ROWS, run_link=run_link),
        "ui_url": ui_url if run_link is not None else None,
    }


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>repro report: {{ prov.grids|join(', ') or 'all grids' }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem; color: #222;
       overflow-wrap: break-word; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: .25rem .45rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: .6rem 0; }
.table-wrap > table { margin: 0; }
code { overflow-wrap: anywhere; }
figure.fig { margin: .8rem 0 1.2rem; width: 100%; }
svg.figure { display: block; width: 100%; height: auto; }
figcaption { color: #555; font-size: 12.5px; }
.badge { font-weight: 600; padding: .1rem .45rem; border-radius: .3rem; white-space: nowrap; }
.pass { background: #d4f4d7; color: #145a1c; } .fail { background: #fbd5d5; color: #7a1111; }
.nodata { background: #eee; color: #555; }
.rule { color: #555; font-size: 12px; } .note { color: #555; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
.scroll { max-height: 480px; overflow: auto; }
.scroll > .table-wrap { overflow: visible; margin: 0; }
</style></head>
<body>
<h1>Pre-trained neural operators: scaling and transfer</h1>
<p class="note">Reproduction of Subramanian et al., “Towards Foundation Models for Scientific Machine Learning:
Characterizing Scaling and Transfer Behavior”, NeurIPS 2023 (arXiv 2306.00258).
Grids: <b>{{ prov.grids|join(', ') or 'none' }}</b> · {{ prov.n_runs }} runs collected, {{ prov.n_used }} used ·
generated {{ prov.created }} · bootstrap replicates per curve: {{ prov.n_boot }}.</p>

<h2 id="claims">The paper's claims beside ours</h2>
<div class="table-wrap"><table id="claims-table">
<tr><th>#</th><th>The paper finds</th><th>Here</th><th>Stability</th><th>Deciding numbers</th><th>Regime</th><th>Rule</th></tr>
{% for c in claims %}
<tr><td>{{ c.id }}</td><td>{{ c.finding }}</td><td><span class="badge {{ badge[c.verdict] }}">{{ c.verdict }}</span></td>
<td>{{ pct(c.stability) }}</td><td>{{ c.summary }}</td><td class="rule">{{ c.regime }}</td><td class="rule">{{ c.rule }}</td></tr>
{% endfor %}
</table></div>
<p class="note">Verdicts are decided on 95% intervals from a bootstrap that redraws whole seed curves. Stability = the
share of bootstrap replicates whose point values give the same verdict: near 100% the verdict is firm; a FAIL with low
stability means the point values clear the bar but the interval does not (more seeds would decide it).</p>
<p class="note" id="regime">The paper works near test rel L2 ~{{ paper_regime }}.
{% if regime_min > 5 * paper_regime|float %}<b>These runs reach {{ '%.3g' % regime_min }} at best: a smoke-scale result,
not the paper's regime.</b>{% endif %}</p>
{% if regime %}{{ tbl(regime) }}{% endif %}
<h3 id="convergence">Convergence and compute per arm</h3>
<p class="note">A run converged if its best validation error improved by at most the threshold over the last fifth of
training; an arm compared before it converges measures the budget, not transfer.</p>
{% if convergence %}{{ tbl(convergence) }}{% else %}<p>No convergence diagnostic recorded (runs predate it).</p>{% endif %}
<p class="note">Budget audit: the cosine schedule's final annealing lowers the error in the last fifth whatever the
budget, so the diagnostic above cannot prove convergence alone. Audited cells were trained again with a multiple of
the budget; the gain is how much that still lowered the test error (budget_audit.csv has every pair). Only audits
at the LR the analysis selected for a cell ("selected") measure the budget of a point the curves use; an audit of
another LR of the sweep ("other") converges at its own pace and bounds it at best.</p>
{% if audit %}{{ tbl(audit) }}{% else %}<p>This grid has no budget-audit block.</p>{% endif %}
{% if compute %}{{ tbl(compute) }}{% endif %}

<h2 id="error-vs-n">Error vs downstream N (E1, E2)</h2>
<p class="note">Points: the learning rate chosen on validation error, one point per seed (scratch: dots,
transfer: triangles). Lines and bands: fitted E + A·N<sup>−α</sup> with 95% bootstrap bands. Dashed green line:
zero-shot error of the pre-trained model (no fine-tuning). Every arm drawn is in the legend.</p>
{% for f in figs.error_vs_n %}{% if f.svg %}<figure class="fig" data-figure="e1" data-arms="{{ f.arms|join('|') }}"
aria-label="error vs N: {{ f.shift }}">{{ f.svg }}<figcaption>Error vs downstream N, {{ f.shift }}: {{ f.arms|join(', ') }}.</figcaption></figure>
{% endif %}{% endfor %}

<h2 id="multiplier">Data-efficiency multiplier and effective data transferred</h2>
{% if figs.multiplier %}<figure class="fig" aria-label="multiplier vs eps">{{ figs.multiplier }}</figure>{% else %}<p>No pair of scratch and transfer fits.</p>{% endif %}
{% if figs.unidentified %}<p class="note" id="multiplier-unidentified">Not drawn, because not identified: the
multiplier of {{ figs.unidentified|join('; ') }}. Neither arm's fitted law reaches that error inside the horizon (both N
lie beyond the same end), and the ratio of two clipped values says nothing about the true one (multiplier.csv keeps
them, bound 2).</p>{% endif %}
{% if figs.d_t %}<figure class="fig" aria-label="D_T vs N">{{ figs.d_t }}</figure>{% endif %}
{% if figs.d_t_clipped %}<p class="note" id="d-t-clipped">Effective data transferred D_T(N) is not drawn for
{{ figs.d_t_clipped|join('; ') }}: every point there is clipped at the horizon, so the curve would only be the bound
horizon − N, set by the extrapolation limit and not by the data (the bounds are in d_t.csv).</p>{% endif %}
{% if summary %}<p class="note">The multiplier at the level Finding 1 decides on (every level is in multiplier.csv): the
paper's 1e-2 if both arms reach it, else the lowest level inside both arms' fitted ranges, else scratch's error at its
largest N. A fitted law is never inverted below the smallest N run nor beyond {{ extrapolation }}× the largest (the
horizon): an N outside is clipped, so the multiplier, D_T or interval end is a bound, shown “≥” or “≤”; where transfer at
the smallest N already beats ε the multiplier is the lower bound N_scratch(ε)/N_min. Catch-up N = the smallest N where
scratch's fitted error is at or below transfer's, searched up to the horizon (∞: not within it).</p>{{ tbl(summary) }}{% endif %}

<h2 id="model-size">Transfer benefit vs model size (E2)</h2>
{% if figs.benefit %}<figure class="fig" aria-label="benefit vs model size">{{ figs.benefit }}</figure>
<p class="note" id="no-trend">A line joins a shift's points only through at least {{ figs.min_trend }} model sizes.
{% if figs.no_trend %}Markers only, no trend: {{ figs.no_trend|join('; ') }}.{% endif %}</p>
{% else %}<p>No model-size data.</p>{% endif %}
{% if benefit %}{{ tbl(benefit) }}{% endif %}
{% if joint %}<h3>Joint law err(N, P) = E + A·P<sup>−a</sup> + B·N<sup>−b</sup></h3>{{ tbl(joint) }}{% endif %}

<h2 id="ood">Out-of-distribution ladder (E3)</h2>
{% if figs.ood %}<figure class="fig" aria-label="OOD ladder">{{ figs.ood }}</figure>{% else %}<p>No single-system shift ladder.</p>{% endif %}
{% if zero_shot %}<h3>Zero-shot error per shift</h3>{{ tbl(zero_shot) }}{% endif %}

<h2 id="mixed">Mixed pre-training (E4)</h2>
{% if mixed %}<p class="note">Geometric-mean test relative L2 over seeds.</p>{{ tbl(mixed) }}{% else %}<p>No runs pre-trained on the mixture.</p>{% endif %}

<h2 id="fits">Fitted laws</h2>
{% if fits %}<p class="note">{{ method }}</p>{{ tbl(fits) }}{% else %}<p>No curve had enough points.</p>{% endif %}
{% if skipped %}<h3>Cells not fitted</h3><ul>{% for s in skipped %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}

<h2 id="provenance">Provenance</h2>
<p>Tracking store: <code>{{ prov.tracking_uri }}</code>{% if ui_url %} · MLflow UI: <code>{{ ui_url }}</code>
(run ids below link to it){% endif %}</p>
<p>Runs selected: {{ prov.selection or 'every run in the store' }}</p>
<div class="table-wrap"><table><tr><th>status</th><th>runs</th></tr>{% for k, v in prov.status_counts.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table></div>
<div class="table-wrap"><table><tr><th>arm</th><th>runs</th></tr>{% for k, v in prov.arm_counts.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table></div>
<div class="table-wrap"><table><tr><th>commit</th><th>runs</th></tr>{% for k, v in prov.commits.items() %}<tr><td><code>{{ k }}</code></td><td>{{ v }}</td></tr>{% endfor %}</table></div>
<h3>Filters</h3>
<div class="table-wrap"><table><tr><th>filter</th><th>rule</th><th>before</th><th>after</th><th>excluded</th><th>flagged (kept)</th></tr>
{% for f in filters %}<tr><td>{{ f.name }}</td><td>{{ f.description }}</td><td>{{ f.before }}</td><td>{{ f.after }}</td><td>{{ f.excluded }}</td><td>{{ f.flagged }}</td></tr>{% endfor %}</table></div>
{% if exclusions %}<details><summary>Excluded runs with reasons ({{ exclusions.rows|length + exclusions.more }})</summary>
<div class="scroll">{{ tbl(exclusions) }}</div></details>{% endif %}
<details><summary>The MLflow run behind every point ({{ runs.rows|length + runs.more }} runs)</summary>
<div class="scroll">{{ tbl(runs) }}</div>{% if runs.more %}<p>… and {{ runs.more }} more in selected_runs.csv.</p>{% endif %}</details>
</body></html>
"""

_TABLE = """{% macro tbl(t) %}<div class="table-wrap"><table>
<tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% endmacro %}"""


def render_html(result: "AnalysisResult", workers: int | None = None, *, ui_url: str | None = None) -> str:
    """The report as an HTML string (figures drawn in ``workers`` processes; default: available CPUs).

    ``ui_url``: the MLflow UI's address, to link run ids (default: ``$REPRO_UI_URL``; none: plain text).
    """
    from analysis.analyze import default_workers

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    macros = env.from_string(_TABLE).module
    context = _context(result, default_workers() if workers is None else workers, ui_url)
    method = next(iter(result.curves.values())).method if result.curves else ""
    return env.from_string(TEMPLATE).render(**context, tbl=macros.tbl, method=method, pct=format_percent)


def render_report(analysis_result: "AnalysisResult", out_dir: Path | str, *, workers: int | None = None,
                  ui_url: str | None = None) -> Path:
    """Write ``out_dir/index.html`` for ``analysis_result`` and return its path.

    Parameters
    ----------
    analysis_result
        The output of :func:`analysis.analyze.analyze`.
    out_dir
        Folder to write into (created if missing).
    workers
        Processes drawing the figures (default: the CPUs available, at most 8).
    ui_url
        Address of the MLflow UI serving the tracking store, e.g. ``http://localhost:5000``: run ids
        link to ``{ui_url}/#/experiments/{experiment_id}/runs/{run_id}``.  Default: the
        ``REPRO_UI_URL`` environment variable; without either, run ids are plain text.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render_html(analysis_result, workers, ui_url=ui_url), encoding="utf-8")
    return path
