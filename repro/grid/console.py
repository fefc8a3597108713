"""What a grid invocation shows: the live progress display, and the text of ``--dry-run``,
``repro status`` and a run's outcome.  The library decides; this module only words it."""

from __future__ import annotations

import time
from typing import Any, Callable

from repro import schema
from repro.ensembles import DEFAULT_MAX_MEMBERS
from repro.grid.ledger import GridOutcome, describe_run
from repro.grid.plan import Plan
from repro.grid.worker import DataTask, UnitTask

#: A status of ``repro status`` only: RUNNING in MLflow, but its owner is gone.
STALE = "STALE"


#: The phases of a grid invocation, in the order they start.
PHASES = ("datasets", "pre-training", "fine-tuning")


def task_phase(task: DataTask | UnitTask) -> str:
    if isinstance(task, DataTask):
        return "datasets"
    return "pre-training" if schema.ROLE_PRETRAIN in task.roles.values() else "fine-tuning"


class Progress:
    """Counts and ETA of one invocation, shown live with rich (or as lines when not a terminal)."""

    def __init__(self, grid: str, total: int, finished_before: int, todo: int, *, console: Any = None,
                 live: bool | None = None, costs: dict[str, float] | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.grid, self.total, self.finished_before, self.todo = grid, total, finished_before, todo
        self.done = 0
        self.failed = 0
        self.running: dict[str, tuple[int, str]] = {}  # task id -> (runs in it, phase)
        self.waiting = 0  # keys another invocation is training
        self.costs = costs or {}
        self.cost_done = 0.0
        self.cost_total = sum(self.costs.values())
        self.t0 = time.monotonic()
        self.live_enabled = self.console.is_terminal if live is None else live
        self._live = None

    def __enter__(self) -> "Progress":
        if self.live_enabled:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)

    #: An ETA is shown once this share of the work (estimated cost, else runs) is done: the first
    #: units include worker start-up and dataset generation, and extrapolating them swings wildly.
    ETA_AFTER = 0.05

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.t0
        if self.cost_total > 0:
            share = self.cost_done / self.cost_total
            remaining = self.cost_total - self.cost_done
        else:
            share = (self.done + self.failed) / max(1, self.todo)
            remaining = self.todo - self.done - self.failed
        if share < self.ETA_AFTER or self.done + self.failed < 2:
            return None
        return max(0.0, elapsed * remaining / (self.cost_done if self.cost_total > 0 else self.done + self.failed))

    def phase(self) -> str:
        """What the pool is doing now: datasets, pre-training and/or fine-tuning."""
        phases = sorted({ph for _, ph in self.running.values()}, key=PHASES.index)
        return " + ".join(phases) if phases else ("waiting" if self.waiting else "starting")

    def render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        runs = sum(n for n, _ in self.running.values())
        units = sum(1 for n, _ in self.running.values() if n)
        remaining = self.todo - self.done - self.failed - runs
        elapsed = time.monotonic() - self.t0
        table = Table.grid(padding=(0, 1))
        table.add_row(f"[bold]{self.grid}[/] {self.phase()}",
                      ProgressBar(total=max(1, self.todo), completed=self.done + self.failed, width=30),
                      f"[green]done {self.done}[/] · [cyan]running {runs} runs in {units} units[/] · "
                      f"[red]failed {self.failed}[/] · "
                      + (f"[yellow]waiting on another invocation {self.waiting}[/] · " if self.waiting else "")
                      + f"remaining {max(0, remaining)} "
                      f"(of {self.todo} to do; {self.finished_before}/{self.total} finished before) · "
                      f"elapsed {hms(elapsed)} · ETA {self.eta_text()}")
        return table

    def eta_text(self) -> str:
        eta = self.eta()
        return hms(eta) if eta is not None else f"after {self.ETA_AFTER:.0%} of the work"

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def start(self, task_id: str, n: int, phase: str) -> None:
        self.running[task_id] = (n, phase)
        self._refresh()

    def finish(self, task_id: str, ok: int, bad: int, label: str = "") -> None:
        self.running.pop(task_id, None)
        self.done += ok
        self.failed += bad
        self.cost_done += self.costs.get(task_id, 0.0)
        if not self.live_enabled and label:
            self.console.print(f"[{hms(time.monotonic() - self.t0)}] {label}: {ok} finished, {bad} failed "
                               f"({self.done + self.failed}/{self.todo}, ETA {self.eta_text()})",
                               highlight=False)
        self._refresh()

    def finish_elsewhere(self, ok: int, bad: int = 0) -> None:
        """Keys this invocation waited for and another one ended."""
        self.done += ok
        self.failed += bad
        self._refresh()

    def tick(self) -> None:
        self._refresh()


def hms(seconds: float | None) -> str:
    """m:ss, h:mm:ss up to two days, then days or years (a paper grid on a CPU is years, not
    "39375:03:37")."""
    if seconds is None:
        return "?"
    if seconds >= 365 * 86400:
        return f"{seconds / (365.25 * 86400):,.1f} years"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.1f} days"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --- text for the CLI ---------------------------------------------------------------------------

def _axis_lines(per_axis: dict[str, Any], fmt: Callable[[Any], str]) -> list[str]:
    lines = []
    for axis, values in per_axis.items():
        items = ", ".join(f"{_fmt_value(v)}: {fmt(c)}" for v, c in values.items())
        lines.append(f"  {axis:<8} {items}")
    return lines


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


#: A dry-run warns when the estimated wall time exceeds this (two days).
LONG_GRID_S = 2 * 86400.0


