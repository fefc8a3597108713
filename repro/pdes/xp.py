"""A tiny array-namespace shim so that the same PDE code runs on numpy (CPU) and torch (GPU).

``repro.pdes`` must not import torch (import-linter forbids it: the data layer has to work
without the training extra).  Instead we look at the *type of the array we were given*: a
torch tensor can only exist if torch is already imported, so we take the module object from
``sys.modules`` and never import it ourselves.

Only the handful of operations the generators need are wrapped; everything else (``+``,
``*``, slicing, ``.real``, broadcasting) is spelled the same in numpy and torch.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import scipy.fft

Array = Any  # numpy.ndarray or torch.Tensor


class NumpyBackend:
    """numpy arrays; FFTs via :mod:`scipy.fft` with all cores (3-4x numpy.fft here)."""

    name = "numpy"

    def asarray(self, a: Any, like: Array | None = None, dtype: Any = None) -> Array:
        """``a`` as a numpy array (``like`` fixes the dtype when ``dtype`` is not given)."""
        if dtype is None and like is not None and not np.iscomplexobj(a):
            dtype = like.dtype
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return np.asarray(a)

    def rfft2(self, x: Array) -> Array:
        return scipy.fft.rfft2(x, axes=(-2, -1), workers=-1)

    def irfft2(self, x: Array, n: int) -> Array:
        return scipy.fft.irfft2(x, s=(n, n), axes=(-2, -1), workers=-1)

    def sum(self, x: Array, axis: int | Sequence[int]) -> Array:
        return np.sum(x, axis=tuple(axis) if isinstance(axis, (list, tuple)) else axis)

    def amax(self, x: Array, axis: int | Sequence[int]) -> Array:
        return np.max(x, axis=tuple(axis) if isinstance(axis, (list, tuple)) else axis)

    def median(self, x: Array, axis: int) -> Array:
        return np.median(x, axis=axis)

    def mean(self, x: Array, axis: int | Sequence[int], keepdims: bool = False) -> Array:
        return np.mean(x, axis=tuple(axis) if isinstance(axis, (list, tuple)) else axis, keepdims=keepdims)

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        return np.concatenate(xs, axis=axis)

    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        return np.zeros(shape, dtype=like.dtype)

    def stack(self, xs: Sequence[Array], axis: int) -> Array:
        return np.stack(xs, axis=axis)

    def index(self, idx: np.ndarray, like: Array) -> Array:
        """An integer index array usable on ``like``."""
        return np.asarray(idx, dtype=np.intp)

    def float32(self, x: Array) -> Array:
        return np.asarray(x, dtype=np.float32)

    def float64(self, x: Array) -> Array:
        return np.asarray(x, dtype=np.float64)

    def __getattr__(self, name: str) -> Any:
        # exp, sqrt, log, abs, where, einsum, cos, sin, isfinite ... are shared names.
        return getattr(np, name)


class TorchBackend:
    """torch tensors on any device; only used when the caller hands us tensors."""

    name = "torch"

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def asarray(self, a: Any, like: Array | None = None, dtype: Any = None) -> Array:
        t = self.torch
        if isinstance(a, t.Tensor):
            device = like.device if like is not None else a.device
            out = a.to(device=device)
            return out.to(dtype) if dtype is not None else out
        arr = np.asarray(a)
        if dtype is None and like is not None and not np.iscomplexobj(arr):
            dtype = like.dtype
        device = like.device if like is not None else None
        if arr.dtype == np.bool_:
            return t.as_tensor(arr, device=device)
        return t.as_tensor(arr, device=device, dtype=dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return a.detach().cpu().numpy()

    def rfft2(self, x: Array) -> Array:
        return self.torch.fft.rfft2(x, dim=(-2, -1))

    def irfft2(self, x: Array, n: int) -> Array:
        return self.torch.fft.irfft2(x, s=(n, n), dim=(-2, -1))

    def sum(self, x: Array, axis: int | Sequence[int]) -> Array:
        return self.torch.sum(x, dim=tuple(axis) if isinstance(axis, (list, tuple)) else axis)

    def amax(self, x: Array, axis: int | Sequence[int]) -> Array:
        return self.torch.amax(x, dim=tuple(axis) if isinstance(axis, (list, tuple)) else axis)

    def mean(self, x: Array, axis: int | Sequence[int], keepdims: bool = False) -> Array:
        return self.torch.mean(x, dim=tuple(axis) if isinstance(axis, (list, tuple)) else axis, keepdim=keepdims)

    def median(self, x: Array, axis: int) -> Array:
        # torch.median returns the lower middle value; use quantile for numpy's definition.
        return self.torch.quantile(x, 0.5, dim=axis)

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        return self.torch.cat(list(xs), dim=axis)

    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        return self.torch.zeros(shape, dtype=like.dtype, device=like.device)

    def stack(self, xs: Sequence[Array], axis: int) -> Array:
        return self.torch.stack(list(xs), dim=axis)

    def index(self, idx: np.ndarray, like: Array) -> Array:
        """An integer index tensor on ``like``'s device."""
        return self.torch.as_tensor(np.asarray(idx, dtype=np.int64), device=like.device)

    def float32(self, x: Array) -> Array:
        return x.to(self.torch.float32)

    def float64(self, x: Array) -> Array:
        return x.to(self.torch.float64)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.torch, name)


_NUMPY = NumpyBackend()


def namespace(*arrays: Any) -> NumpyBackend | TorchBackend:
    """The backend of the first torch tensor among ``arrays``, else numpy.

    Parameters
    ----------
    *arrays
        Arrays, scalars or ``None``; only their types are inspected.

    Returns
    -------
    NumpyBackend or TorchBackend
        An object exposing the few operations :mod:`repro.pdes` needs.
    """
    for a in arrays:
        root = type(a).__module__.split(".")[0]
        if root == "torch":
            # Already imported by whoever built the tensor; we never import torch here.
            return TorchBackend(sys.modules["torch"])
    return _NUMPY
