"""FNO ensembles (docs/protocol.md §2.3), the size ladder's parameter count, and checkpoints."""

from repro.models.checkpoint import (Checkpoint, CheckpointError, build_model, load_checkpoint,
                                     save_checkpoint)
from repro.models.fno import (FNO, SPECTRAL_PATHS, count_parameters, default_spectral, load_members,
                              member_state, resolve_spectral)
from repro.models.spectral import build_dft_basis, spectral_fast, spectral_reference

__all__ = [
    "FNO",
    "SPECTRAL_PATHS",
    "Checkpoint",
    "CheckpointError",
    "build_dft_basis",
    "build_model",
    "count_parameters",
    "default_spectral",
    "load_checkpoint",
    "load_members",
    "member_state",
    "resolve_spectral",
    "save_checkpoint",
    "spectral_fast",
    "spectral_reference",
]
