"""Content-addressed HDF5 store of dataset splits: write atomically, verify, load.

File layout (readable by plain h5py; compatible with the authors' loaders):

- ``fields``  (N, 2, n, n) float32 = [source, solution]
- ``tensor``  (N, T) float32, coefficients in ``COEFFICIENTS[pde]`` order
- ``ratio``   (N,) float64, realised advection-to-diffusion ratio (advdiff; mixed: NaN off SYS-2)
- ``system``  (N,) int8, mixture component index (mixed only)
- attrs: ``spec`` (canonical JSON of the DatasetSpec), ``split``, ``seed``, ``version``
  (repro.__version__), ``key`` (JSON of the fields that determine this split's content),
  ``content_hash`` (sha256 over the arrays), ``normaliser`` (JSON, train split only).

The file name carries a hash of ``key``, so asking for the same split again finds the same file;
it is reused only after it verifies: the content hash over the arrays, and the attributes that
change training checked against what they must be -- ``key`` against the spec and, for the train
split, ``normaliser`` against the normaliser refitted from the (hashed) arrays it was fitted on
(and ``coefficients``, the column order a plain-h5py reader relies on, where stored, against
``COEFFICIENTS[pde]``).  The normaliser is a function of the hashed content, so the content hash
(the runs' ``data_hash`` tags) covers it without changing value; an edited normaliser fails
verification, and is regenerated or refused, as edited arrays are.  Files are written chunk by
chunk to a temporary name in the same directory and renamed when complete, so a crash never
leaves a half-written file under the real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

import repro
from repro.config import COEFFICIENTS, SPLITS, DatasetSpec, canonical_json, repro_home, spec_hash
from repro.data.generation import CHUNK, GENERATOR_VERSION, generate_chunk, n_chunks
from repro.data.normalise import Normaliser, fit_normaliser_from_norms, source_norms
from repro.progress import Bar

log = logging.getLogger("repro.data")

#: Environment variable overriding the data directory.
ENV_DATA_DIR = "REPRO_DATA_DIR"
#: Arrays covered by the content hash, in hashing order.
_HASHED = ("fields", "tensor", "ratio", "system")
#: Relative tolerance of the stored normaliser against the one refitted on load.  The refit
#: repeats the write's float64 arithmetic on the same float32 arrays, so it agrees to the last
#: bit on one numpy; the slack only absorbs a summation order another numpy version might use.
NORMALISER_RTOL = 1e-9


class DataError(ValueError):
    """A dataset file is missing, corrupt, truncated or does not match its spec."""


@dataclass(frozen=True)
class SplitData:
    """One split in memory.

    Attributes
    ----------
    source, solution
        (N, n, n) float32.
    tensor
        (N, T) float32 coefficients, ``T = len(COEFFICIENTS[spec.pde])``.
    ratio
        (N,) realised Psi (advdiff, mixed) or ``None``.
    system
        (N,) int8 mixture component (mixed) or ``None``.
    content_hash
        sha256 of the stored arrays (verified on load).
    normaliser
        Fitted on this split when it is the training split, else ``None``.
    path
        The HDF5 file.
    """

    source: np.ndarray
    solution: np.ndarray
    tensor: np.ndarray
    ratio: np.ndarray | None
    content_hash: str
    normaliser: Normaliser | None
    path: Path
    spec: DatasetSpec
    split: str
    system: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source.shape[0])


# --- addressing ------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$REPRO_DATA_DIR``, else ``<$REPRO_HOME or ./.repro>/data``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    return repro_home() / "data"


def split_key(spec: DatasetSpec, split: str) -> dict[str, Any]:
    """The fields that determine a split's content (and nothing else: not the other splits' sizes).

    Options added later (``stream``, ``psi_targeting``) enter only when set away from their
    default, so the files of existing datasets keep their names.
    """
    key = {
        "pde": spec.pde,
        "low": spec.low,
        "high": spec.high,
        "resolution": spec.resolution,
        "seed": spec.seed,
        "split": split,
        "size": spec.split_size(split),
        "generator": GENERATOR_VERSION,
        "chunk": CHUNK,
    }
    if spec.stream != "default":
        key["stream"] = spec.stream
    if spec.psi_targeting != "exact":
        key["psi_targeting"] = spec.psi_targeting
    return key


def dataset_path(spec: DatasetSpec, split: str, data_dir: Path) -> Path:
    """Content-addressed file of one split, e.g. ``poisson-1-5_r64_train_<hash16>.h5``.

    Parameters
    ----------
    spec
        The dataset.
    split
        ``"train"``, ``"val"`` or ``"test"``.
    data_dir
        Directory holding the files.
    """
    key = split_key(spec, split)
    # Options away from their default show in the name too (the hash alone tells files apart).
    extra = [v for v, default in ((spec.stream, "default"), (spec.psi_targeting, "exact")) if v != default]
    label = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join([spec.label, *extra])).strip("-")
    return Path(data_dir) / f"{label}_r{spec.resolution}_{split}{key['size']}_{spec_hash(key)}.h5"


# --- writing ---------------------------------------------------------------------------------


class _ContentHasher:
    """sha256 over named arrays fed in row chunks: digest of (name, dtype, shape, bytes) each."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
        self.shapes = shapes
        self.parts = {name: hashlib.sha256() for name in shapes}

    def update(self, name: str, rows: np.ndarray) -> None:
        self.parts[name].update(np.ascontiguousarray(rows).tobytes())

    def hexdigest(self) -> str:
        top = hashlib.sha256()
        for name in _HASHED:
            if name in self.shapes:
                shape, dtype = self.shapes[name]
                top.update(f"{name}:{dtype}:{shape}:{self.parts[name].hexdigest()}\n".encode())
        return top.hexdigest()


