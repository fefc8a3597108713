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

import dataclasses
import heapq
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from repro.compilation import COMPILE_SECONDS, COMPILED_STEP_FACTOR, compiles
from repro.config import RunSpec
from repro.flops import unit_training_flops
from repro import schema
from repro.threads import limited_threads

#: Fixed costs measured on the CPU machines (MLflow run records, checkpoint + figure; data load).
RUN_OVERHEAD_S = 0.6
UNIT_OVERHEAD_S = 1.0
#: Before the first unit trains: the launcher's start (imports, store, survey; ~3.5 s) and the
#: workers' fork server importing torch, MLflow and the engine with every core busy (~3 s), measured on
#: the 2-core CPU machine (quick grid, fresh home: first run starts 6.5 s after the parent run).
STARTUP_S = 10.0
#: Timed steps per batch size are preceded by this many untimed ones (allocations, DFT bases,
#: Adam's state); the first two steps run up to 2x slower than the rest.
WARMUP_STEPS = 2
#: Timed steps per batch size (their median is taken).
TIMED_STEPS = 7
#: A CPU step inside the grid costs this much more than the same step timed alone: every core is
#: busy (shared caches and memory bandwidth) and the engine adds batching, the rel-L2 loss and the
#: LR schedule.  Measured on the 2-core machine, quick grid: the 12 units took 1.08x and 1.18x of
#: what two calibrations predicted (one per unit within 1.03-1.14x).
CPU_GRID_FACTOR = 1.1
#: An evaluation pass (no backward, no optimiser) costs about this fraction of a training step.
EVAL_FRACTION = 0.35


@dataclass(frozen=True)
class Throughput:
    """Measured step cost of one model size at one resolution on one device."""

    latency: float  # seconds per optimiser step, independent of batch size
    per_sample: float  # seconds per (sample x member) in a training step
    eval_per_sample: float = 0.0  # seconds per (sample x member) in an evaluation pass
    origin: str = "timed"  # "timed" here | "extrapolated by FLOPs" | "from finished runs" | "prior"

    def step(self, batch: int, members: int = 1) -> float:
        return self.latency + members * batch * self.per_sample


def calibrate(spec: RunSpec, *, device: str = "cpu", fast: bool | None = None, batch: int = 32,
              repeats: int = TIMED_STEPS, threads: int | None = None, precision: str = "fp32") -> Throughput:
    """Time a few training steps of ``spec``'s model at ``spec``'s resolution (batch 1 and ``batch``).

    ``threads``: torch CPU threads during the measurement — the number each worker will use.
    """
    import torch

    if threads is not None and not device.startswith("cuda"):
        with limited_threads(threads):
            return calibrate(spec, device=device, fast=fast, batch=batch, repeats=repeats, precision=precision)

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

        for _ in range(WARMUP_STEPS):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        took = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            took.append(time.perf_counter() - t0)
        # the median, not the best: a grid's steps run at the typical speed, and on a 2-core
        # machine single steps of one size vary 6-11 ms (the best of 3 gave estimates 25 % low)
        return statistics.median(took)

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
    f = 1.0 if device.startswith("cuda") else CPU_GRID_FACTOR
    return Throughput(latency=f * max(t1 - per_sample, 0.0), per_sample=f * per_sample,
                      eval_per_sample=f * eval_per_sample)