def plan_text(plan: Plan, sv: Any, *, device: str = "cpu", max_members: int = DEFAULT_MAX_MEMBERS) -> str:
    """The ``--dry-run`` summary: counts per axis, finished / running / to do."""
    grid = plan.grid
    todo = sv.todo
    audit = f", {len(plan.audit)} budget audit" if plan.audit else ""
    lines = [f"grid {grid.label}: {len(plan)} runs ({len(plan.pretrain)} pre-training, "
             f"{len(plan.downstream)} downstream{audit}) in {len(plan.units(max_members=max_members, device=device))} units"
             + (f" — {grid.description}" if grid.description else ""),
             "runs per axis (to do / all):"]
    all_counts = plan.axis_counts()
    todo_counts = plan.axis_counts(todo)
    for axis, counter in all_counts.items():
        items = ", ".join(f"{_fmt_value(v)}: {todo_counts[axis].get(v, 0)}/{n}" for v, n in counter.items())
        lines.append(f"  {axis:<8} {items}")
    lines.append(f"finished {len(sv.finished)}, running elsewhere {len(sv.running)}, to do {len(todo)}"
                 + (f" (of which {sum(1 for k in todo if sv.states[k].status != 'MISSING')} failed/killed before)"))
    if sv.reaped:
        lines.append(f"stale RUNNING runs marked KILLED: {len(sv.reaped)}")
    return "\n".join(lines)


def cost_text(est: Any, *, batch: int, slots: int = 1, device: str = "cpu", phased: bool = False) -> str:
    """The ``--dry-run`` cost lines: device-hours, wall time with ``slots`` workers (``phased``:
    SLURM's phases, queue time not included), where the throughput came from, and each size's
    throughput in steps of the grid's ``batch``."""
    lines: list[str] = []
    if est.throughput == {} and est.not_estimated:
        return f"estimated cost: not available ({est.source}); {len(est.not_estimated)} units not estimated"
    hours = est.device_hours
    wall = est.wall_seconds(slots, phased=phased)
    lines.append(f"estimated cost: {hours:.3f} {device}-hours ({est.source}); "
                 f"wall time about {hms(wall)} with {slots} {'GPU slot' if device.startswith('cuda') else 'worker'}"
                 f"{'s' if slots != 1 else ''}" + (" once the array tasks run (queue time not included)" if phased else ""))
    if wall > LONG_GRID_S:
        lines.append(f"  warning: about {hms(wall)} of wall time here (more than {hms(LONG_GRID_S)}): a GPU "
                     f"(--device cuda), a cluster (--executor slurm) or fewer axes would fit it better")
    if est.not_estimated:
        lines.append(f"  not estimated: {len(est.not_estimated)} units of model sizes / resolutions with no "
                     f"throughput (no finished run, or too costly to time here; the estimate above leaves "
                     f"them out)")
    for key, tp in sorted(est.throughput.items()):
        model, res, ch = key
        lines.append(f"  throughput {model} at {res}x{res} ({ch} channels): " + throughput_text(tp, batch)
                     + ("" if tp.origin == "timed" else f" ({tp.origin})"))
    return "\n".join(lines)


def throughput_text(tp: Any, batch: int) -> str:
    """One size's training speed, consistent in itself: the samples/s that a step of ``batch``
    samples gives, and that step's time split into its fixed part and its part per sample (the
    estimate's model, ``Throughput.step``)."""
    step = tp.step(batch)
    return (f"{batch / step:,.0f} samples/s in steps of {batch} ({step * 1e3:.1f} ms a step: "
            f"{tp.latency * 1e3:.1f} ms fixed + {tp.per_sample * 1e6:,.0f} us per sample)")


def outcome_text(out: GridOutcome, plan: Plan) -> str:
    lines = [f"grid {out.grid}: {out.complete}/{out.total} runs finished "
             f"({len(out.finished)} now, {out.finished_before} before"
             + (f", {len(out.finished_elsewhere)} by another invocation" if out.finished_elsewhere else "")
             + f"), {len(out.failed)} failed, in {hms(out.wall_seconds)}"
             + (f"; MLflow parent run {out.parent_run_id}" if out.parent_run_id else "")]
    settled = set(out.finished) | set(out.finished_elsewhere) | {k for k, _ in out.failed}
    still = [k for k in dict.fromkeys(out.running_elsewhere) if k not in settled]
    if still:
        head = "nothing left to do here" if out.parent_run_id is None else "not trained here"
        lines.append(f"{head}: {len(still)} runs are being trained by another invocation "
                     f"(`repro status` shows them; run the grid again once it ends to pick up any it gives up)")
    if out.reaped:
        lines.append(f"stale RUNNING runs marked KILLED and run again: {len(out.reaped)}")
    if out.failed:
        lines.append("failed runs:")
        for key, reason in out.failed:
            lines.append(f"  {key}  {describe_run(plan[key])}: {reason}")
    return "\n".join(lines)


def status_text(rep: Any) -> str:
    c = rep.counts
    lines = [f"grid {rep.grid}: {c.get(schema.FINISHED, 0)}/{rep.total} finished, {c.get(schema.RUNNING, 0)} running, "
             + (f"{c.get(STALE, 0)} stale (owner gone), " if c.get(STALE) else "")
             + f"{c.get(schema.FAILED, 0)} failed, {c.get(schema.KILLED, 0)} killed, {c.get('MISSING', 0)} not started",
             "completion per axis (finished/all):"]
    lines += _axis_lines(rep.per_axis, lambda cnt: f"{cnt.get(schema.FINISHED, 0)}/{sum(cnt.values())}")
    if rep.failures:
        lines.append(f"failures ({len(rep.failures)}):")
        for key, desc, st, reason in rep.failures:
            lines.append(f"  {key}  {st:<6} {desc}: {reason}")
    return "\n".join(lines)
