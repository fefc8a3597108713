"""What became of one RunSpec: the one record that travels from the engine through a worker
(the local pool's pipe, a SLURM array task's pickle) to the launcher.  Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from repro import schema

__all__ = ["RunOutcome"]


@dataclass(frozen=True)
class RunOutcome:
    """One run_key's outcome in one invocation."""

    run_key: str
    status: str  # schema.FINISHED | schema.FAILED | schema.ELSEWHERE (another invocation holds the key)
    run_id: str | None
    test_rel_l2: float | None = None
    failure_reason: str | None = None
    wall_seconds: float = 0.0
    #: Not trained by this worker: finished before its pull, or held by another invocation.
    skipped: bool = False

    @property
    def finished(self) -> bool:
        return self.status == schema.FINISHED

    @property
    def elsewhere(self) -> bool:
        return self.status == schema.ELSEWHERE
