"""How analysis numbers are written: claim and console text (3 significant digits, bounds and
intervals) and report tables (thousands separators, exponents for very large or small values).
One module, so the report, the console and the claims never disagree on a number."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from analysis.transfer import EITHER, EXACT, LOWER_BOUND, UPPER_BOUND

__all__ = ["format_bound", "format_interval", "format_number", "format_percent", "table_number"]


def _parse(x: object) -> float | str:
    """``x`` as a float, or the text it shows as: itself when it is not a number, ``n/a`` for NaN."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(v) else v


def format_number(x: object) -> str:
    """Three significant digits for console and claim text; ``n/a`` for missing, ``inf`` spelled out."""
    v = "n/a" if x is None else _parse(x)
    if isinstance(v, str):
        return v
    return "inf" if math.isinf(v) else f"{v:.3g}"


def format_percent(x: object) -> str:
    """A share as a whole percent; ``n/a`` for missing."""
    v = float(x)  # type: ignore[arg-type]
    return "n/a" if math.isnan(v) else f"{v:.0%}"


#: How a value clipped to the extrapolation horizon is shown (analysis.transfer's directions).
_BOUND_PREFIX = {LOWER_BOUND: "≥", UPPER_BOUND: "≤", EITHER: "~"}


def format_bound(x: object, direction: int) -> str:
    """:func:`format_number`, prefixed ``≥`` for a lower bound, ``≤`` for an upper bound and ``~``
    for an interval end that clipped replicates could move either way."""
    return _BOUND_PREFIX.get(int(direction), "") + format_number(x)


def format_interval(lo: object, hi: object, lo_direction: int = EXACT, hi_direction: int = EXACT) -> str:
    """``[lo, hi]`` with each end as :func:`format_bound` shows it."""
    return f"[{format_bound(lo, lo_direction)}, {format_bound(hi, hi_direction)}]"


def format_estimate(columns: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(point, interval) texts of the bounded estimate ``name``, read from columns named as
    :meth:`analysis.transfer.Estimate.columns` names them (a table row or one column's scalars)."""
    return (format_bound(columns[name], columns[f"{name}_bound"]),
            format_interval(columns[f"{name}_lo"], columns[f"{name}_hi"], columns[f"{name}_lo_bound"],
                            columns[f"{name}_hi_bound"]))


def table_number(x: Any, digits: int = 3) -> str:
    """Compact number for tables: 3 significant digits, inf / n/a spelled out."""
    if x is None or x is pd.NA:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    v = _parse(x)
    if isinstance(v, str):
        return v
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"
