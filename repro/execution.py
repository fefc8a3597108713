"""How the runs of one invocation execute and where they are recorded.

:class:`RunContext` is the one settings bundle that travels from the CLI through the grid
launcher (:class:`repro.grid.launcher.Options`), the local pool's pipe or a SLURM task's pickle
(:class:`repro.grid.worker.Settings`) to the training engine (:func:`repro.train.engine.execute`).
None of it is part of a run_key: the same RunSpec trained on another device or path is the same
run.  Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repro.ensembles import DEFAULT_MAX_MEMBERS

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """Where runs are recorded and read from, and how they execute."""

    #: MLflow store the runs are recorded in (initialised by the engine if new).
    tracking_uri: str
    #: Dataset cache; ``None``: :func:`repro.data.default_data_dir`.  Missing splits are generated.
    data_dir: Path | None = None
    #: ``"cpu"``, ``"cuda"`` or ``"cuda:K"`` (only the CLI autodetects).
    device: str = "cpu"
    #: Spectral implementation: the fast path (``True``), the plain rfft2 reference (``False``) or
    #: the device's default (``None``); logged as params.
    fast: bool | None = None
    #: Forward precision, ``"fp32"`` or ``"bf16"`` (CUDA and the fast path only; see
    #: :func:`repro.models.fno.check_precision`).
    precision: str = "fp32"
    #: Whether training forwards run through ``torch.compile``: ``"auto"`` (long CPU units),
    #: ``"on"`` or ``"off"`` (:func:`repro.compilation.compiles`); recorded as the metric ``compiled``.
    compile_mode: str = "auto"
    #: Specs sharing a :func:`repro.ensembles.batch_key` train as one ensemble of up to this many.
    max_members: int = DEFAULT_MAX_MEMBERS
    #: Grid label tagged on every run (``None``: a run outside a grid).
    grid: str | None = None
    #: The invocation's MLflow parent run the runs are recorded under.
    parent_run_id: str | None = None
