"""Analytic FLOP count of one FNO forward pass, per sample, for compute-fair comparisons.

Convention: 2 FLOPs per multiply-add of every matrix product (the GEMMs of the lift, the 1x1
convolutions, the spectral layers and the projection).  Elementwise work (bias and residual
adds, GELU, the fast path's complex recombination) is O(w n²) against O(w² n²) and not counted.
Training costs about 3x a forward pass per sample (backward = 2x forward).
"""

from __future__ import annotations

import math
from typing import Sequence

from repro.config import ModelSpec, RunSpec

__all__ = ["forward_flops", "spectral_flops", "training_flops", "unit_training_flops"]


def spectral_flops(in_channels: int, out_channels: int, n_modes: int, resolution: int, spectral: str) -> float:
    """FLOPs of one spectral convolution of one sample on an ``n x n`` grid.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels ``I`` and ``O``.
    n_modes : int
        Kept modes ``m`` per corner block (two ``m x m`` blocks).
    resolution : int
        Grid side ``n``.
    spectral : {"fast", "fused", "reference"}
        ``"fast"``: the truncated-DFT GEMMs of :func:`repro.models.spectral.spectral_fast` --
        forward along x ``(n, n) @ (n, 2m)`` per input channel (``4 m n²`` FLOPs), along y
        ``(m, 2n) @ (2n, 4m)`` (``16 m² n``), and the same two back per output channel.
        ``"reference"``: ``rfft2`` / ``irfft2``, a real-input FFT counted as half the classic
        ``5 N log2 N`` of a complex one, ``N = n²``, per input and per output channel.
        Both: mode mixing, ``2 m²`` modes x ``I x O`` complex multiply-adds of 8 real FLOPs
        (``16 I O m²``).

    Returns
    -------
    float
    """
    i, o, m, n = in_channels, out_channels, n_modes, resolution
    mixing = 16.0 * i * o * m * m
    if spectral in ("fast", "fused"):  # the same GEMMs, in another memory layout
        return (i + o) * (4.0 * m * n * n + 16.0 * m * m * n) + mixing
    if spectral == "reference":
        points = n * n
        return (i + o) * 2.5 * points * math.log2(points) + mixing
    raise ValueError(f"spectral = {spectral!r} is invalid: allowed: fast, fused, reference")


def forward_flops(spec: ModelSpec, resolution: int, spectral: str) -> float:
    """FLOPs of one forward pass of one FNO member on one ``resolution x resolution`` sample.

    Parameters
    ----------
    spec : ModelSpec
        Architecture (``C`` input channels, width ``w``, modes ``m``, ``L`` Fourier layers).
    resolution : int
        Grid side ``n``.
    spectral : {"fast", "reference"}
        Spectral-layer implementation (see :func:`spectral_flops`).

    Returns
    -------
    float
        ``n² (2 C w + L 2 w² + 4 w² + 4 w) + L spectral_flops(w, w, m, n)``: lift ``C -> w``, per
        layer a 1x1 convolution ``w -> w`` and a spectral convolution, projection ``w -> 2w -> 1``.
        The useful work: on a CPU the fused path computes a 1x1 map with a narrow output on rows
        packed with a block-diagonal weight (``repro.models.fno.row_packing``), which also
        multiplies the zeros of that weight; those products are not counted.
    """
    c, w, n_layers = spec.in_channels, spec.width, spec.n_layers
    pixels = float(resolution * resolution)
    pointwise = pixels * (2.0 * c * w + n_layers * 2.0 * w * w + 2.0 * w * 2 * w + 2.0 * 2 * w)
    return pointwise + n_layers * spectral_flops(w, w, spec.n_modes, resolution, spectral)


def training_flops(spec: ModelSpec, resolution: int, spectral: str, *, samples_seen: float, n_val: int,
                   evaluations: int) -> float:
    """FLOPs a training run spends: 3 forward passes' worth (forward + backward) per sample processed,
    plus one forward pass per validation sample and evaluation.  The final test evaluation is
    measurement, not training, and is not counted."""
    per_sample = forward_flops(spec, resolution, spectral)
    return 3.0 * per_sample * samples_seen + per_sample * n_val * evaluations


def unit_training_flops(specs: Sequence[RunSpec], spectral: str) -> float:
    """Training FLOPs of one ensemble unit (every member, every epoch; no evaluations): what
    :func:`repro.compilation.compiles` weighs against a compilation.  Zero-shot units train nothing."""
    return sum(training_flops(s.model_spec, s.data.resolution, spectral, samples_seen=s.epochs * s.n_train,
                              n_val=0, evaluations=0)
               for s in specs if s.arm != "zero_shot")
