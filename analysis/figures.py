"""plotnine figures of an :class:`~analysis.analyze.AnalysisResult` (render only, no fitting).

Every function returns a ``plotnine.ggplot`` (or ``None`` when there is nothing to draw);
:func:`to_svg` turns one into an SVG fragment for inlining in the report (vector, text kept as
text, legend labels tagged), :func:`to_png` into PNG bytes.

Colours are the Okabe–Ito palette (legible on white and for colour-blind readers; its yellow is
left out), and each series also differs by marker or line type, so no figure depends on hue alone.
"""

from __future__ import annotations

import html
import io
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from repro import schema
from analysis.transfer import EITHER, EXACT, LOWER_BOUND, UPPER_BOUND

if TYPE_CHECKING:  # pragma: no cover
    from plotnine import ggplot

    from analysis.analyze import AnalysisResult

#: Okabe & Ito (2008) colour-blind-safe palette, without its yellow (#F0E442), which is illegible on white.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: Arm colours, the same in every figure.
ARM_COLOURS = {"scratch": "#0072B2", "transfer": "#D55E00", "zero_shot": "#009E73"}
#: Arm markers (points) and their names in legends.
ARM_SHAPES = {"scratch": "o", "transfer": "^"}
ARM_LABELS = {"scratch": "scratch", "transfer": "transfer", "zero_shot": "zero-shot"}
#: Line types given to series in turn (model sizes, shifts), with the colours.
LINETYPES = ("solid", "dashed", "dashdot", "dotted")
SHAPES = ("o", "s", "^", "D", "v", "P", "X")
#: Band opacity: visible on white, and where two bands overlap both edges are drawn.
BAND_ALPHA = 0.22
#: A model-size trend is drawn as a line only through at least this many sizes.
MIN_TREND_SIZES = 3
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


#: Class of the SVG ``<g>`` element drawing each legend text (title and labels) in :func:`to_svg` output;
#: its ``data-label`` attribute holds the text.
LEGEND_TEXT = "legend-text"


