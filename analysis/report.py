"""Render an :class:`~analysis.analyze.AnalysisResult` as one self-contained ``index.html``.

The report only renders: no MLflow, no fitting here (docs/design.md §3.9).  Figures are plotnine
PNGs embedded as base64 ``data:`` URIs and the CSS is inline, so the file opens with no network.
"""

from __future__ import annotations

import base64
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd

from repro import schema
from analysis import figures
from analysis.claims import FAIL, NOT_ENOUGH, PASS, format_bound, format_interval, format_percent
from analysis.claims import PAPER_REGIME
from analysis.transfer import EXTRAPOLATION_ABOVE

if TYPE_CHECKING:  # pragma: no cover
    from analysis.analyze import AnalysisResult

#: Rows of the per-run provenance table shown before "and N more" (the CSV has them all).
MAX_RUN_ROWS = 3000


def _num(x: Any, digits: int = 3) -> str:
    """Compact number for tables: 3 significant digits, inf / n/a spelled out."""
    if x is None or x is pd.NA:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _interval(lo: Any, hi: Any) -> str:
    return f"[{_num(lo)}, {_num(hi)}]"


def _img(plot: Any, width: float, height: float) -> str | None:
    if plot is None:
        return None
    return "data:image/png;base64," + base64.b64encode(figures.to_png(plot, width, height)).decode("ascii")


#: The result being rendered, visible to forked figure workers (set only inside _figures).
_RESULT: "AnalysisResult | None" = None


def _render_job(job: tuple[str, str, tuple[Any, ...], float, float]) -> tuple[str, str | None]:
    name, func, args, width, height = job
    assert _RESULT is not None
    return name, _img(getattr(figures, func)(_RESULT, *args), width, height)


def _figures(result: "AnalysisResult", workers: int = 1) -> dict[str, Any]:
    """All figures as data URIs (``None`` where there is nothing to draw).

    Figures are independent and plotnine renders on one core, so they are drawn in
    ``workers`` forked processes (the result is inherited, not pickled).
    """
    global _RESULT
    sel = result.selected
    shifts = sorted(set(sel.loc[sel[schema.P_ARM] == "transfer", schema.C_SHIFT]))
    n_panels = max(1, len({(k.task, k.shift) for k in result.transfer}))
    rows = math.ceil(n_panels / 3)
    # Most expensive first, so the pool's last task is a short one.
    jobs: list[tuple[str, str, tuple[Any, ...], float, float]] = [
        ("multiplier", "multiplier_vs_eps", (), 11, 2.6 * rows + 1),
        ("d_t", "data_transferred", (), 11, 2.6 * rows + 1),
    ]
    for i, shift in enumerate(shifts):
        n_models = sel.loc[sel[schema.C_SHIFT] == shift, schema.P_MODEL].nunique()
        jobs.append((f"shift{i}", "error_vs_n", (shift,), 3.2 * max(n_models, 1) + 1.6, 3.6))
    jobs += [("benefit", "benefit_vs_size", (), 9, 4.5), ("ood", "ood_ladder", (), 10, 4)]
    _RESULT = result
    try:
        if workers > 1 and len(jobs) > 2 and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
                done = dict(pool.map(_render_job, jobs))
        else:
            done = dict(_render_job(job) for job in jobs)
    finally:
        _RESULT = None
    return {
        "error_vs_n": [{"shift": shift, "img": done[f"shift{i}"]} for i, shift in enumerate(shifts)],
        "multiplier": done["multiplier"], "d_t": done["d_t"], "benefit": done["benefit"], "ood": done["ood"],
    }


def _table(df: pd.DataFrame, columns: dict[str, str], limit: int | None = None) -> dict[str, Any]:
    """A DataFrame as header + formatted rows for the template."""
    shown = df if limit is None else df.head(limit)
    rows = [[_num(v) if not isinstance(v, str) else v for v in rec]
            for rec in shown[[c for c in columns]].itertuples(index=False, name=None)]
    return {"header": list(columns.values()), "rows": rows, "more": max(0, len(df) - len(shown))}