def _layout(spec: DatasetSpec, split: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the arrays stored for this split."""
    n, size = spec.resolution, spec.split_size(split)
    out = {"fields": ((size, 2, n, n), "<f4"), "tensor": ((size, len(COEFFICIENTS[spec.pde])), "<f4")}
    if spec.pde in ("advdiff", "mixed"):
        out["ratio"] = ((size,), "<f8")
    if spec.pde == "mixed":
        out["system"] = ((size,), "|i1")
    return out


def _write(spec: DatasetSpec, split: str, path: Path, progress: bool) -> None:
    """Generate the split chunk by chunk into ``path`` via a temporary file + rename."""
    shapes = _layout(spec, split)
    size = spec.split_size(split)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    hasher = _ContentHasher(shapes)
    norms = np.empty(size)
    tensors = np.empty(shapes["tensor"][0], dtype=np.float32)
    try:
        with h5py.File(tmp, "w") as h5, Bar(f"{spec.label} {split}", size, enabled=progress) as bar:
            dsets = {name: h5.create_dataset(name, shape=shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
            for c in range(n_chunks(size)):
                chunk = generate_chunk(spec, split, c)
                rows = slice(chunk.start, chunk.start + chunk.fields.shape[0])
                arrays = {"fields": chunk.fields, "tensor": chunk.tensor, "ratio": chunk.ratio, "system": chunk.system}
                for name in dsets:
                    dsets[name][rows] = arrays[name]
                    hasher.update(name, np.asarray(arrays[name], dtype=np.dtype(shapes[name][1])))
                norms[rows] = source_norms(chunk.fields[:, 0])
                tensors[rows] = chunk.tensor
                bar.advance(chunk.fields.shape[0])
            h5.attrs["spec"] = canonical_json(spec)
            h5.attrs["split"] = split
            h5.attrs["seed"] = spec.seed
            h5.attrs["version"] = repro.__version__
            h5.attrs["key"] = canonical_json(split_key(spec, split))
            h5.attrs["coefficients"] = json.dumps(list(COEFFICIENTS[spec.pde]))
            h5.attrs["content_hash"] = hasher.hexdigest()
            if split == "train":
                h5.attrs["normaliser"] = json.dumps(fit_normaliser_from_norms(norms, tensors).to_dict())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- reading and verifying ---------------------------------------------------------------------


def _rows(size: int) -> Iterator[slice]:
    for start in range(0, size, CHUNK):
        yield slice(start, min(start + CHUNK, size))


def _read(path: Path, spec: DatasetSpec, split: str, keep: bool) -> dict[str, Any]:
    """Open, check attrs and shapes, re-hash every array (and keep them when ``keep``).

    Raises :class:`DataError` naming the file and the problem.
    """
    if not path.exists():
        raise DataError(f"{path}: no such dataset file (generate it with `repro generate` or ensure_split)")
    shapes = _layout(spec, split)
    try:
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs)
            want_key = canonical_json(split_key(spec, split))
            if attrs.get("key") != want_key:
                raise DataError(f"{path}: built for a different spec (key {attrs.get('key')!r}, expected {want_key})")
            for name, (shape, dtype) in shapes.items():
                if name not in h5 or h5[name].shape != shape or h5[name].dtype != np.dtype(dtype):
                    got = (h5[name].shape, str(h5[name].dtype)) if name in h5 else "missing"
                    raise DataError(f"{path}: dataset {name!r} is {got}, expected {shape} {dtype}")
            hasher = _ContentHasher(shapes)
            out: dict[str, Any] = {}
            size, n = spec.split_size(split), spec.resolution
            if keep:
                out["source"] = np.empty((size, n, n), dtype=np.float32)
                out["solution"] = np.empty((size, n, n), dtype=np.float32)
            norms = np.empty(size) if split == "train" else None
            for rows in _rows(size):
                block = h5["fields"][rows]  # (B, 2, n, n)
                hasher.update("fields", block)
                if norms is not None:
                    norms[rows] = source_norms(block[:, 0])
                if keep:
                    out["source"][rows] = block[:, 0]
                    out["solution"][rows] = block[:, 1]
            for name in ("tensor", "ratio", "system"):
                if name in shapes:
                    arr = h5[name][()]
                    hasher.update(name, arr)
                    out[name] = arr
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable or truncated HDF5 file ({first})") from None
    digest = hasher.hexdigest()
    if attrs.get("content_hash") != digest:
        raise DataError(f"{path}: content hash mismatch (stored {attrs.get('content_hash')}, computed {digest})")
    _check_attrs(path, spec, attrs)
    if norms is not None:
        out["normaliser"] = _check_normaliser(path, attrs, fit_normaliser_from_norms(norms, out["tensor"]))
    out["content_hash"] = digest
    out["attrs"] = attrs
    return out


def _check_attrs(path: Path, spec: DatasetSpec, attrs: dict[str, Any]) -> None:
    """The coefficient order a plain-h5py reader acts on, where stored, is the spec's."""
    want = json.dumps(list(COEFFICIENTS[spec.pde]))
    if "coefficients" in attrs and attrs["coefficients"] != want:
        raise DataError(f"{path}: attribute 'coefficients' is {attrs.get('coefficients')!r}, expected {want}")


def _check_normaliser(path: Path, attrs: dict[str, Any], refit: Normaliser) -> Normaliser:
    """The train split's stored ``normaliser`` attribute, verified against ``refit`` (the
    normaliser fitted again on the verified arrays): training reads the attribute, so an edited
    one must fail verification as edited arrays do."""
    if "normaliser" not in attrs:
        raise DataError(f"{path}: training split without a stored normaliser (attribute 'normaliser')")
    try:
        stored = Normaliser.from_dict(json.loads(attrs["normaliser"]))
    except (TypeError, ValueError, KeyError) as err:
        raise DataError(f"{path}: attribute 'normaliser' is malformed ({type(err).__name__}: {err})") from None
    values = (stored.source_scale, *stored.coefficient_scales)
    refitted = (refit.source_scale, *refit.coefficient_scales)
    if len(values) != len(refitted) or not all(
            math.isclose(a, b, rel_tol=NORMALISER_RTOL, abs_tol=0.0) for a, b in zip(values, refitted)):
        raise DataError(f"{path}: attribute 'normaliser' does not match the stored arrays (stored "
                        f"{canonical_json(stored.to_dict())}, refitted {canonical_json(refit.to_dict())})")
    return stored


def ensure_split(spec: DatasetSpec, split: str, data_dir: Path, *, progress: bool = False) -> Path:
    """Return the verified file of a split, generating it if absent or bad.

    A present file is re-hashed; if it is corrupt, truncated or its hash does not match, a
    warning naming the file is logged and the split is regenerated (never silently used).

    Parameters
    ----------
    spec
        The dataset.
    split
        ``"train"``, ``"val"`` or ``"test"``.
    data_dir
        Directory of the store (created if needed).
    progress
        Show a rich progress bar while generating.

    Returns
    -------
    pathlib.Path
        The split's HDF5 file.
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is invalid: allowed: {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    path = dataset_path(spec, split, data_dir)
    if path.exists():
        try:
            _read(path, spec, split, keep=False)
            return path
        except DataError as err:
            log.warning("%s; regenerating", err)
    return _regenerate(spec, split, data_dir, progress=progress)


def _regenerate(spec: DatasetSpec, split: str, data_dir: Path, *, progress: bool = False) -> Path:
    """(Re)write a split's file without reading what is there: the caller already found it
    missing or bad (re-hashing a corrupt file a second time only costs time)."""
    path = dataset_path(spec, split, Path(data_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(spec, split, path, progress)
    return path


def load_split(spec: DatasetSpec, split: str, data_dir: Path, *, rebuild: bool = False) -> SplitData:
    """Load a split into memory, verifying its content hash.

    With ``rebuild``, a missing or bad file is regenerated (a warning names it) and loaded, so
    verified, once more: the bad file is hashed once, not again by :func:`ensure_split`.

    Raises
    ------
    DataError
        The file is missing, corrupt, truncated, or was built for another spec (without
        ``rebuild``).
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is invalid: allowed: {', '.join(SPLITS)}")
    path = dataset_path(spec, split, Path(data_dir))
    try:
        d = _read(path, spec, split, keep=True)
    except DataError as err:
        if not rebuild:
            raise
        log.warning("%s; regenerating", err)
        _regenerate(spec, split, data_dir)
        d = _read(path, spec, split, keep=True)
    normaliser = d.get("normaliser")  # train split: the stored one, verified by _read
    return SplitData(
        source=d["source"], solution=d["solution"], tensor=d["tensor"], ratio=d.get("ratio"),
        content_hash=d["content_hash"], normaliser=normaliser, path=path, spec=spec, split=split,
        system=d.get("system"),
    )
