"""Execute runs: group compatible RunSpecs into ensembles, train, evaluate, record in MLflow.

(Implementation in progress: the public API below is fixed.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from repro.config import RunSpec


@dataclass(frozen=True)
class RunOutcome:
    """What became of one RunSpec."""

    run_key: str
    status: str  # schema.FINISHED | schema.FAILED
    run_id: str | None
    test_rel_l2: float | None
    failure_reason: str | None
    wall_seconds: float


def batch_key(spec: RunSpec) -> tuple:
    """Runs with equal batch keys share data, model and schedule length and can train together
    as one ensemble; they may differ in learning rate and seed."""
    return (spec.arm, spec.data, spec.layout, spec.model, spec.n_train, spec.epochs,
            spec.batch_size, spec.init_from, spec.eval_every)


def execute(specs: Sequence[RunSpec], *, tracking_uri: str, data_dir: Path | None = None,
            device: str = "cpu", fast: bool | None = None, grid: str | None = None,
            parent_run_id: str | None = None, roles: Mapping[str, str] | None = None,
            progress: bool = True, max_members: int = 16) -> list[RunOutcome]:
    raise NotImplementedError("training engine is being implemented")