def to_svg(plot: "ggplot", width: float, height: float, name: str) -> str:
    """Render ``plot`` as an ``<svg>`` element to inline in HTML.

    Glyphs are drawn as paths, so the figure looks the same in every browser (text left to the
    browser's fonts is laid out with other metrics than matplotlib measured, and legends drift);
    each legend title / label is a ``<g class="legend-text" data-label="...">``.  The XML prolog,
    metadata and namespace declarations are dropped (an HTML parser puts ``<svg>`` in the SVG
    namespace itself, so the page names no URL), ids are prefixed with ``name`` so several
    figures can share one page, and the fixed size is replaced by the viewBox alone: the figure
    scales to the width of its container.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import OffsetBox
    from matplotlib.text import Text
    from plotnine._utils.context import plot_context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plotnine's notes on dropped rows (inf) are expected
        view = plot.save_helper(format="svg", width=width, height=height, verbose=False)
        figure = view.figure
        legend: dict[str, str] = {}
        for box in [a for a in figure.artists if isinstance(a, OffsetBox)]:  # plotnine's legends
            stack: list[Any] = [box]
            while stack:
                art = stack.pop()
                if isinstance(art, Text) and art.get_text():
                    gid = f"{LEGEND_TEXT}-{len(legend)}"
                    art.set_gid(gid)
                    legend[gid] = art.get_text()
                stack.extend(reversed(art.get_children()))
        buf = io.BytesIO()
        with plot_context(plot).rc_context, matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": name}):
            figure.savefig(buf, format="svg")
        plt.close(figure)
    return _inline_svg(buf.getvalue().decode("utf-8"), name, legend)


def _inline_svg(svg: str, name: str, legend: dict[str, str]) -> str:
    svg = svg[svg.index("<svg"):]
    for gid, text in legend.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}" class="{LEGEND_TEXT}" data-label="{html.escape(text)}">', 1)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r"<svg\b([^>]*?)\s+width=\"[^\"]*\"\s+height=\"[^\"]*\"", r"<svg\1", svg, count=1)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = svg.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return svg.replace("<svg", f'<svg class="figure" role="img" id="{name}"', 1).strip()


def arms_drawn(plot: "ggplot | None") -> list[str]:
    """The arms (scratch, transfer, zero_shot, ...) with data in some layer of ``plot``, in arm order."""
    if plot is None:
        return []
    arms: set[str] = set()
    own = [getattr(layer, "data", getattr(layer, "_data", None)) for layer in plot.layers]  # None: the plot's
    for frame in [plot.data if any(f is None for f in own) else None, *own]:
        if isinstance(frame, pd.DataFrame) and "arm" in frame and len(frame):
            arms |= set(frame["arm"].astype(str))
    order = list(ARM_LABELS)
    return sorted(arms, key=lambda a: (order.index(a) if a in order else len(order), a))


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


def _series_scales(levels: list[str], name: str, aesthetics: tuple[str, ...] = ("colour", "fill", "linetype"),
                   labels: list[str] | None = None) -> list[Any]:
    """Manual colour / fill / linetype / shape scales for ``levels`` (one merged legend)."""
    from plotnine import scale_colour_manual, scale_fill_manual, scale_linetype_manual, scale_shape_manual

    n = len(levels)
    kw = dict(limits=levels, name=name, drop=False, labels=labels or levels)
    palette = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]
    make = {"colour": lambda: scale_colour_manual(values=palette, **kw),
            "fill": lambda: scale_fill_manual(values=palette, **kw),
            "linetype": lambda: scale_linetype_manual(values=[LINETYPES[i % len(LINETYPES)] for i in range(n)], **kw),
            "shape": lambda: scale_shape_manual(values=[SHAPES[i % len(SHAPES)] for i in range(n)], **kw)}
    return [make[a]() for a in aesthetics]


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


#: Panels per row of the faceted figures.
NCOL = 3


def error_vs_n(result: "AnalysisResult", shift: str) -> "ggplot | None":
    """Test error vs downstream N for one shift, one panel per model size.

    Points: LR-selected runs (one per seed; scratch dots, transfer triangles); lines and bands:
    fitted laws with bootstrap intervals; dashed line: the zero-shot error.  Every arm drawn is
    in the legend.
    """
    from plotnine import (aes, facet_wrap, geom_hline, geom_line, geom_point, geom_ribbon, ggplot, guides, labs,
                          guide_legend, scale_colour_manual, scale_fill_manual, scale_linetype_manual,
                          scale_shape_manual, scale_x_log10, scale_y_log10, theme, theme_bw)

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
    zs["arm"] = "zero_shot"
    zs["what"] = ARM_LABELS["zero_shot"]
    order = pd.CategoricalDtype(models, ordered=True)
    for frame in (pts, curves, zs):
        frame["model"] = frame["model"].astype(str).astype(order)
    fitted = [a for a in ARM_SHAPES if a in set(pts["arm"]) | set(curves["arm"].astype(str))]
    arm_scale = dict(limits=fitted, labels=[ARM_LABELS[a] for a in fitted], name="arm", drop=False)
    plot = (ggplot(pts, aes("n", "err", colour="arm", fill="arm", shape="arm"))
            + scale_x_log10(minor_breaks=[]) + scale_y_log10(minor_breaks=[])
            + scale_colour_manual(values=ARM_COLOURS, **arm_scale) + scale_fill_manual(values=ARM_COLOURS, **arm_scale)
            + scale_shape_manual(values=ARM_SHAPES, **arm_scale)
            + facet_wrap("model", ncol=min(NCOL, len(models)), labeller="label_both")
            + labs(x="downstream training samples N", y="test relative L2", title=shift)
            + theme_bw() + theme(legend_key_width=28))
    if len(curves):
        curves["arm"] = curves["arm"].astype(str)
        plot += geom_ribbon(curves, aes("n", ymin="lo", ymax="hi", fill="arm", colour="arm"), inherit_aes=False,
                            alpha=BAND_ALPHA, size=0.3, show_legend=False)
        plot += geom_line(curves, aes("n", "fit", colour="arm"), inherit_aes=False, size=0.8)
    plot += geom_point(size=2, alpha=0.85, stroke=0.3)
    if len(zs):
        plot += geom_hline(zs, aes(yintercept="err", linetype="what"), colour=ARM_COLOURS["zero_shot"], size=0.8)
        plot += scale_linetype_manual(values={ARM_LABELS["zero_shot"]: "dashed"}, name="pre-trained model")
        plot += guides(linetype=guide_legend(order=2), colour=guide_legend(order=1), fill=guide_legend(order=1),
                       shape=guide_legend(order=1))
    return plot


def multiplier_vs_eps(result: "AnalysisResult") -> "ggplot | None":
    """Data-efficiency multiplier N_scratch(eps) / N_transfer(eps) with bootstrap bands."""
    from plotnine import geom_hline

    return _banded_log_plot(result, [m.eps_frame() for m in result.transfer.values()], x="eps", y="multiplier",
                            labels=dict(x="target error eps (scratch's fitted error at its observed N)",
                                        y="N_scratch(eps) / N_transfer(eps)", title="Data-efficiency multiplier"),
                            extra=geom_hline(yintercept=1, linetype="dotted"))


def unidentified_levels(result: "AnalysisResult") -> list[tuple[str, str, float]]:
    """(shift, model, eps) levels whose multiplier is not drawn: both arms' N lie beyond the same end
    of the horizon (:data:`analysis.transfer.EITHER`), so the multiplier there is not identified."""
    return [(m.shift, m.model, float(e)) for m in result.transfer.values()
            for e, b in zip(m.eps, m.multiplier.bound) if b == EITHER]


def sizes_per_shift(result: "AnalysisResult") -> dict[str, int]:
    """Model sizes with a benefit (and a parameter count) per shift: a trend needs :data:`MIN_TREND_SIZES`."""
    df = result.benefit.dropna(subset=["n_params"])
    return {str(k): int(v) for k, v in df.groupby(schema.C_SHIFT)[schema.P_MODEL].nunique().items()}


def benefit_vs_size(result: "AnalysisResult") -> "ggplot | None":
    """Transfer benefit (geometric mean over N of scratch/transfer error) vs parameter count.

    A shift's points are joined by a line only through at least :data:`MIN_TREND_SIZES` sizes;
    with fewer the legend says so ("2 sizes: no trend") and the points stand alone.
    """
    from plotnine import aes, geom_hline, geom_line, geom_point, ggplot, labs, scale_x_log10, theme_bw

    df = result.benefit.dropna(subset=["n_params"]).copy()
    if df.empty:
        return None
    sizes = sizes_per_shift(result)
    shifts = sorted(sizes)
    names = {s: s if sizes[s] >= MIN_TREND_SIZES else f"{s} ({sizes[s]} size{'s' if sizes[s] != 1 else ''}: no trend)"
             for s in shifts}
    df["series"] = pd.Categorical([names[str(s)] for s in df[schema.C_SHIFT]], categories=[names[s] for s in shifts])
    df["n_params"] = df["n_params"].astype(float)
    trend = df[df[schema.C_SHIFT].map(sizes) >= MIN_TREND_SIZES].sort_values("n_params")
    plot = (ggplot(df, aes("n_params", "benefit", colour="series", shape="series"))
            + geom_hline(yintercept=1, linetype="dotted")
            + geom_point(size=3)
            + _series_scales([names[s] for s in shifts], "shift", ("colour", "shape"))
            + scale_x_log10(minor_breaks=[])
            + labs(x="parameters", y="benefit = geo-mean over N of err_scratch / err_transfer",
                   title="Transfer benefit vs model size")
            + theme_bw())
    if len(trend):
        plot += geom_line(trend, aes(group="series"), size=0.8, show_legend=False)
    return plot


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
    pdes = sorted(long["pde"].astype(str).unique())
    return (ggplot(long, aes("magnitude", "value", colour="pde", shape=schema.P_MODEL, group="ladder"))
            + geom_point(size=3) + geom_line(size=0.8)
            + _series_scales(pdes, "pde", ("colour",))
            + _series_scales(list(long[schema.P_MODEL].cat.categories), "model", ("shape",))
            + facet_wrap("metric", scales="free_y")
            + labs(x="shift magnitude (mean log-distance of the downstream range from the upstream range)", y="",
                   title="Out-of-distribution ladder")
            + theme_bw())


def _d_t_frames(result: "AnalysisResult") -> list[pd.DataFrame]:
    return [m.n_frame() for m in result.transfer.values()]


def d_t_all_clipped(result: "AnalysisResult") -> list[tuple[str, str]]:
    """(shift, model) series of D_T(N) whose every drawable point is clipped at the horizon.

    Such a series is only ``horizon - N`` (a bound set by the extrapolation limit, not by the
    data), so :func:`data_transferred` leaves it out and the report says so in words.
    """
    out = []
    for frame in _d_t_frames(result):
        drawable = frame[np.isfinite(frame["d_t"]) & (frame["d_t"] > 0)]
        if len(drawable) and (drawable["d_t_bound"].to_numpy(int) != EXACT).all():
            out.append((str(frame["shift"].iloc[0]), str(frame["model"].iloc[0])))
    return out


def data_transferred(result: "AnalysisResult") -> "ggplot | None":
    """Effective data transferred D_T(N) with bootstrap bands (series clipped throughout left out)."""
    clipped = set(d_t_all_clipped(result))
    frames = [f for f in _d_t_frames(result)
              if len(f) == 0 or (str(f["shift"].iloc[0]), str(f["model"].iloc[0])) not in clipped]
    return _banded_log_plot(result, frames, x="n_train", y="d_t",
                            labels=dict(x="downstream N", y="D_T(N) = N_scratch(err_transfer(N)) - N",
                                        title="Effective data transferred (Hernandez et al. 2021)"))


def _banded_log_plot(result: "AnalysisResult", frames: list[pd.DataFrame], *, x: str, y: str,
                     labels: dict[str, str], extra: object = None) -> "ggplot | None":
    """``y`` against ``x`` per model and shift on log-log axes, with its bootstrap band
    (``<y>_lo`` / ``<y>_hi``) and its points shaped by ``<y>_bound`` (estimate or bound)."""
    from plotnine import aes, facet_wrap, geom_line, geom_point, geom_ribbon, ggplot, labs, scale_x_log10, \
        scale_y_log10, theme, theme_bw

    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    # both arms clipped at the same end of the horizon: the ratio of two clipped N says nothing
    # about the true one (a "1" there is not "no benefit"), so it is not drawn (unidentified_levels)
    df = df[np.isfinite(df[y]) & (df[y] > 0) & (df[f"{y}_bound"].to_numpy(int) != EITHER)].copy()
    if df.empty:
        return None
    df = _order_models(df, result)
    # a band end at 0 or inf cannot be drawn on a log axis: keep it a decade beyond the curve
    df[f"{y}_lo"] = df[f"{y}_lo"].clip(lower=df[y].min() / 10)
    df[f"{y}_hi"] = df[f"{y}_hi"].where(np.isfinite(df[f"{y}_hi"]), df[y].max() * 10)
    df[x] = df[x].astype(float)
    df["value"] = _bound_labels(df[f"{y}_bound"])
    models = list(df["model"].cat.categories)
    plot = (ggplot(df, aes(x, y, colour="model", fill="model", linetype="model"))
            + geom_ribbon(aes(ymin=f"{y}_lo", ymax=f"{y}_hi"), alpha=BAND_ALPHA, size=0.3, show_legend=False)
            + geom_line(size=0.8) + geom_point(aes(shape="value"), size=2.2) + _bound_shapes()
            + _series_scales(models, "model"))
    if extra is not None:
        plot += extra
    return (plot + scale_x_log10(minor_breaks=[]) + scale_y_log10(minor_breaks=[])
            + facet_wrap("shift", ncol=min(NCOL, df["shift"].nunique()))
            + labs(**labels) + theme_bw() + theme(legend_key_width=28))
