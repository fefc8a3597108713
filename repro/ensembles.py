"""What trains together: the rule that groups RunSpecs into ensembles (docs/design.md §1).

Torch-free, so that the plan, the schedule and ``--dry-run`` see the engine's real jobs without
importing the engine.  The engine trains each group this module makes as one ensemble.
"""

from __future__ import annotations

from typing import Sequence

from repro.config import RunSpec

__all__ = ["CPU_ENSEMBLE_FLOATS", "DEFAULT_MAX_MEMBERS", "batch_key", "cpu_ensemble_members", "ensemble_cap", "group_specs"]


def batch_key(spec: RunSpec) -> tuple:
    """Runs with equal batch keys share data, model and schedule length and can train together
    as one ensemble; they may differ in learning rate and seed."""
    return (spec.arm, spec.data, spec.layout, spec.model, spec.n_train, spec.epochs,
            spec.batch_size, spec.init_from, spec.eval_every)


#: On a CPU an ensemble step is only cheaper than its members one by one while one activation
#: tensor (members x batch x width x n x n floats) stays cache-sized.  Measured on the 2-core
#: CI machine: around 2^20-2^21 floats (4-8 MB) an ensemble step costs about as much per member
#: as a single run, beyond that 5-20x more; the one-ensemble-of-16 case of
#: benchmarks/bench_train.py (xxs, 32^2, batch 64) ran at 0.44-0.67x of one by one.  GPUs,
#: launch-bound at these sizes, are where ensembles pay; on a CPU they are kept small.
CPU_ENSEMBLE_FLOATS = 2**19


def _device_type(device: object) -> str:
    """``"cpu"`` / ``"cuda"`` of a device name or a ``torch.device`` (whose str is its name)."""
    return str(device).split(":", 1)[0]


#: Most runs trained as one ensemble unless ``--max-members`` says otherwise (all of them on a GPU).
DEFAULT_MAX_MEMBERS = 16


def cpu_ensemble_members(batch: int, width: int, resolution: int, max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """How many members of ``batch x width x resolution^2`` activations train as one ensemble on a CPU."""
    return max(1, min(max_members, CPU_ENSEMBLE_FLOATS // (batch * width * resolution ** 2)))


def ensemble_cap(spec: RunSpec, device: object, max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """How many runs like ``spec`` to train as one ensemble on ``device``."""
    if _device_type(device) != "cpu":
        return max_members
    return cpu_ensemble_members(spec.effective_batch_size, spec.model_spec.width, spec.data.resolution, max_members)


def group_specs(specs: Sequence[RunSpec], max_members: int = DEFAULT_MAX_MEMBERS, device: object | None = None) -> list[list[RunSpec]]:
    """Split specs into ensembles with one batch_key each, of at most ``max_members`` runs (fewer
    on a CPU, see :func:`ensemble_cap`), keeping the first-seen order of the keys (so
    pre-training runs listed first go first)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(batch_key(spec), []).append(spec)
    out: list[list[RunSpec]] = []
    for members in groups.values():
        cap = ensemble_cap(members[0], device, max_members) if device is not None else max_members
        out.extend(members[i:i + cap] for i in range(0, len(members), cap))
    return out