def unit_seconds(specs: list[RunSpec], tp: Throughput, *, compiled: bool = False) -> float:
    """Predicted wall time of one unit (the engine trains ``specs`` as one ensemble).  ``compiled``:
    its training steps run through ``torch.compile`` (:func:`unit_compiles`), at
    :data:`~repro.compilation.COMPILED_STEP_FACTOR` of the timed eager step, after one compilation."""
    head = specs[0]
    k = len(specs)
    data = head.data
    cost = UNIT_OVERHEAD_S + k * RUN_OVERHEAD_S
    eval_cost = (tp.eval_per_sample or EVAL_FRACTION * tp.per_sample) * k
    if head.arm == "zero_shot":
        return cost + (data.n_val + data.n_test) * eval_cost + 2 * tp.latency
    b = head.effective_batch_size
    steps = head.epochs * math.ceil(head.n_train / b)
    train = steps * tp.step(b, k)
    cost += COMPILE_SECONDS + COMPILED_STEP_FACTOR * train if compiled else train
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
    #: unit task id -> the task ids it waits for (its pre-training units), in the launcher's order
    deps: dict[str, frozenset[str]] = field(default_factory=dict)
    #: the task ids of the pre-training units (SLURM runs them all before any other unit)
    pretraining: frozenset[str] = frozenset()

    @property
    def device_seconds(self) -> float:
        return sum(self.unit_seconds.values())

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    def wall_seconds(self, slots: int, *, phased: bool = False) -> float:
        """Wall time with ``slots`` parallel workers (each calibrated with its own share of the
        device): the local launcher's start-up, then the units list-scheduled as it runs them.
        ``phased`` (SLURM): every pre-training unit ends before any other unit starts, as the
        SLURM executor's phases do; its queue and start-up times are not in the estimate.
        Dataset generation is not modelled (start-up covers the quick grid's, a few seconds)."""
        if not self.unit_seconds:
            return 0.0
        order = [t for t in self.deps if t in self.unit_seconds] + [t for t in self.unit_seconds if t not in self.deps]
        deps: Mapping[str, Iterable[str]] = self.deps
        if phased:
            deps = {t: (frozenset() if t in self.pretraining else self.pretraining) for t in order}
        return (0.0 if phased else STARTUP_S) + schedule_seconds(order, self.unit_seconds, deps, slots)


def schedule_seconds(order: list[str], seconds: Mapping[str, float], deps: Mapping[str, Iterable[str]],
                     slots: int) -> float:
    """Makespan of the tasks ``order`` on ``slots`` workers, scheduled as the local launcher does:
    a free worker takes the first task in ``order`` whose dependencies have finished (a
    dependency outside ``order`` counts as done).  Dividing the total by the slots instead misses
    the critical path: the quick grid's pre-training holds every transfer unit back (+12 %)."""
    position = {task: i for i, task in enumerate(order)}
    waiting_on = {task: {d for d in deps.get(task, ()) if d in position} for task in order}
    dependants: dict[str, list[str]] = {}
    for task, needs in waiting_on.items():
        for d in needs:
            dependants.setdefault(d, []).append(task)
    ready = [position[t] for t in order if not waiting_on[t]]  # a heap of order positions
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (end time, order position)
    now, free = 0.0, max(1, slots)
    while ready or running:
        while ready and free:
            i = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds.get(order[i], 0.0), i))
            free -= 1
        if not running:  # nothing runs and nothing is ready: a dependency cycle (never planned)
            break
        now, i = heapq.heappop(running)
        ended = [i]
        while running and running[0][0] == now:  # the launcher takes every result in before refilling
            ended.append(heapq.heappop(running)[1])
        free += len(ended)
        for i in ended:
            for task in dependants.get(order[i], ()):
                waiting_on[task].discard(order[i])
                if not waiting_on[task]:
                    heapq.heappush(ready, position[task])
    return now


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
                            eval_per_sample=EVAL_FRACTION * max(spent[key], 1e-9) / w, origin="from finished runs")
            for key, w in work.items() if w > 0}


#: A dry run spends at most this long timing steps; sizes beyond it are extrapolated by FLOPs.
CALIBRATION_BUDGET_S = 30.0
#: A large model's step reaches about this fraction of the probe's arithmetic rate, once its
#: construction and optimiser state are counted (l at 64² on the 2-core machine: ~1/3).
PROBE_SAFETY = 3.0
#: Forward FLOPs per second assumed before anything is timed, to decide whether the first size
#: fits the budget: below what the 2-core CI machine reaches on the smallest sizes (~3-15 GFLOP/s).
PRIOR_FLOPS_PER_S = {"cpu": 2e9, "cuda": 2e11}
def _prior_rate(device: str) -> float:
    return PRIOR_FLOPS_PER_S["cpu" if device == "cpu" else "cuda"]


def _timing_forwards(batch: int, repeats: int) -> int:
    """Forward passes of one :func:`calibrate` call: warm-up + ``repeats`` steps at batch 1 and at
    ``batch`` (a step costs 3 forward passes), and as many evaluation passes at 4 x ``batch``."""
    return (repeats + WARMUP_STEPS) * (3 * (1 + batch) + 4 * batch)


#: What a full timing (batch 32, TIMED_STEPS) costs, in forward passes of one sample.
_CALIBRATION_FORWARDS = _timing_forwards(32, TIMED_STEPS)


