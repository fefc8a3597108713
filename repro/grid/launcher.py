"""The grid launcher: survey MLflow, plan what is left, run it, summarise.

``run_grid`` is idempotent: FINISHED run_keys are skipped; FAILED, KILLED and missing ones run
again; RUNNING ones whose owner is gone (:mod:`repro.grid.store`) are marked KILLED and run
again; RUNNING ones whose owner is alive are left to it, and their dependants wait for them.
Each run the engine creates is a claim (:func:`repro.grid.store.claim`), so launchers started
together on one store train every key once.  One MLflow parent run per invocation; the engine
records one child run per RunSpec under it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from repro import schema
from repro import tracking
from repro.execution import RunContext
from repro.grid import store
from repro.grid import resources
from repro.grid.console import STALE, Progress, task_phase
from repro.grid.ledger import GridOutcome, Ledger, build_tasks, describe_run, pretrain_reason
from repro.grid.plan import Plan, Unit
from repro.grid.worker import DataTask, Settings, UnitTask
from repro.outcome import RunOutcome


@dataclass(frozen=True)
class Options:
    """How to execute a grid (the CLI's options, minus presentation): the engine's context and
    how the invocation spreads it over workers or a cluster."""

    context: RunContext
    workers: int | None = None
    runs_per_gpu: int = 1
    executor: str = "local"  # "local" | "slurm"
    slurm: Any = None  # repro.grid.slurm.SlurmOptions
    stale_after: float = store.STALE_AFTER_S
    heartbeat_s: float = store.HEARTBEAT_S


@dataclass
class Survey:
    """Where a plan stands in MLflow."""

    plan: Plan
    states: dict[str, store.KeyState]
    reaped: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> list[str]:
        return [k for k in self.plan.keys if self.states[k].status == schema.FINISHED]

    @property
    def running(self) -> list[str]:
        """Keys RUNNING under a live owner (another invocation is training them)."""
        return [k for k in self.plan.keys if self.states[k].status == schema.RUNNING]

    @property
    def todo(self) -> list[str]:
        return [k for k in self.plan.keys if self.states[k].status not in (schema.FINISHED, schema.RUNNING)]

    def failures(self) -> list[tuple[str, str, str]]:
        """(run_key, status, reason) of keys whose newest run failed and none finished."""
        out = []
        for k in self.plan.keys:
            s = self.states[k]
            if s.status in (schema.FAILED, schema.KILLED):
                run = s.last_failure
                out.append((k, s.status, run.data.tags.get(schema.T_FAILURE_REASON, "(no reason recorded)")))
        return out


def survey(plan: Plan, uri: str, *, reap: bool = True, stale_after: float = store.STALE_AFTER_S) -> Survey:
    """Read every run of ``plan`` from MLflow; with ``reap``, mark stale RUNNING runs KILLED first."""
    from repro.tracking import init_store

    try:
        init_store(uri)
        states = store.key_states(uri, plan.keys)
    except Exception as err:  # noqa: BLE001 - any store problem is one clear line for the CLI
        text = str(err).strip().splitlines()
        raise tracking.StoreError(f"MLflow store {uri} cannot be read: {text[0] if text else type(err).__name__}") from err
    reaped: dict[str, str] = {}
    if reap:
        reaped = store.reap_stale(uri, states, stale_after=stale_after)
        store.reap_dead_parents(uri, plan.grid.label, stale_after=stale_after)
        if reaped:
            states = store.key_states(uri, plan.keys)
    return Survey(plan=plan, states=states, reaped=reaped)


def run_grid(plan: Plan, opts: Options, *, console: Any = None, live: bool | None = None,
             costs: Callable[[list[Unit]], dict[str, float]] | None = None) -> GridOutcome:
    """Run every unfinished run of ``plan``; returns what happened (never raises for run failures)."""
    from repro.tracking import init_store, start_parent_run

    t0 = time.monotonic()
    uri = opts.context.tracking_uri
    init_store(uri)  # before any worker: concurrent first writers race on the schema migration
    store.prepare_sqlite(uri)
    sv = survey(plan, uri, stale_after=opts.stale_after)
    finished = set(sv.finished)
    todo = sv.todo
    outcome = GridOutcome(grid=plan.grid.label, parent_run_id=None, total=len(plan), finished_before=len(finished),
                          running_elsewhere=sv.running, reaped=sv.reaped)
    if not todo:
        outcome.wall_seconds = time.monotonic() - t0
        return outcome
    executor = opts.executor
    memory = resources.memory_problem((plan[k].spec for k in todo), slots=opts.workers or 1,
                                      remote=executor == "slurm", device=opts.context.device)
    if memory is not None and memory[1]:  # before anything is generated or recorded
        raise resources.ResourceError(memory[0])
    parent = start_parent_run(uri, grid=plan.grid.label, tags={
        store.T_LAUNCHER: store.process_identity(), store.T_EXECUTOR: executor,
        store.T_HEARTBEAT: f"{time.time():.0f}", "grid.todo": str(len(todo)), "grid.total": str(len(plan)),
        schema.T_GRID_PLAN: plan.plan_hash})
    outcome.parent_run_id = parent
    settings = Settings(context=replace(opts.context, grid=plan.grid.label, parent_run_id=parent),
                        heartbeat_s=opts.heartbeat_s, stale_after=opts.stale_after)
    status = schema.FAILED
    stopped: str | None = None  # why the invocation stopped early (its runs are then closed KILLED)
    closed = False  # its runs were closed already
    reserve = store.SpaceReserve(uri).hold()  # given back first if the disk fills
    try:
        if executor == "slurm":
            from repro.grid.slurm import run_slurm

            # It blocks on its array jobs for hours: a thread beats meanwhile (store.Beating).
            with store.Beating(uri, parent, settings.heartbeat_s):
                run_slurm(plan, todo, finished, settings, opts.slurm, outcome, console=console)
        else:
            _run_local(plan, todo, finished, settings, opts, outcome, console=console, live=live, costs=costs)
        status = schema.FINISHED if outcome.ok else schema.FAILED
    except KeyboardInterrupt:
        status, stopped = schema.KILLED, "interrupted: the launcher was stopped"
        raise
    except Exception as err:
        if not tracking.store_is_full(err):
            raise
        status, stopped, closed = schema.KILLED, "a disk is full", True
        reserve.release()  # the room to close this invocation's runs
        raise tracking.StoreError(_full_store_text(uri, err, _close_runs(uri, parent, todo, stopped))) from err
    finally:
        reserve.release()
        if stopped and not closed:
            _close_runs(uri, parent, todo, stopped)
        try:
            tracking.retrying(lambda: tracking.end_run(uri, parent, status))
        except Exception:  # noqa: BLE001 - stopping anyway: the next invocation closes a dead launcher's run
            if not stopped:
                raise
        outcome.wall_seconds = time.monotonic() - t0
    return outcome


def _close_runs(uri: str, parent: str, keys: list[str], reason: str) -> int | None:
    """Mark this invocation's RUNNING runs KILLED; None when the store refuses (the next
    invocation then marks them: their launcher is gone)."""
    try:
        return len(store.kill_orphans(uri, parent, keys, reason))
    except Exception:  # noqa: BLE001 - best effort: the next invocation reaps them anyway
        return None


def _full_store_text(uri: str, err: BaseException, closed: int | None) -> str:
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    runs = (f"{closed} running run(s) marked KILLED" if closed is not None else
            "its running runs could not be closed (the next run-grid marks them KILLED)")
    return (f"a disk is full ({first.strip()[:200]}; store {uri}): the grid stopped, {runs}, finished runs are "
            "kept: free space and run the grid again")


def _run_local(plan: Plan, todo: list[str], finished: set[str], settings: Settings, opts: Options,
               outcome: GridOutcome, *, console: Any, live: bool | None,
               costs: Callable[[list[Unit]], dict[str, float]] | None) -> None:
    from repro.grid.local import Scheduler, make_slots, run_local

    ctx = settings.context
    uri = ctx.tracking_uri
    data_tasks, pairs, deps = build_tasks(plan, todo, finished=finished, max_members=ctx.max_members,
                                          device=ctx.device)
    units = {task.task_id: unit for unit, task in pairs}
    ledger = Ledger(plan, outcome, uri=uri, parent_run_id=ctx.parent_run_id, finished=finished)
    sched = Scheduler(tasks=[*data_tasks, *[t for _, t in pairs]], deps=deps, done_keys=ledger.done,
                      failed_keys=ledger.failed, describe=pretrain_reason(plan), waiting=ledger.waiting)
    slots = make_slots(device=ctx.device, workers=opts.workers, runs_per_gpu=opts.runs_per_gpu)
    unit_costs: dict[str, float] = {}
    if costs:
        try:  # weights for the ETA: long pre-training units count for more than tiny fine-tunes
            unit_costs = costs([u for u, _ in pairs])
        except Exception:  # noqa: BLE001 - without weights the ETA counts runs
            unit_costs = {}
    progress = Progress(plan.grid.label, len(plan), len(finished), len(todo), console=console, live=live,
                        costs=unit_costs or None)
    last_beat = [time.monotonic()]
    last_poll = [time.monotonic()]

    def poll_waiting() -> None:
        """Keys another invocation trains: settled there (finished or failed), still live there,
        or given up (ours again: queued as a unit of its own)."""
        for key in sorted(sched.waiting):
            st = ledger.settle(key, stale_after=opts.stale_after)
            if st is None:
                return  # the store did not answer: ask again next tick
            if st.kind == "finished":
                progress.finish_elsewhere(1)
            elif st.kind == "failed":
                progress.finish_elsewhere(0, 1)
            elif st.kind == "gone":
                sched.waiting.discard(key)
                unit = plan.units([key], max_members=1, device=ctx.device)[0]
                task = UnitTask(task_id=f"{unit.task_id}:again{len(units)}", specs=unit.specs,
                                roles={key: plan[key].role})
                units[task.task_id] = unit
                sched.pending.append(task)
        progress.waiting = len(sched.waiting)

    def on_start(task: DataTask | UnitTask) -> None:
        progress.start(task.task_id, len(task.specs) if isinstance(task, UnitTask) else 0, task_phase(task))

    def on_result(task: DataTask | UnitTask, results: list[RunOutcome] | None, error: str | None) -> None:
        if isinstance(task, DataTask):
            if error:
                sched.failed_tasks[task.task_id] = f"dataset {task.dataset.label} could not be prepared: {error}"
            else:
                sched.done_tasks.add(task.task_id)
            progress.finish(task.task_id, 0, 0)
            return
        ok, bad = ledger.apply(task, results, error)
        sched.done_tasks.add(task.task_id)
        progress.waiting = len(sched.waiting)
        progress.finish(task.task_id, ok, bad, units[task.task_id].describe())

    def on_blocked(task: DataTask | UnitTask, reason: str) -> None:
        if isinstance(task, DataTask):
            return
        ledger.block(task, reason)
        progress.finish(task.task_id, 0, len(task.specs), units[task.task_id].describe())

    def on_tick() -> None:
        progress.tick()
        if sched.waiting and time.monotonic() - last_poll[0] > min(5.0, settings.heartbeat_s):
            last_poll[0] = time.monotonic()
            poll_waiting()
        if time.monotonic() - last_beat[0] > settings.heartbeat_s:
            last_beat[0] = time.monotonic()
            store.beat(uri, ctx.parent_run_id)

    with progress:
        run_local(sched, settings, slots, on_start=on_start, on_result=on_result, on_blocked=on_blocked,
                  on_tick=on_tick)


# --- status -----------------------------------------------------------------------------------

@dataclass
class StatusReport:
    grid: str
    total: int
    counts: Counter  # status -> runs
    per_axis: dict[str, dict[Any, Counter]]  # axis -> value -> Counter(status)
    failures: list[tuple[str, str, str, str]]  # (run_key, description, status, reason)
    running: list[str]
    stale: dict[str, str] = field(default_factory=dict)  # run_key -> why its RUNNING run's owner is gone


def grid_status(plan: Plan, uri: str) -> StatusReport:
    """Per-axis completion and failures of ``plan`` in the store (read-only: reaps nothing)."""
    sv = survey(plan, uri, reap=False)
    stale = _stale_keys(uri, sv)
    counts: Counter = Counter()
    per_axis: dict[str, dict[Any, Counter]] = {}
    for run in plan:
        st = STALE if run.run_key in stale else sv.states[run.run_key].status
        counts[st] += 1
        for axis, value in run.axis_values().items():
            values = run.shifts or ("-",) if axis == "shift" else (value,)
            for v in values:
                per_axis.setdefault(axis, {}).setdefault(v, Counter())[st] += 1
    failures = [(k, describe_run(plan[k]), st, reason) for k, st, reason in sv.failures()]
    failures += [(k, describe_run(plan[k]), STALE, f"RUNNING, but {why}: the next run-grid marks it KILLED and "
                  f"runs it again") for k, why in stale.items()]
    return StatusReport(grid=plan.grid.label, total=len(plan), counts=counts, per_axis=per_axis,
                        failures=failures, running=[k for k in sv.running if k not in stale], stale=stale)




def _stale_keys(uri: str, sv: Survey) -> dict[str, str]:
    """Keys whose only RUNNING runs have a dead owner (read-only: nothing is marked)."""
    running = {k: sv.states[k].running for k in sv.running}
    if not running:
        return {}
    parents = store.parents_of(uri, [r for runs in running.values() for r in runs])
    now = time.time()
    out = {}
    for key, runs in running.items():
        reasons = [store.stale_reason(r, parents.get(r.data.tags.get(schema.T_PARENT_RUN_ID, "")), now=now)
                   for r in runs]
        if all(reasons):
            out[key] = reasons[0]
    return out