def _context(result: "AnalysisResult", workers: int) -> dict[str, Any]:
    from analysis.analyze import fit_table, joint_table, SELECTED_COLUMNS

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
        summary["multiplier"] = [format_bound(v, b) for v, b in zip(summary["multiplier"], summary["multiplier_bound"])]
        summary["multiplier_ci"] = list(map(format_interval, summary["multiplier_lo"], summary["multiplier_hi"],
                                            summary["multiplier_lo_bound"], summary["multiplier_hi_bound"]))
        summary["d_t_nmin"] = [format_bound(v, b) for v, b in zip(summary["d_t_nmin"], summary["d_t_nmin_bound"])]
        summary["d_t_ci"] = list(map(format_interval, summary["d_t_nmin_lo"], summary["d_t_nmin_hi"],
                                     summary["d_t_nmin_lo_bound"], summary["d_t_nmin_hi_bound"]))
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
        "audit": _table(result.audit, {"arm": "arm", "audit_runs": "audit runs", "audited_runs": "paired",
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
                                                 schema.C_RUN_ID: "MLflow run id"}) if len(result.exclusions) else None,
        "runs": _table(runs, {c: c for c in runs.columns}, limit=MAX_RUN_ROWS),
    }


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>repro report: {{ prov.grids|join(', ') or 'all grids' }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: .25rem .45rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
.badge { font-weight: 600; padding: .1rem .45rem; border-radius: .3rem; white-space: nowrap; }
.pass { background: #d4f4d7; color: #145a1c; } .fail { background: #fbd5d5; color: #7a1111; }
.nodata { background: #eee; color: #555; }
.rule { color: #555; font-size: 12px; } .note { color: #555; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
.scroll { max-height: 480px; overflow: auto; }
</style></head>
<body>
<h1>Pre-trained neural operators: scaling and transfer</h1>
<p class="note">Reproduction of Subramanian et al., “Towards Foundation Models for Scientific Machine Learning:
Characterizing Scaling and Transfer Behavior”, NeurIPS 2023 (arXiv 2306.00258).
Grids: <b>{{ prov.grids|join(', ') or 'none' }}</b> · {{ prov.n_runs }} runs collected, {{ prov.n_used }} used ·
generated {{ prov.created }} · bootstrap replicates per curve: {{ prov.n_boot }}.</p>

<h2 id="claims">The paper's claims beside ours</h2>
<table id="claims-table">
<tr><th>#</th><th>The paper finds</th><th>Here</th><th>Stability</th><th>Deciding numbers</th><th>Regime</th><th>Rule</th></tr>
{% for c in claims %}
<tr><td>{{ c.id }}</td><td>{{ c.finding }}</td><td><span class="badge {{ badge[c.verdict] }}">{{ c.verdict }}</span></td>
<td>{{ pct(c.stability) }}</td><td>{{ c.summary }}</td><td class="rule">{{ c.regime }}</td><td class="rule">{{ c.rule }}</td></tr>
{% endfor %}
</table>
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
the budget; the gain is how much that still lowered the test error (budget_audit.csv has every pair).</p>
{% if audit %}{{ tbl(audit) }}{% else %}<p>This grid has no budget-audit block.</p>{% endif %}
{% if compute %}{{ tbl(compute) }}{% endif %}

<h2 id="error-vs-n">Error vs downstream N (E1, E2)</h2>
<p class="note">Points: the learning rate chosen on validation error, one point per seed. Lines and bands: fitted
E + A·N<sup>−α</sup> with 95% bootstrap bands. Dashed green: zero-shot error of the pre-trained model.</p>
{% for f in figs.error_vs_n %}{% if f.img %}<img alt="error vs N: {{ f.shift }}" src="{{ f.img }}">{% endif %}{% endfor %}

<h2 id="multiplier">Data-efficiency multiplier and effective data transferred</h2>
{% if figs.multiplier %}<img alt="multiplier vs eps" src="{{ figs.multiplier }}">{% else %}<p>No pair of scratch and transfer fits.</p>{% endif %}
{% if figs.d_t %}<img alt="D_T vs N" src="{{ figs.d_t }}">{% endif %}
{% if summary %}<p class="note">The multiplier at the level Finding 1 decides on (every level is in multiplier.csv): the
paper's 1e-2 if both arms reach it, else the lowest level inside both arms' fitted ranges, else scratch's error at its
largest N. A fitted law is never inverted below the smallest N run nor beyond {{ extrapolation }}× the largest (the
horizon): an N outside is clipped, so the multiplier, D_T or interval end is a bound, shown “≥” or “≤”; where transfer at
the smallest N already beats ε the multiplier is the lower bound N_scratch(ε)/N_min. Catch-up N = the smallest N where
scratch's fitted error is at or below transfer's, searched up to the horizon (∞: not within it).</p>{{ tbl(summary) }}{% endif %}

<h2 id="model-size">Transfer benefit vs model size (E2)</h2>
{% if figs.benefit %}<img alt="benefit vs model size" src="{{ figs.benefit }}">{% else %}<p>No model-size data.</p>{% endif %}
{% if benefit %}{{ tbl(benefit) }}{% endif %}
{% if joint %}<h3>Joint law err(N, P) = E + A·P<sup>−a</sup> + B·N<sup>−b</sup></h3>{{ tbl(joint) }}{% endif %}

<h2 id="ood">Out-of-distribution ladder (E3)</h2>
{% if figs.ood %}<img alt="OOD ladder" src="{{ figs.ood }}">{% else %}<p>No single-system shift ladder.</p>{% endif %}
{% if zero_shot %}<h3>Zero-shot error per shift</h3>{{ tbl(zero_shot) }}{% endif %}

<h2 id="mixed">Mixed pre-training (E4)</h2>
{% if mixed %}<p class="note">Geometric-mean test relative L2 over seeds.</p>{{ tbl(mixed) }}{% else %}<p>No runs pre-trained on the mixture.</p>{% endif %}

<h2 id="fits">Fitted laws</h2>
{% if fits %}<p class="note">{{ method }}</p>{{ tbl(fits) }}{% else %}<p>No curve had enough points.</p>{% endif %}
{% if skipped %}<h3>Cells not fitted</h3><ul>{% for s in skipped %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}

<h2 id="provenance">Provenance</h2>
<p>Tracking store: <code>{{ prov.tracking_uri }}</code></p>
<p>Runs selected: {{ prov.selection or 'every run in the store' }}</p>
<table><tr><th>status</th><th>runs</th></tr>{% for k, v in prov.status_counts.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<table><tr><th>arm</th><th>runs</th></tr>{% for k, v in prov.arm_counts.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
<table><tr><th>commit</th><th>runs</th></tr>{% for k, v in prov.commits.items() %}<tr><td><code>{{ k }}</code></td><td>{{ v }}</td></tr>{% endfor %}</table>
<h3>Filters</h3>
<table><tr><th>filter</th><th>rule</th><th>before</th><th>after</th><th>excluded</th><th>flagged (kept)</th></tr>
{% for f in filters %}<tr><td>{{ f.name }}</td><td>{{ f.description }}</td><td>{{ f.before }}</td><td>{{ f.after }}</td><td>{{ f.excluded }}</td><td>{{ f.flagged }}</td></tr>{% endfor %}</table>
{% if exclusions %}<details><summary>Excluded runs with reasons ({{ exclusions.rows|length + exclusions.more }})</summary>
<div class="scroll">{{ tbl(exclusions) }}</div></details>{% endif %}
<details><summary>The MLflow run behind every point ({{ runs.rows|length + runs.more }} runs)</summary>
<div class="scroll">{{ tbl(runs) }}</div>{% if runs.more %}<p>… and {{ runs.more }} more in selected_runs.csv.</p>{% endif %}</details>
</body></html>
"""

_TABLE = """{% macro tbl(t) %}<table>
<tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endmacro %}"""


def render_html(result: "AnalysisResult", workers: int | None = None) -> str:
    """The report as an HTML string (figures drawn in ``workers`` processes; default: available CPUs)."""
    from analysis.analyze import default_workers

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    macros = env.from_string(_TABLE).module
    context = _context(result, default_workers() if workers is None else workers)
    method = next(iter(result.curves.values())).method if result.curves else ""
    return env.from_string(TEMPLATE).render(**context, tbl=macros.tbl, method=method, pct=format_percent)


def render_report(analysis_result: "AnalysisResult", out_dir: Path | str, *, workers: int | None = None) -> Path:
    """Write ``out_dir/index.html`` for ``analysis_result`` and return its path.

    Parameters
    ----------
    analysis_result
        The output of :func:`analysis.analyze.analyze`.
    out_dir
        Folder to write into (created if missing).
    workers
        Processes drawing the figures (default: the CPUs available, at most 8).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render_html(analysis_result, workers), encoding="utf-8")
    return path
