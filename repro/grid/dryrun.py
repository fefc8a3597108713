"""``repro run-grid --dry-run``: the plan at once (no torch), then its cost from a bounded estimate.

The plan and what the store holds of it are printed before anything is timed, so a paper-scale
grid shows its shape in seconds.  The cost then comes, and says which, from a calibration on
this machine bounded by :data:`repro.grid.estimate.CALIBRATION_BUDGET_S` (larger sizes
extrapolated by FLOPs), rescaled by finished runs where there are some, or -- where the runs'
device is not here (a SLURM login node for a GPU grid) -- from the finished runs alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from repro.execution import RunContext
from repro import tracking
from repro.grid import console, estimate, launcher, resources, store
from repro.grid.plan import Plan


@dataclass(frozen=True)
class DryRunOptions:
    """Where the grid would run (the context it would run with, parallel slots) and whether to time it."""

    context: RunContext
    slots: int = 1
    threads: int = 1  # CPU threads each worker would use (calibration times at that)
    calibrate: bool = True
    device_here: bool = True  # can the runs' device be timed on this machine?
    remote: bool = False  # SLURM: the compute nodes may differ from this machine
    stale_after: float = 600.0


def _survey(plan: Plan, uri: str, stale_after: float) -> launcher.Survey:
    """What the store holds of ``plan``.  A SQLite store that does not exist yet holds nothing: a
    dry run neither creates it nor pays MLflow's schema migration (about 3 s) to learn that."""
    db = tracking.sqlite_path(uri)
    if db is not None and not db.exists():
        return launcher.Survey(plan=plan, states={key: store.KeyState(key) for key in plan.keys})
    return launcher.survey(plan, uri, reap=False, stale_after=stale_after)


def dry_run(plan: Plan, opts: DryRunOptions, *, echo: Callable[[str], None],
            warn: Callable[[str], None], progress: bool = True) -> None:
    """Print ``plan``'s summary against the context's store, then its estimated cost (or why there is none)."""
    ctx = opts.context
    sv = _survey(plan, ctx.tracking_uri, opts.stale_after)
    echo(console.plan_text(plan, sv, device=ctx.device, max_members=ctx.max_members))
    memory = resources.memory_problem((plan[k].spec for k in sv.todo), slots=opts.slots, remote=opts.remote,
                                      device=ctx.device)
    if memory is not None:
        warn(f"warning: {'run-grid will refuse this here: ' if memory[1] else ''}{memory[0]}")
    if not opts.calibrate:
        return
    done = set(sv.finished)
    if not (opts.device_here or done):
        warn("no CUDA device here to calibrate the estimate on, and no finished run to measure: "
             "run --dry-run on a GPU node, or once some runs finished, for the cost")
        return
    est = estimate.estimate_units(
        plan.units(sv.todo, max_members=ctx.max_members, device=ctx.device), device=ctx.device, fast=ctx.fast,
        precision=ctx.precision, compile_mode=ctx.compile_mode, threads=opts.threads, finished=estimate.finished_walls(sv.states),
        finished_units=plan.units(done, max_members=ctx.max_members, device=ctx.device) if done else None,
        calibrate_here=opts.device_here, progress=progress)
    if opts.remote and opts.device_here and not done:
        est.source += ", timed on this machine: the compute nodes may differ"
    echo(console.cost_text(est, slots=opts.slots, device=ctx.device, phased=opts.remote,
                           batch=plan.grid.batch_size))
