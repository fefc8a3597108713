"""The outcome bookkeeping of one grid invocation, shared by the local pool and SLURM.

Both executors hand every unit's result here (:meth:`Ledger.apply`) and every unit whose
dependency broke (:meth:`Ledger.block`), so "what finished, what failed and why, what waits on
another invocation" has one owner; the executors only decide *when* a unit runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from repro import schema
from repro import tracking
from repro.config import DatasetSpec
from repro.grid import store
from repro.grid.plan import Plan, PlannedRun, Unit
from repro.grid.worker import DataTask, UnitTask
from repro.outcome import RunOutcome


@dataclass
class GridOutcome:
    """What one invocation did."""

    grid: str
    parent_run_id: str | None
    total: int
    finished_before: int
    running_elsewhere: list[str]
    finished: list[str] = field(default_factory=list)
    finished_elsewhere: list[str] = field(default_factory=list)  # waited for: another invocation trained them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_key, reason)
    reaped: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No run failed (runs another live invocation trains are its business, not a failure)."""
        return not self.failed

    @property
    def complete(self) -> int:
        return self.finished_before + len(self.finished) + len(self.finished_elsewhere)


def build_tasks(plan: Plan, todo: list[str], *, finished: set[str], max_members: int, device: str | None = None,
                with_data: bool = True) -> tuple[list[DataTask], list[tuple[Unit, UnitTask]], dict[str, list[str]]]:
    """Data tasks, unit tasks and each task's dependencies (task ids or pre-training run_keys)."""
    units = plan.units(todo, max_members=max_members, device=device)
    datasets: dict[DatasetSpec, DataTask] = {}
    deps: dict[str, list[str]] = {}
    pairs = []
    for unit in units:
        ds = unit.specs[0].data
        if with_data and ds not in datasets:
            datasets[ds] = DataTask(ds)
        task = UnitTask(task_id=unit.task_id, specs=unit.specs, roles={k: plan[k].role for k in unit.keys})
        pairs.append((unit, task))
        deps[task.task_id] = ([datasets[ds].task_id] if with_data else []) + \
            sorted(k for k in unit.depends_on if k not in finished)
    return list(datasets.values()), pairs, deps


def describe_run(run: PlannedRun) -> str:
    s = run.spec
    bits = [s.arm, s.data.label, s.model]
    if s.arm != "zero_shot":
        bits += [f"N={s.n_train}", f"lr={s.lr:g}", f"seed={s.seed}"]
    if run.role == schema.ROLE_PRETRAIN:
        bits.insert(0, schema.ROLE_PRETRAIN)
    return " ".join(bits)


def pretrain_reason(plan: Plan) -> Callable[[str, str], str]:
    """(dependency, its failure) -> the reason its dependants are blocked with."""
    def describe(dep: str, reason: str) -> str:
        if dep in plan:
            return f"pre-training run {dep} ({describe_run(plan[dep])}) failed: {reason}"
        return reason
    return describe


class Ledger:
    """Which keys of one invocation finished, failed (and why), or wait on another invocation.

    ``done`` / ``failed`` / ``waiting`` are the very set and dict objects the local scheduler
    (:class:`repro.grid.local.Scheduler`) is built on: what the ledger records releases or blocks
    dependants there at once.  The :class:`GridOutcome` is what the invocation reports.
    """

    def __init__(self, plan: Plan, outcome: GridOutcome, *, uri: str, parent_run_id: str | None,
                 finished: Iterable[str]) -> None:
        self.plan, self.outcome, self.uri, self.parent_run_id = plan, outcome, uri, parent_run_id
        self.done: set[str] = set(finished)
        self.failed: dict[str, str] = {}
        self.waiting: set[str] = set(outcome.running_elsewhere)

    def finish(self, key: str) -> None:
        self.done.add(key)
        self.outcome.finished.append(key)

    def fail(self, key: str, reason: str | None) -> None:
        why = reason or "(no reason recorded)"
        self.failed[key] = why
        self.outcome.failed.append((key, why))

    def wait(self, key: str) -> None:
        """Another invocation holds ``key``: its dependants wait for that one's outcome."""
        self.waiting.add(key)
        if key not in self.outcome.running_elsewhere:
            self.outcome.running_elsewhere.append(key)

    def finish_elsewhere(self, key: str) -> None:
        self.waiting.discard(key)
        self.done.add(key)
        self.outcome.finished_elsewhere.append(key)

    def apply(self, task: UnitTask, outcomes: Sequence[RunOutcome] | None, error: str | None) -> tuple[int, int]:
        """Record one unit's result (``error``: the worker raised or died); returns (finished, failed)."""
        full = next((r for r in [error, *(o.failure_reason for o in outcomes or ())] if tracking.store_is_full(r)),
                    None)
        if full:  # every later unit would fail the same way
            raise tracking.StoreError(f"a disk is full: {full}")
        if error:  # the worker raised or died: its RUNNING runs are orphans
            store.kill_orphans(self.uri, self.parent_run_id, [s.run_key for s in task.specs], error)
        got = {o.run_key: o for o in outcomes or ()}
        ok = bad = 0
        for spec in task.specs:
            o = got.get(spec.run_key)
            if o is None:
                self.fail(spec.run_key, error or "no outcome reported")
                bad += 1
            elif o.elsewhere:
                self.wait(spec.run_key)
            elif o.finished and o.skipped:  # another invocation finished it between our survey and the pull
                self.finish_elsewhere(spec.run_key)
                ok += 1
            elif o.finished:
                self.finish(spec.run_key)
                ok += 1
            else:
                self.fail(spec.run_key, o.failure_reason or error)
                bad += 1
        return ok, bad

    def block(self, task: UnitTask, reason: str) -> None:
        """A dependency of ``task`` broke: each of its runs is recorded FAILED with ``reason``."""
        for spec in task.specs:
            tracking.record_failed(self.uri, spec, reason, grid=self.plan.grid.label, role=self.plan[spec.run_key].role,
                                parent_run_id=self.parent_run_id)
            self.fail(spec.run_key, reason)

    def settle(self, key: str, *, stale_after: float) -> store.Standing | None:
        """Look up a key another invocation held: finished there (done), failed there (a failure,
        as if ours), or still live / given up (returned for the caller to wait or run it again).
        ``None`` when the store could not be read (ask again later)."""
        try:
            st = store.standing(self.uri, store.runs_of_key(self.uri, key), stale_after=stale_after)
        except Exception:  # noqa: BLE001 - a store hiccup: unknown for now
            return None
        if st.kind == "finished":
            self.finish_elsewhere(key)
        elif st.kind == "failed":
            self.waiting.discard(key)
            self.fail(key, f"failed in another invocation (run {st.run.info.run_id}): {st.reason}")
        return st
