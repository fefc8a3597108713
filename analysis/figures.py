"""plotnine figures of an :class:`~analysis.analyze.AnalysisResult` (render only, no fitting).

Every function returns a ``plotnine.ggplot`` (or ``None`` when there is nothing to draw);
:func:`to_png` turns one into PNG bytes for embedding.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from repro import schema
from analysis.transfer import LOWER_BOUND, UPPER_BOUND

if TYPE_CHECKING:  # pragma: no cover
    from plotnine import ggplot

    from analysis.analyze import AnalysisResult

#: Arm colours, the same in every figure.
ARM_COLOURS = {"scratch": "#1f77b4", "transfer": "#d62728", "zero_shot": "#2ca02c"}
_CURVE_POINTS = 60
# Log scales are drawn without minor breaks: matplotlib builds a tick object per minor break,
# which was half the rendering time of a figure (measured), and the major grid reads fine.


def to_png(plot: "ggplot", width: float, height: float, dpi: int = 96) -> bytes:
    """Render ``plot`` to PNG bytes (matplotlib's Agg backend; no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plotnine's notes on dropped rows (inf) are expected
        plot.save(buf, format="png", width=width, height=height, dpi=dpi, verbose=False)
    return buf.getvalue()


_ESTIMATE, _LOWER, _UPPER = "estimate", "lower bound (clipped at the horizon)", "upper bound (clipped at the horizon)"


def _bound_labels(direction: pd.Series) -> pd.Categorical:
    """Point labels for values that may be clipped to the extrapolation horizon."""
    d = direction.to_numpy(int)
    labels = np.select([d == LOWER_BOUND, d == UPPER_BOUND], [_LOWER, _UPPER], _ESTIMATE)
    return pd.Categorical(labels, categories=[_ESTIMATE, _LOWER, _UPPER])


def _bound_shapes():
    """Dots for estimates; up-triangles for lower bounds (the true value lies above), down for upper."""
    from plotnine import scale_shape_manual

    return scale_shape_manual(values={_ESTIMATE: "o", _LOWER: "^", _UPPER: "v"}, name="", drop=False)


def _order_models(df: pd.DataFrame, result: "AnalysisResult", column: str = "model") -> pd.DataFrame:
    """Model sizes as a categorical ordered by parameter count (legends read small -> large)."""
    models = sorted(df[column].astype(str).unique(), key=lambda m: (result.model_params.get(m, math.inf), m))
    return df.assign(**{column: df[column].astype(str).astype(pd.CategoricalDtype(models, ordered=True))})


def _curve_frame(result: "AnalysisResult", task: str, shift: str, model: str) -> pd.DataFrame:
    """Fitted curves with bootstrap bands for the scratch and transfer arms of one panel."""
    from analysis.analyze import CurveKey

    rows = []
    for arm, key in (("scratch", CurveKey(task, "", model, "scratch")), ("transfer", CurveKey(task, shift, model, "transfer"))):
        fit = result.curves.get(key)
        if fit is None:
            continue
        n = np.geomspace(fit.n_range[0], fit.n_range[1], _CURVE_POINTS)
        lo, hi = fit.band(n) if len(fit.bootstrap) else (fit.predict(n), fit.predict(n))
        rows.append(pd.DataFrame({"n": n, "fit": fit.predict(n), "lo": lo, "hi": hi, "arm": arm, "model": model}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["n", "fit", "lo", "hi", "arm", "model"])


def error_vs_n(result: "AnalysisResult", shift: str) -> "ggplot | None":
    """Test error vs downstream N for one shift, one panel per model size.

    Points: LR-selected runs (one per seed); lines and bands: fitted laws with bootstrap
    intervals; dashed line: the zero-shot error.
    """
    from plotnine import (aes, facet_wrap, geom_hline, geom_line, geom_point, geom_ribbon, ggplot, labs,
                          scale_colour_manual, scale_fill_manual, scale_x_log10, scale_y_log10, theme_bw)

    sel = result.selected
    t = sel[(sel[schema.C_SHIFT] == shift) & (sel[schema.P_ARM] == "transfer")]
    if t.empty:
        return None
    task = str(t[schema.C_TASK].iloc[0])
    s = sel[(sel[schema.C_TASK] == task) & (sel[schema.P_ARM] == "scratch")]
    models = sorted(t[schema.P_MODEL].unique(), key=lambda m: result.model_params.get(m, math.inf))
    pts = pd.concat([s, t])[[schema.P_N_TRAIN, schema.C_TEST_REL_L2, schema.P_ARM, schema.P_MODEL]]
    pts = pts[pts[schema.P_MODEL].isin(models)].rename(columns={schema.P_N_TRAIN: "n", schema.C_TEST_REL_L2: "err",
                                                               schema.P_ARM: "arm", schema.P_MODEL: "model"})
    pts["n"] = pts["n"].astype(float)
    curves = pd.concat([_curve_frame(result, task, shift, m) for m in models], ignore_index=True)
    zs = sel[(sel[schema.C_SHIFT] == shift) & (sel[schema.P_ARM] == "zero_shot") & sel[schema.P_MODEL].isin(models)]
    zs = zs.groupby(schema.P_MODEL)[schema.C_TEST_REL_L2].mean().rename("err").reset_index().rename(
        columns={schema.P_MODEL: "model"})
    order = pd.CategoricalDtype(models, ordered=True)
    for frame in (pts, curves, zs):
        frame["model"] = frame["model"].astype(str).astype(order)
    plot = (ggplot(pts, aes("n", "err", colour="arm"))
            + geom_point(alpha=0.7, size=1.6)
            + scale_x_log10(minor_breaks=[]) + scale_y_log10(minor_breaks=[])
            + scale_colour_manual(values=ARM_COLOURS) + scale_fill_manual(values=ARM_COLOURS)
            + facet_wrap("model", nrow=1, labeller="label_both")
            + labs(x="downstream training samples N", y="test relative L2", title=shift, colour="arm", fill="arm")
            + theme_bw())
    if len(curves):
        curves["arm"] = curves["arm"].astype(str)
        plot += geom_ribbon(curves, aes("n", ymin="lo", ymax="hi", fill="arm"), inherit_aes=False, alpha=0.2)
        plot += geom_line(curves, aes("n", "fit", colour="arm"), inherit_aes=False)
    if len(zs):
        plot += geom_hline(zs, aes(yintercept="err"), colour=ARM_COLOURS["zero_shot"], linetype="dashed")
    return plot


def multiplier_vs_eps(result: "AnalysisResult") -> "ggplot | None":
    """Data-efficiency multiplier N_scratch(eps) / N_transfer(eps) with bootstrap bands."""
    from plotnine import geom_hline

    return _banded_log_plot(result, [m.eps_frame() for m in result.transfer.values()], x="eps", y="multiplier",
                            labels=dict(x="target error eps (scratch's fitted error at its observed N)",
                                        y="N_scratch(eps) / N_transfer(eps)", title="Data-efficiency multiplier"),
                            extra=geom_hline(yintercept=1, linetype="dotted"))


def benefit_vs_size(result: "AnalysisResult") -> "ggplot | None":
    """Transfer benefit (geometric mean over N of scratch/transfer error) vs parameter count."""
    from plotnine import aes, geom_hline, geom_line, geom_point, ggplot, labs, scale_x_log10, theme_bw

    df = result.benefit.dropna(subset=["n_params"])
    if df.empty:
        return None
    return (ggplot(df, aes("n_params", "benefit", colour="shift", group="shift"))
            + geom_point(size=2.5) + geom_line() + geom_hline(yintercept=1, linetype="dotted")
            + scale_x_log10(minor_breaks=[])
            + labs(x="parameters", y="benefit = geo-mean over N of err_scratch / err_transfer",
                   title="Transfer benefit vs model size")
            + theme_bw())


def ood_ladder(result: "AnalysisResult") -> "ggplot | None":
    """Benefit and zero-shot error vs shift magnitude, per system and model size."""
    from plotnine import aes, facet_wrap, geom_line, geom_point, ggplot, labs, theme_bw

    df = result.benefit[np.isfinite(result.benefit["magnitude"].to_numpy(float))]
    if df.empty:
        return None
    long = pd.concat([
        df.assign(metric="benefit (scratch / transfer)", value=df["benefit"]),
        df.assign(metric="zero-shot test rel L2", value=df["zero_shot"]),
    ]).dropna(subset=["value"])
    long["ladder"] = long["pde"] + " " + long[schema.P_MODEL]
    long = _order_models(long, result, schema.P_MODEL)
    return (ggplot(long, aes("magnitude", "value", colour="pde", shape=schema.P_MODEL, group="ladder"))
            + geom_point(size=2.5) + geom_line()
            + facet_wrap("metric", scales="free_y")
            + labs(x="shift magnitude (mean log-distance of the downstream range from the upstream range)", y="",
                   title="Out-of-distribution ladder")
            + theme_bw())


def data_transferred(result: "AnalysisResult") -> "ggplot | None":
    """Effective data transferred D_T(N) with bootstrap bands."""
    return _banded_log_plot(result, [m.n_frame() for m in result.transfer.values()], x="n_train", y="d_t",
                            labels=dict(x="downstream N", y="D_T(N) = N_scratch(err_transfer(N)) - N",
                                        title="Effective data transferred (Hernandez et al. 2021)"))


def _banded_log_plot(result: "AnalysisResult", frames: list[pd.DataFrame], *, x: str, y: str,
                     labels: dict[str, str], extra: object = None) -> "ggplot | None":
    """``y`` against ``x`` per model and shift on log-log axes, with its bootstrap band
    (``<y>_lo`` / ``<y>_hi``) and its points shaped by ``<y>_bound`` (estimate or bound)."""
    from plotnine import (aes, facet_wrap, geom_line, geom_point, geom_ribbon, ggplot, labs, scale_x_log10,
                          scale_y_log10, theme_bw)

    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    df = df[np.isfinite(df[y]) & (df[y] > 0)].copy()
    if df.empty:
        return None
    df = _order_models(df, result)
    # a band end at 0 or inf cannot be drawn on a log axis: keep it a decade beyond the curve
    df[f"{y}_lo"] = df[f"{y}_lo"].clip(lower=df[y].min() / 10)
    df[f"{y}_hi"] = df[f"{y}_hi"].where(np.isfinite(df[f"{y}_hi"]), df[y].max() * 10)
    df[x] = df[x].astype(float)
    df["value"] = _bound_labels(df[f"{y}_bound"])
    plot = (ggplot(df, aes(x, y, colour="model", fill="model"))
            + geom_ribbon(aes(ymin=f"{y}_lo", ymax=f"{y}_hi"), alpha=0.15, colour="none")
            + geom_line() + geom_point(aes(shape="value"), size=2) + _bound_shapes())
    if extra is not None:
        plot += extra
    return (plot + scale_x_log10(minor_breaks=[]) + scale_y_log10(minor_breaks=[]) + facet_wrap("shift", ncol=3)
            + labs(**labels) + theme_bw())
