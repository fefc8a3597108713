"""The input normaliser of docs/protocol.md §2.1.

Per-sample source-norm rescaling + coefficient medians.

Network input for sample i: ``[f, t_1 1, ..., t_T 1] / c_i`` with ``c_i = (||f_i||_2 dx dy) / s_f``,
and coefficient channel j additionally divided by ``s_tj``.  ``s_f`` is the median of
``||f||_2 dx dy`` and ``s_tj`` the median of ``|t_j|`` over the *training* split (non-zero values
only, so that the mixed layout's channels which are zero for some systems get a meaningful scale).
Dividing f and every coefficient by the same c leaves the solution u unchanged, so the target
stays in physical units.  A trained model carries its normaliser (fine-tuning and zero-shot use
the pre-training statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from repro.pdes.xp import Array, namespace


@dataclass(frozen=True)
class Normaliser:
    """Scales fitted on a training split.

    Attributes
    ----------
    source_scale
        ``s_f`` = median over samples of ``||f||_2 * dx * dy`` (dx = dy = 1/n).
    coefficient_scales
        ``s_tj`` = median of the non-zero ``|t_j|`` per coefficient (1.0 for an all-zero column).
    """

    source_scale: float
    coefficient_scales: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in HDF5 attrs and checkpoints)."""
        return {"source_scale": float(self.source_scale),
                "coefficient_scales": [float(s) for s in self.coefficient_scales]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Normaliser":
        """Inverse of :meth:`to_dict`."""
        return cls(source_scale=float(d["source_scale"]),
                   coefficient_scales=tuple(float(s) for s in d["coefficient_scales"]))


def source_norms(source: Array) -> Array:
    """``||f||_2 * dx * dy`` per sample for sources (N, n, n): sqrt(sum f^2) / n^2."""
    xp = namespace(source)
    n = source.shape[-1]
    s = xp.float64(source) if xp.name == "numpy" else source
    return xp.sqrt(xp.sum(s * s, axis=(-2, -1))) / float(n * n)


def fit_normaliser_from_norms(norms: np.ndarray, tensor: np.ndarray) -> Normaliser:
    """:func:`fit_normaliser` from precomputed source norms (N,) (used while streaming to disk)."""
    norms = np.asarray(norms, dtype=np.float64)
    tensor = np.abs(np.asarray(tensor, dtype=np.float64))
    scales = []
    for j in range(tensor.shape[1]):
        col = tensor[:, j]
        nz = col[col != 0]
        scales.append(float(np.median(nz)) if nz.size else 1.0)
    return Normaliser(source_scale=float(np.median(norms)), coefficient_scales=tuple(scales))


def fit_normaliser(source: np.ndarray, tensor: np.ndarray) -> Normaliser:
    """Fit the normaliser on a training split.

    Parameters
    ----------
    source
        Sources (N, n, n).
    tensor
        Coefficients (N, T), native or mixed layout.

    Returns
    -------
    Normaliser
        ``s_f`` = median ``||f||_2 dx dy``; ``s_tj`` = median of the non-zero ``|t_j|`` (1.0 if none).
    """
    return fit_normaliser_from_norms(np.asarray(source_norms(np.asarray(source))), tensor)


def build_inputs(source: Array, tensor: Array, normaliser: Normaliser) -> Array:
    """Network inputs (N, 1 + T, n, n) float32 per docs/protocol.md §2.1.

    Works on numpy arrays and on torch tensors (any device) alike.

    Parameters
    ----------
    source
        Sources (N, n, n).
    tensor
        Coefficients (N, T) in the layout the normaliser was fitted on.
    normaliser
        Training-split scales.
    """
    xp = namespace(source, tensor)
    if tensor.shape[1] != len(normaliser.coefficient_scales):
        raise ValueError(f"tensor has {tensor.shape[1]} coefficients, the normaliser "
                         f"{len(normaliser.coefficient_scales)}")
    f = xp.float32(source)
    n = f.shape[-1]
    c = source_norms(f) / normaliser.source_scale  # (N,)
    c = xp.float32(c)
    scales = xp.asarray(np.asarray(normaliser.coefficient_scales, dtype=np.float32), like=f)  # (T,)
    coef = xp.float32(tensor) / c[:, None] / scales[None, :]  # (N, T)
    # (N, T) -> (N, T, n, n): each coefficient as a constant channel.
    channels = xp.broadcast_to(coef[:, :, None, None], (coef.shape[0], coef.shape[1], n, n))
    return xp.concat([(f / c[:, None, None])[:, None, :, :], channels], axis=1)  # (N, 1+T, n, n)