def unit_compiles(specs: Sequence[RunSpec], compile_mode: str, device: str, fast: bool | None) -> bool:
    """Whether the engine will train this unit compiled: the engine's own rule
    (:func:`repro.compilation.compiles`) on the unit's training FLOPs."""
    spectral = _spectral(fast)
    return compiles(compile_mode, device, unit_training_flops(specs, spectral), spectral=spectral)


def _spectral(fast: bool | None) -> str:
    """The FLOP-counting path of a ``--fast/--reference`` switch, torch-free (fast and fused count
    the same FLOPs, so the device's default need not be resolved)."""
    return "fast" if fast or fast is None else "reference"


def _forward_flops(spec: RunSpec, fast: bool | None, device: str) -> float:
    from repro.flops import forward_flops

    return forward_flops(spec.model_spec, spec.data.resolution, _spectral(fast))


def eta_weights(units: Iterable, *, device: str = "cpu", fast: bool | None = None,
                compile_mode: str = "auto") -> dict[str, float]:
    """Unit task id -> its relative weight for a running grid's live ETA: the unit's predicted
    seconds at the prior FLOP rate, nothing timed.  Only the ratios matter (the ETA scales them by
    the time the finished units took), and calibrating first would hold the grid's start back by
    a torch import and a timing (4.5 s of a 22 s tiny grid on the 2-core machine)."""
    rate = _prior_rate(device)
    weights = {}
    for unit in units:
        flops = _forward_flops(unit.specs[0], fast, device)
        prior = Throughput(latency=0.0, per_sample=3 * flops / rate, eval_per_sample=flops / rate, origin="prior")
        specs = list(unit.specs)
        weights[unit.task_id] = unit_seconds(specs, prior, compiled=unit_compiles(specs, compile_mode, device, fast))
    return weights


def _extrapolate(tp: Throughput, flops_from: float, flops_to: float) -> Throughput:
    """A timed size's throughput scaled to another size by forward FLOPs per sample (the step
    latency kept: it is the per-step overhead, not the arithmetic)."""
    r = flops_to / flops_from
    return Throughput(latency=tp.latency, per_sample=tp.per_sample * r, eval_per_sample=tp.eval_per_sample * r,
                      origin="extrapolated by FLOPs")


