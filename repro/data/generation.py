"""Deterministic, chunked generation of one dataset split (numpy arrays, ready to store).

Random streams.  Every chunk of every split gets its own ``numpy.random.Generator`` from a
``SeedSequence`` with entropy ``spec.seed`` and spawn key ``(range key, split, chunk, component,
redraw round)``, where the range key is a stable hash of ``(pde, low, high)``.  Hence:

- never the global RNG; the same spec gives byte-identical arrays;
- different parameter ranges (and the mixture) never share sources (the authors' fixed seed 0
  reused identical sources across ranges);
- a dataset with ``stream = "downstream"`` has its own range key (the range's text plus the
  stream's name), so a downstream task on a pre-training range (E4 in distribution:
  poisson(1,5) -> poisson(1,5)) shares no sample with the pre-training set, whose split it would
  otherwise be a prefix of; ``stream = "default"`` keeps the key every dataset had before;
- the resolution is not in the key: the same draws at another grid size (sources are in
  physical units);
- sample i depends only on (spec, split, i): chunks have a fixed size and draw a full chunk's
  worth of random numbers even when partial, so a smaller split is a prefix of a larger one.

Mixed dataset: sample i belongs to component ``i % 3`` of :data:`repro.config.MIXED_COMPONENTS`
(equal thirds, interleaved); its coefficients are stored in the mixed layout and ``system[i]`` is
the component index.  Sparsity: sample i has void fraction ``VOID_FRACTIONS[i % 4]``.

``psi_targeting`` (SYS-2's lam: exact or the authors' table) changes lam, hence the coefficients,
solutions and realised Psi, but not the random draws: the same sources, K, v and targets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from repro.config import COEFFICIENTS, MIXED_COMPONENTS, SPLITS, DatasetSpec
from repro.data.layout import to_layout
from repro.pdes import generate as generate_batch
from repro.pdes.common import Stream
from repro.pdes.sources import void_fractions

#: Samples per chunk: a multiple of 12 so that every full chunk holds equal numbers of each
#: (mixture component, sparsity block); ~0.2 GB of float64 temporaries at 128^2.
CHUNK: int = 192
#: Bumped whenever the generated numbers change for the same spec (part of the file address).
GENERATOR_VERSION: int = 1


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, start + len)`` of a split, as stored (float32 fields and coefficients)."""

    start: int
    fields: np.ndarray  # (B, 2, n, n) float32: [source, solution]
    tensor: np.ndarray  # (B, T) float32
    ratio: np.ndarray | None  # (B,) float64, advdiff and mixed (NaN for non-advdiff rows)
    system: np.ndarray | None  # (B,) int8, mixed only


def range_key(pde: str, low: float | None, high: float | None, stream: str = "default") -> int:
    """Stable 64-bit key of a physics range and random stream (part of every stream key)."""
    text = f"{pde}|{low!r}|{high!r}" + ("" if stream == "default" else f"|{stream}")
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def chunk_stream(spec: DatasetSpec, split: str, chunk: int, component: int = 0) -> Stream:
    """The :data:`repro.pdes.Stream` of one chunk (and mixture component) of a split."""
    base = (range_key(spec.pde, spec.low, spec.high, spec.stream), SPLITS.index(split), int(chunk), int(component))

    def stream(round_: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(int(spec.seed), spawn_key=base + (int(round_),)))

    return stream


def _options(spec: DatasetSpec, pde: str) -> dict[str, str]:
    """Generator options of ``spec`` that apply to system ``pde`` (SYS-2's lam targeting)."""
    return {"psi_targeting": spec.psi_targeting} if pde == "advdiff" else {}


def n_chunks(size: int) -> int:
    """Number of chunks of a split with ``size`` samples."""
    return -(-size // CHUNK)


def generate_chunk(spec: DatasetSpec, split: str, chunk: int) -> Chunk:
    """Generate chunk ``chunk`` of ``split`` (the last one may be partial).

    Parameters
    ----------
    spec
        The dataset.
    split
        ``"train"``, ``"val"`` or ``"test"``.
    chunk
        Chunk index; rows ``[chunk * CHUNK, min((chunk + 1) * CHUNK, size))``.
    """
    size = spec.split_size(split)
    start = chunk * CHUNK
    stop = min(start + CHUNK, size)
    if not 0 <= start < stop:
        raise ValueError(f"chunk {chunk} is outside the {split} split ({size} samples)")
    index = np.arange(start, stop)
    n = spec.resolution
    if spec.pde != "mixed":
        batch = generate_batch(spec.pde, chunk_stream(spec, split, chunk), void_fractions(index), n,
                               spec.low, spec.high, draw_size=CHUNK, **_options(spec, spec.pde))
        fields = np.stack([batch.source, batch.solution], axis=1).astype(np.float32)  # (B, 2, n, n)
        ratio = None if batch.ratio is None else np.asarray(batch.ratio, dtype=np.float64)
        return Chunk(start, fields, np.asarray(batch.tensor, dtype=np.float32), ratio, None)

    b = stop - start
    fields = np.empty((b, 2, n, n), dtype=np.float32)
    tensor = np.zeros((b, len(COEFFICIENTS["mixed"])), dtype=np.float32)
    ratio = np.full(b, np.nan)
    system = (index % len(MIXED_COMPONENTS)).astype(np.int8)
    per = CHUNK // len(MIXED_COMPONENTS)
    for c, (pde, low, high) in enumerate(MIXED_COMPONENTS):
        rows = np.flatnonzero(system == c)
        if rows.size == 0:
            continue
        batch = generate_batch(pde, chunk_stream(spec, split, chunk, component=c + 1),
                               void_fractions(index[rows]), n, low, high, draw_size=per, **_options(spec, pde))
        fields[rows, 0] = batch.source
        fields[rows, 1] = batch.solution
        tensor[rows] = to_layout(pde, np.asarray(batch.tensor), "mixed")
        if batch.ratio is not None:
            ratio[rows] = batch.ratio
    return Chunk(start, fields, tensor, ratio, system)
