"""Datasets: chunked deterministic generation, the content-addressed HDF5 store, the input
normaliser, coefficient layouts and nested training subsets.

Public API: :func:`default_data_dir`, :func:`dataset_path`, :func:`ensure_split`,
:func:`load_split`, :class:`SplitData`, :class:`DataError`, :class:`Normaliser`,
:func:`fit_normaliser`, :func:`build_inputs`, :func:`to_layout`, :func:`nested_subset`.
"""

from repro.data.layout import to_layout
from repro.data.normalise import Normaliser, build_inputs, fit_normaliser
from repro.data.store import DataError, SplitData, dataset_path, default_data_dir, ensure_split, load_split
from repro.data.subsets import nested_subset

__all__ = [
    "DataError",
    "Normaliser",
    "SplitData",
    "build_inputs",
    "dataset_path",
    "default_data_dir",
    "ensure_split",
    "fit_normaliser",
    "load_split",
    "nested_subset",
    "to_layout",
]