def calibrate_sizes(specs: Iterable[RunSpec], *, device: str = "cpu", fast: bool | None = None,
                    precision: str = "fp32", threads: int | None = None, budget_s: float = CALIBRATION_BUDGET_S,
                    cache: dict[tuple, Throughput] | None = None, progress: bool = False) -> tuple[dict, str]:
    """Throughput per (model, resolution, channels) of ``specs``, timed within ``budget_s``.

    Sizes are timed cheapest first while the prediction of what timing the next one costs (its
    FLOPs at the compute rate measured so far, start-up excluded) fits the budget left; larger
    ones are extrapolated by FLOPs from the largest timed size.  If not even the cheapest fits,
    a tiny probe (xxs at 16²) measures the machine's rate, and the cheapest model is timed at a
    lower resolution (:func:`_proxy`) when that fits what is left; otherwise the sizes stay out of
    the table (the estimate lists their units as not estimated).  Returns the table and a
    sentence saying which sizes were timed, extrapolated or left out.
    """
    from repro.progress import Bar

    cache = {} if cache is None else cache
    by_key: dict[tuple, RunSpec] = {}
    for spec in specs:
        by_key.setdefault(_tp_key(spec), spec)
    todo = sorted((k for k in by_key if k not in cache), key=lambda k: _forward_flops(by_key[k], fast, device))
    if not todo:
        return cache, "calibration"
    rate = _prior_rate(device)
    spent = 0.0
    timed: list[tuple[float, Throughput]] = []  # (forward FLOPs, throughput) of the sizes timed here
    extrapolated: list[tuple] = []
    note = ""

    def time_one(spec: RunSpec, batch: int = 32, repeats: int = TIMED_STEPS, *, probe: bool = False) -> Throughput:
        nonlocal spent, rate
        t0 = time.perf_counter()
        tp = calibrate(spec, device=device, fast=fast, threads=threads, precision=precision, batch=batch,
                       repeats=repeats)
        took = time.perf_counter() - t0
        spent += took
        flops = _forward_flops(spec, fast, device)
        if probe:  # a tiny model's wall time is all start-up: take its arithmetic rate, a third of it
            rate = 3 * flops / max(tp.per_sample, 1e-12) / PROBE_SAFETY
        else:  # the whole timing (model built, warm-up, steps): predictions stay on the safe side
            rate = _timing_forwards(batch, repeats) * flops / max(took, 1e-6)
        return tp

    import torch  # noqa: F401 - imported before the clock starts: its start-up is not a size's cost

    with Bar(f"calibrating the estimate on {device} (<= {budget_s:.0f} s)", len(todo), enabled=progress,
             transient=True) as bar:
        for key in todo:
            flops = _forward_flops(by_key[key], fast, device)
            if spent + _CALIBRATION_FORWARDS * flops / rate > budget_s:
                extrapolated.append(key)
            else:
                bar.update(status=f"{key[0]} {key[1]}²")
                cache[key] = time_one(by_key[key])
                timed.append((flops, cache[key]))
            bar.advance()
        if not timed and extrapolated and budget_s - spent > 1.0:  # learn the rate, then try a proxy
            cheapest = by_key[extrapolated[0]]
            bar.update(status="probe xxs 16²")
            time_one(_at(dataclasses.replace(cheapest, model="xxs"), 16), batch=8, repeats=3, probe=True)
            proxy, batch, repeats, cost = _proxy(cheapest, fast, device, rate, budget_s - spent)
            if cost <= budget_s - spent:
                bar.update(status=f"{proxy.model} {proxy.data.resolution}² (proxy)")
                timed.append((_forward_flops(proxy, fast, device), time_one(proxy, batch, repeats)))
                note = f"{proxy.model} timed at {proxy.data.resolution}² (batch {batch}) as a proxy"
    if not timed:
        names = ", ".join(dict.fromkeys(f"{k[0]} at {k[1]}²" for k in extrapolated))
        return cache, (f"calibration: none of the sizes ({names}) can be timed within the {budget_s:.0f} s budget "
                       "here, not even at a lower resolution")
    for key in extrapolated:
        flops = _forward_flops(by_key[key], fast, device)
        ref_flops, ref = max(timed, key=lambda ft: (ft[0] <= flops, ft[0]))
        cache[key] = _extrapolate(ref, ref_flops, flops)
    n_timed = len(todo) - len(extrapolated)
    source = f"calibration: {note or f'{n_timed} size(s) timed'} in {spent:.0f} s"
    if extrapolated:
        names = ", ".join(dict.fromkeys(f"{k[0]} at {k[1]}²" for k in extrapolated))
        source += (f", {len(extrapolated)} size(s) extrapolated by FLOPs ({names}: timing them would take more "
                   f"than the {budget_s:.0f} s budget here)")
    return cache, source


#: What the short timing (batch 4, once) costs, in forward passes of one sample.
_SHORT_FORWARDS = _timing_forwards(4, 1)


def _at(spec: RunSpec, resolution: int) -> RunSpec:
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, resolution=resolution))


