"""Cost estimate of a plan in device-hours, from measured throughput.

Model of one unit (an ensemble of ``k`` runs sharing data, model size and schedule)::

    steps  = epochs * ceil(N / b)                          b = min(batch_size, N)
    train  = steps * (latency + k * b * per_sample)        one optimiser step of the ensemble
    evals  = ceil(epochs / eval_every) * k * n_val * eval_per_sample + k * n_test * eval_per_sample
    unit   = unit_overhead + k * run_overhead + train + evals

``latency`` and ``per_sample`` come from a short calibration on the current device (a few timed
forward/backward/Adam steps of the real FNO at batch 1 and at a larger batch, per model size
and resolution).  When the store already holds finished runs of the plan, their measured wall
times rescale the remaining estimate (``scale`` = measured / predicted over the finished units).

Where the runs' device is not here (a SLURM login node without GPUs), there is nothing to
calibrate on: ``per_sample`` is then solved from the finished runs themselves, per model size
and resolution (:func:`throughput_from_finished`), and units of a size with no finished run yet
are counted as not estimated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from repro.config import RunSpec

#: Fixed costs measured on the CPU machines (MLflow run records, checkpoint + figure; data load).
RUN_OVERHEAD_S = 0.6
UNIT_OVERHEAD_S = 1.0
#: An evaluation pass (no backward, no optimiser) costs about this fraction of a training step.
EVAL_FRACTION = 0.35


@dataclass(frozen=True)
class Throughput:
    """Measured step cost of one model size at one resolution on one device."""

    latency: float  # seconds per optimiser step, independent of batch size
    per_sample: float  # seconds per (sample x member) in a training step
    eval_per_sample: float = 0.0  # seconds per (sample x member) in an evaluation pass

    def step(self, batch: int, members: int = 1) -> float:
        return self.latency + members * batch * self.per_sample


def calibrate(spec: RunSpec, *, device: str = "cpu", fast: bool | None = None, batch: int = 32,
              repeats: int = 3, threads: int | None = None, precision: str = "fp32") -> Throughput:
    """Time a few training steps of ``spec``'s model at ``spec``'s resolution (batch 1 and ``batch``).

    ``threads``: torch CPU threads during the measurement — the number each worker will use.
    """
    import torch

    if threads is not None and not device.startswith("cuda"):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return calibrate(spec, device=device, fast=fast, batch=batch, repeats=repeats, precision=precision)
        finally:
            torch.set_num_threads(before)

    from repro.models import FNO, resolve_spectral

    spectral = resolve_spectral(fast, device)
    model_spec = spec.model_spec
    res = spec.data.resolution
    model = FNO(model_spec, members=1, spectral=spectral, precision=precision, seeds=[0]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def timed(b: int) -> float:
        x = torch.randn(1, b, model_spec.in_channels, res, res, generator=gen).to(device)
        y = torch.randn(1, b, res, res, generator=gen).to(device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            pred = model(x)
            loss = ((pred.reshape(y.shape) - y) ** 2).sum()
            loss.backward()
            opt.step()

        step()  # warm-up (allocations, DFT bases)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    t1 = timed(1)
    tb = timed(batch)
    per_sample = max((tb - t1) / (batch - 1), 1e-9)
    x = torch.randn(1, 4 * batch, model_spec.in_channels, res, res, generator=gen).to(device)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    eval_per_sample = (time.perf_counter() - t0) / repeats / x.shape[1]
    return Throughput(latency=max(t1 - per_sample, 0.0), per_sample=per_sample, eval_per_sample=eval_per_sample)


def unit_seconds(specs: list[RunSpec], tp: Throughput) -> float:
    """Predicted wall time of one unit (the engine trains ``specs`` as one ensemble)."""
    head = specs[0]
    k = len(specs)
    data = head.data
    cost = UNIT_OVERHEAD_S + k * RUN_OVERHEAD_S
    eval_cost = (tp.eval_per_sample or EVAL_FRACTION * tp.per_sample) * k
    if head.arm == "zero_shot":
        return cost + (data.n_val + data.n_test) * eval_cost + 2 * tp.latency
    b = head.effective_batch_size
    steps = head.epochs * math.ceil(head.n_train / b)
    cost += steps * tp.step(b, k)
    n_evals = math.ceil(head.epochs / head.eval_every)
    cost += n_evals * data.n_val * eval_cost + data.n_test * eval_cost
    return cost


@dataclass
class Estimate:
    """Device-seconds per unit and in total; ``scale`` applied from finished runs."""

    unit_seconds: dict[str, float] = field(default_factory=dict)  # unit task id -> seconds (scaled)
    throughput: dict[tuple, Throughput] = field(default_factory=dict)
    scale: float = 1.0
    source: str = "calibration"
    not_estimated: list[str] = field(default_factory=list)  # unit task ids without a throughput

    @property
    def device_seconds(self) -> float:
        return sum(self.unit_seconds.values())

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    def wall_seconds(self, slots: int) -> float:
        """Wall time with ``slots`` parallel workers (each calibrated with its own share of the device)."""
        return self.device_seconds / max(1, slots)


def _tp_key(spec: RunSpec) -> tuple:
    return (spec.model, spec.data.resolution, spec.model_spec.in_channels)


def _measured_units(finished: Mapping[str, float], finished_units: Iterable) -> Iterator[tuple[list[RunSpec], float]]:
    """(specs, measured seconds) of each finished unit with a recorded wall time; a unit's time
    is its slowest member's, since an ensemble's members train together."""
    for unit in finished_units:
        walls = [finished[k] for k in unit.keys if k in finished]
        if walls:
            yield list(unit.specs), max(walls)


def throughput_from_finished(finished: Mapping[str, float], finished_units: Iterable) -> dict[tuple, Throughput]:
    """Per (model, resolution, channels): the ``per_sample`` that makes the unit model reproduce the
    measured walls of the finished units (pooled: total time over total sample work).

    The step latency is folded into ``per_sample`` (it cannot be told apart from wall times alone)
    and an evaluation sample costs :data:`EVAL_FRACTION` of a training one.  ``finished_units``
    should group the runs as they were trained (same ``--max-members``): an ensemble's members
    share one wall time.
    """
    unit_work = Throughput(latency=0.0, per_sample=1.0, eval_per_sample=EVAL_FRACTION)
    no_work = Throughput(latency=0.0, per_sample=0.0, eval_per_sample=0.0)
    work: dict[tuple, float] = {}
    spent: dict[tuple, float] = {}
    for specs, wall in _measured_units(finished, finished_units):
        overhead = unit_seconds(specs, no_work)
        key = _tp_key(specs[0])
        work[key] = work.get(key, 0.0) + unit_seconds(specs, unit_work) - overhead
        spent[key] = spent.get(key, 0.0) + max(wall - overhead, 0.0)
    return {key: Throughput(latency=0.0, per_sample=max(spent[key], 1e-9) / w,
                            eval_per_sample=EVAL_FRACTION * max(spent[key], 1e-9) / w)
            for key, w in work.items() if w > 0}


def estimate_units(units: Iterable, *, device: str = "cpu", fast: bool | None = None, precision: str = "fp32",
                   threads: int | None = None,
                   cache: dict[tuple, Throughput] | None = None,
                   finished: Mapping[str, float] | None = None,
                   finished_units: Iterable | None = None, calibrate_here: bool = True) -> Estimate:
    """Estimate ``units`` (objects with ``.specs`` and ``.keys``, e.g. :class:`repro.grid.plan.Unit`).

    ``finished`` maps run_key -> measured seconds (:func:`finished_walls`; an ensemble's
    members run concurrently, so a unit's time is its slowest member's) for runs already in the
    store; ``finished_units`` are the plan's units over those keys, used to rescale the
    prediction, or, with ``calibrate_here=False`` (the runs' device is not on this machine), as
    the only source of throughput.
    """
    cache = {} if cache is None else cache
    units = list(units)
    if not calibrate_here:
        return _estimate_from_finished(units, finished or {}, list(finished_units or []))

    def tp_for(spec: RunSpec) -> Throughput:
        key = _tp_key(spec)
        if key not in cache:
            cache[key] = calibrate(spec, device=device, fast=fast, threads=threads, precision=precision)
        return cache[key]

    est = Estimate(throughput=cache)
    if finished and finished_units:
        predicted = measured = 0.0
        for specs, wall in _measured_units(finished, finished_units):
            predicted += unit_seconds(specs, tp_for(specs[0]))
            measured += wall
        if predicted > 0 and measured > 0:
            est.scale = min(5.0, max(0.2, measured / predicted))
            est.source = f"calibration rescaled by {len(finished)} finished runs (x{est.scale:.2f})"
    from repro.grid.launcher import unit_task_id

    for unit in units:
        est.unit_seconds[unit_task_id(unit)] = est.scale * unit_seconds(list(unit.specs), tp_for(unit.specs[0]))
    return est


def _estimate_from_finished(units: list, finished: Mapping[str, float], finished_units: list) -> Estimate:
    from repro.grid.launcher import unit_task_id

    measured = throughput_from_finished(finished, finished_units)
    est = Estimate(throughput=measured, source=f"measured on {len(finished)} finished runs, no calibration here")
    for unit in units:
        tp = measured.get(_tp_key(unit.specs[0]))
        if tp is None:
            est.not_estimated.append(unit_task_id(unit))
        else:
            est.unit_seconds[unit_task_id(unit)] = unit_seconds(list(unit.specs), tp)
    return est


def finished_walls(states: Mapping) -> dict[str, float]:
    """run_key -> measured seconds of its FINISHED run (MLflow start to end: training, evaluation
    and recording), from a survey's states."""
    out = {}
    for key, st in states.items():
        run = st.finished
        if run is not None and run.info.end_time and run.info.start_time:
            out[key] = (run.info.end_time - run.info.start_time) / 1000.0
    return out
