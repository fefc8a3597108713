"""Checkpoints: model spec + one member's weights + input normaliser, safe to load anywhere.

A checkpoint is a plain dict of tensors / str / int / float / bool / None / list / dict written
with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``, so loading never
executes pickled code and works on any device via ``map_location``.  Writes go to a temporary
file in the same directory and are renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from repro.config import ModelSpec, SpecError
from repro.models.fno import FNO, default_spectral, load_members

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "build_model", "load_checkpoint",
           "save_checkpoint"]

#: Format tag stored in every checkpoint; bump when the layout changes.
CHECKPOINT_FORMAT = "repro.fno/1"

_KEYS = ("format", "model_spec", "state", "normaliser", "data_spec", "meta")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or malformed; the one-line message names the path."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model_spec : ModelSpec
        Architecture of the saved model.
    state : dict of str to Tensor
        One-member weights (leading dimension 1), see :func:`repro.models.member_state`.
    normaliser : dict
        Input normaliser statistics of the (pre-)training data (docs/protocol.md §2.1).
    data_spec : dict
        The dataset the model was trained on.
    meta : dict
        Free-form provenance (run_key, epoch, metrics ...).
    """

    model_spec: ModelSpec
    state: dict[str, Tensor]
    normaliser: dict[str, Any]
    data_spec: dict[str, Any]
    meta: dict[str, Any]


def _check_plain(value: Any, where: str) -> Any:
    """Return ``value`` with tensors moved to CPU; reject types ``weights_only`` cannot load."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu").contiguous()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint field {where} has a non-string key {k!r}")
            out[k] = _check_plain(v, f"{where}.{k}")
        return out
    # numpy arrays / scalars would need an unsafe unpickler at load time: fail at save time.
    raise TypeError(f"checkpoint field {where} has type {type(value).__name__}; use tensors, "
                    "str, int, float, bool, None, lists and dicts (numpy: torch.as_tensor or .tolist())")


def save_checkpoint(path: str | os.PathLike[str], *, model_spec: ModelSpec, state: Mapping[str, Tensor],
                    normaliser: Mapping[str, Any], data_spec: Mapping[str, Any],
                    meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file in the same directory, then rename).

    Parameters
    ----------
    path : path-like
        Destination file; parent directories are created.
    model_spec : ModelSpec
        Architecture.
    state : mapping of str to Tensor
        One-member weights, e.g. :func:`repro.models.member_state` ``(model, i)``.
    normaliser, data_spec, meta : mapping
        Plain data (tensors, str, int, float, bool, None, lists, dicts).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        A field holds something ``torch.load(weights_only=True)`` could not read back.
    """
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise TypeError("checkpoint state must map parameter names to tensors")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_spec": dataclasses.asdict(model_spec),
        "state": _check_plain(dict(state), "state"),
        "normaliser": _check_plain(dict(normaliser), "normaliser"),
        "data_spec": _check_plain(dict(data_spec), "data_spec"),
        "meta": _check_plain(dict(meta), "meta"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    path : path-like
        File written by :func:`save_checkpoint`.
    map_location : str or torch.device, default "cpu"
        Device for the weights.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, corrupt or not a repro FNO checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated / foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path}: unreadable or corrupt ({type(err).__name__}: {reason[:200]})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing field(s) {', '.join(missing)}")
    try:
        model_spec = ModelSpec(**payload["model_spec"])
    except (TypeError, SpecError) as err:
        raise CheckpointError(f"checkpoint {path}: invalid model_spec ({err})") from err
    state = payload["state"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: state is not a dict of tensors")
    return Checkpoint(model_spec=model_spec, state=state, normaliser=payload["normaliser"],
                      data_spec=payload["data_spec"], meta=payload["meta"])


def build_model(checkpoint: Checkpoint, members: int = 1, spectral: str | None = None,
                device: torch.device | str = "cpu") -> FNO:
    """An ``members``-member FNO on ``device`` with every member set to the checkpoint's weights.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`load_checkpoint`.
    members : int, default 1
        Ensemble size (e.g. one member per fine-tuning learning rate).
    spectral : {"reference", "fast"}, optional
        Spectral path; default :func:`repro.models.default_spectral` of ``device``.
    device : torch.device or str, default "cpu"

    Returns
    -------
    FNO
    """
    model = FNO(checkpoint.model_spec, members=members, spectral=spectral or default_spectral(device))
    load_members(model, checkpoint.state)
    return model.to(device)