def _proxy(spec: RunSpec, fast: bool | None, device: str, rate: float,
           budget_s: float) -> tuple[RunSpec, int, int, float]:
    """``spec`` at a lower even resolution its modes allow (>= 2 m, >= 16): the highest whose full
    timing fits half of ``budget_s`` at ``rate``, else the lowest with a short timing (batch 4,
    once).  Returns the proxy, the (batch, repeats) to time it at, and the predicted seconds."""
    floor = max(16, 2 * spec.model_spec.n_modes)
    res = spec.data.resolution
    while (res // 2) & ~1 >= floor:
        res = (res // 2) & ~1  # even: a DatasetSpec resolution must be
        cost = _CALIBRATION_FORWARDS * _forward_flops(_at(spec, res), fast, device) / rate
        if cost <= budget_s / 2:
            return _at(spec, res), 32, TIMED_STEPS, cost
    return _at(spec, res), 4, 1, _SHORT_FORWARDS * _forward_flops(_at(spec, res), fast, device) / rate


def estimate_units(units: Iterable, *, device: str = "cpu", fast: bool | None = None, precision: str = "fp32",
                   compile_mode: str = "auto", threads: int | None = None,
                   cache: dict[tuple, Throughput] | None = None,
                   finished: Mapping[str, float] | None = None,
                   finished_units: Iterable | None = None, calibrate_here: bool = True,
                   budget_s: float = CALIBRATION_BUDGET_S, progress: bool = False) -> Estimate:
    """Estimate ``units`` (objects with ``.specs`` and ``.keys``, e.g. :class:`repro.grid.plan.Unit`).

    ``finished`` maps run_key -> measured seconds (:func:`finished_walls`; an ensemble's
    members run concurrently, so a unit's time is its slowest member's) for runs already in the
    store; ``finished_units`` are the plan's units over those keys, used to rescale the
    prediction, or, with ``calibrate_here=False`` (the runs' device is not on this machine), as
    the only source of throughput.  Calibration spends at most ``budget_s`` timing steps
    (:func:`calibrate_sizes`); ``progress`` shows it.  ``compile_mode`` is the run context's
    (:func:`unit_compiles`); finished units are predicted as if they had run under it too.
    """
    units = list(units)
    finished_units = list(finished_units or [])
    if not calibrate_here:
        return _estimate_from_finished(units, finished or {}, finished_units)

    specs = [u.specs[0] for u in units] + [u.specs[0] for u in finished_units]
    table, source = calibrate_sizes(specs, device=device, fast=fast, precision=precision, threads=threads,
                                    budget_s=budget_s, cache=cache, progress=progress)
    est = Estimate(throughput=table, source=source)
    if finished and finished_units:
        predicted = measured = 0.0
        for specs_, wall in _measured_units(finished, finished_units):
            if _tp_key(specs_[0]) in table:
                predicted += unit_seconds(specs_, table[_tp_key(specs_[0])],
                                          compiled=unit_compiles(specs_, compile_mode, device, fast))
                measured += wall
        if predicted > 0 and measured > 0:
            est.scale = min(5.0, max(0.2, measured / predicted))
            est.source += f", rescaled by {len(finished)} finished runs (x{est.scale:.2f})"
    for unit in units:
        tp = table.get(_tp_key(unit.specs[0]))
        if tp is None:  # a size too costly to time here (calibrate_sizes says so in the source)
            est.not_estimated.append(unit.task_id)
        else:
            specs_ = list(unit.specs)
            est.unit_seconds[unit.task_id] = est.scale * unit_seconds(
                specs_, tp, compiled=unit_compiles(specs_, compile_mode, device, fast))
    return _add_schedule(est, units)


def _add_schedule(est: Estimate, units: list) -> Estimate:
    """Give ``est`` what :meth:`Estimate.wall_seconds` schedules by: each unit's pre-training
    units (in ``units``' order, the launcher's) and which units pre-train."""
    trained_by = {key: unit.task_id for unit in units for key in unit.keys}
    est.deps = {unit.task_id: frozenset(trained_by[k] for k in unit.depends_on if k in trained_by) for unit in units}
    est.pretraining = pretraining_units(units)
    return est


def pretraining_units(units: list) -> frozenset[str]:
    """The task ids of ``units`` that train pre-training runs."""
    return frozenset(unit.task_id for unit in units if unit.role == schema.ROLE_PRETRAIN)


def _estimate_from_finished(units: list, finished: Mapping[str, float], finished_units: list) -> Estimate:
    """Each unit at the throughput its finished siblings ran at, as measured.  Compilation is not
    modelled here: the measured per-sample cost already holds whatever the finished units did
    (on CUDA, where this path is used, ``auto`` trains eagerly)."""
    measured = throughput_from_finished(finished, finished_units)
    est = Estimate(throughput=measured, source=f"measured on {len(finished)} finished runs, no calibration here")
    for unit in units:
        tp = measured.get(_tp_key(unit.specs[0]))
        if tp is None:
            est.not_estimated.append(unit.task_id)
        else:
            est.unit_seconds[unit.task_id] = unit_seconds(list(unit.specs), tp)
    return _add_schedule(est, units)


def finished_walls(states: Mapping) -> dict[str, float]:
    """run_key -> measured seconds of its FINISHED run (MLflow start to end: training, evaluation
    and recording), from a survey's states."""
    out = {}
    for key, st in states.items():
        run = st.finished
        if run is not None and run.info.end_time and run.info.start_time:
            out[key] = (run.info.end_time - run.info.start_time) / 1000.0
    return out
