"""Local executor: a pool of worker processes (device slots) fed by a dependency-aware scheduler.

Slots: one per GPU × ``runs_per_gpu`` (each worker sees only its GPU through
``CUDA_VISIBLE_DEVICES``), or ``workers`` CPU workers sharing the cores (each gets
``cores // workers`` torch threads).  Workers are long-lived processes, so torch and MLflow are
imported once, not once per run: CPU workers fork from a fork server that has imported them
(:func:`worker_context`), GPU workers are spawned.  Each talks to the launcher over its own
pipe: a worker killed mid-task cannot corrupt a shared queue; the launcher sees its sentinel,
marks the task's RUNNING runs KILLED, records the loss and starts a fresh worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable, Mapping, Sequence

from repro.grid.worker import DataTask, Settings, UnitTask, pool_worker
from repro.outcome import RunOutcome
from repro.threads import thread_env


@dataclass
class Slot:
    """One worker's environment (e.g. its GPU) and its current process / task."""

    index: int
    env: dict[str, str]
    process: Any = None
    conn: Any = None
    task: DataTask | UnitTask | None = None
    started: float = 0.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_slots(*, device: str, workers: int | None, runs_per_gpu: int = 1, n_gpus: int | None = None) -> list[Slot]:
    """The pool's slots: GPU slots (``n_gpus × runs_per_gpu``) on CUDA, else ``workers`` CPU slots."""
    if device.startswith("cuda"):
        gpus = list(range(n_gpus if n_gpus is not None else gpu_count()))
        if not gpus:
            raise RuntimeError("--device cuda but no CUDA device is visible")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = [v.strip() for v in visible.split(",")] if visible else [str(g) for g in gpus]
        envs = [{"CUDA_VISIBLE_DEVICES": names[g]} for g in gpus for _ in range(max(1, runs_per_gpu))]
        if workers:
            envs = [envs[i % len(envs)] for i in range(workers)]
        return [Slot(i, env) for i, env in enumerate(envs)]
    n = max(1, workers or 1)
    threads = max(1, cpu_count() // n)
    env = {**thread_env(threads), "CUDA_VISIBLE_DEVICES": ""}
    return [Slot(i, dict(env)) for i in range(n)]


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA).

    Without a GPU driver on the machine (no /proc/driver/nvidia, /dev/nvidia*, WSL's /dev/dxg or
    ROCm's /dev/kfd) the answer is 0 without importing torch: a CPU machine's dry run and status stay
    torch-free and start in a second.
    """
    import glob

    if not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
            or os.path.exists("/dev/kfd")):  # kfd: AMD ROCm, which torch also drives through torch.cuda
        return 0
    import torch

    return torch.cuda.device_count()


@dataclass
class Scheduler:
    """Tasks with dependencies: a task is ready when every dependency succeeded.

    ``deps[task_id]`` lists task ids and/or run_keys; a run_key dependency is met once that key
    is FINISHED (``done_keys``), and broken once it failed (``failed_keys``).  ``waiting`` holds
    the keys another invocation is training: the pool keeps going (idle if need be) until the
    launcher moves each to ``done_keys`` or, if its owner gives up, back to ``pending``.
    """

    tasks: list[DataTask | UnitTask]
    deps: Mapping[str, Sequence[str]]
    done_keys: set[str] = field(default_factory=set)
    failed_keys: dict[str, str] = field(default_factory=dict)  # run_key -> reason
    done_tasks: set[str] = field(default_factory=set)
    failed_tasks: dict[str, str] = field(default_factory=dict)  # task id -> reason
    #: (run_key, its failure reason) -> the reason given to its dependants.
    describe: Callable[[str, str], str] | None = None
    waiting: set[str] = field(default_factory=set)  # run_keys trained by another invocation

    def __post_init__(self) -> None:
        self.pending: list[DataTask | UnitTask] = list(self.tasks)

    def _blocked(self, task: DataTask | UnitTask) -> str | None:
        for dep in self.deps.get(task.task_id, ()):
            if dep in self.failed_tasks:
                return self.failed_tasks[dep]
            if dep in self.failed_keys:
                reason = self.failed_keys[dep]
                return self.describe(dep, reason) if self.describe else reason
        return None

    def _ready(self, task: DataTask | UnitTask) -> bool:
        return all(dep in self.done_tasks or dep in self.done_keys for dep in self.deps.get(task.task_id, ()))

    def take_blocked(self) -> list[tuple[DataTask | UnitTask, str]]:
        """Remove and return the pending tasks whose dependencies failed, with the reason."""
        out = []
        for task in list(self.pending):
            reason = self._blocked(task)
            if reason is not None:
                self.pending.remove(task)
                out.append((task, reason))
        return out

    def next_ready(self) -> DataTask | UnitTask | None:
        for task in self.pending:
            if self._ready(task):
                self.pending.remove(task)
                return task
        return None


def run_local(scheduler: Scheduler, settings: Settings, slots: list[Slot], *,
              on_start: Callable[[DataTask | UnitTask], None],
              on_result: Callable[[DataTask | UnitTask, list[RunOutcome] | None, str | None], None],
              on_blocked: Callable[[DataTask | UnitTask, str], None],
              on_tick: Callable[[], None] = lambda: None, tick_s: float = 0.5) -> None:
    """Run every task of ``scheduler`` on the slots; callbacks report progress to the launcher.

    ``on_result(task, outcomes, error)``: ``outcomes`` from the worker, or ``error`` (a worker
    that raised or died).  Returns when nothing is pending or running.
    """
    ctx = worker_context(slots)

    def start(slot: Slot) -> None:
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=pool_worker, args=(child, worker_environment(slot), os.getcwd(), settings), daemon=True,
                           name=f"repro-grid-worker-{slot.index}")
        proc.start()
        child.close()
        slot.process, slot.conn, slot.task = proc, parent, None

    def stop_all() -> None:
        for slot in slots:
            if slot.process is not None and slot.process.is_alive():
                try:
                    slot.conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
        deadline = time.monotonic() + 10
        for slot in slots:
            if slot.process is not None:
                slot.process.join(max(0.1, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(5)

    for slot in slots:
        start(slot)
    try:
        while True:
            for task, reason in scheduler.take_blocked():
                on_blocked(task, reason)
            for slot in slots:
                if slot.task is None and slot.process.is_alive():
                    task = scheduler.next_ready()
                    if task is None:
                        break
                    slot.task, slot.started = task, time.monotonic()
                    on_start(task)
                    slot.conn.send(task)
            busy = [s for s in slots if s.task is not None]
            if not busy and scheduler.waiting:  # only another invocation's runs are left to wait for
                on_tick()
                time.sleep(tick_s)
                continue
            if not busy:
                if scheduler.pending:  # nothing runs and nothing is ready: broken dependencies
                    for task in list(scheduler.pending):
                        scheduler.pending.remove(task)
                        on_blocked(task, "its dependencies never completed")
                return
            waitables = {s.conn: s for s in busy} | {s.process.sentinel: s for s in busy}
            for obj in wait(list(waitables), timeout=tick_s):
                slot = waitables[obj]
                if slot.task is None:
                    continue
                task = slot.task
                if obj is slot.conn:
                    try:
                        kind, _, payload = slot.conn.recv()
                    except (EOFError, OSError):
                        continue  # the sentinel tells the rest
                    slot.task = None
                    if kind == "done":
                        on_result(task, payload, None)
                    else:
                        on_result(task, None, f"worker error: {payload.strip().splitlines()[-1]}")
                elif not slot.process.is_alive():
                    code = slot.process.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                    slot.task = None
                    on_result(task, None, f"worker process {slot.process.pid} died ({how}) while running it")
                    start(slot)
            on_tick()
    finally:
        stop_all()




#: What a CPU worker imports before its first task (torch, the engine, MLflow's client and SQL
#: store): loaded once, in the fork server, instead of once per worker.
WORKER_PRELOAD = ("torch", "repro.grid.worker", "repro.train.engine", "repro.tracking", "mlflow.tracking",
                  "mlflow.store.tracking.sqlalchemy_store")


def worker_context(slots: Sequence[Slot]) -> Any:
    """How worker processes start: forked from a fork server that has imported
    :data:`WORKER_PRELOAD` once (CPU slots), or spawned fresh (GPU slots).

    A spawned worker imports torch and MLflow itself: ~3.5 CPU-s each, so 16 CPU workers on 2 cores
    spent ~30 s importing before the first step.  Forked from the server they start in
    milliseconds.  CUDA slots keep ``spawn``: the fork server itself never touches CUDA, but the
    forked path is not yet measured on a GPU, and a GPU grid's few workers do not pay for the
    difference.  torch comes first in the preload and by name: the fork server ignores a module it
    cannot import, so torch must not depend on repro being importable from its directory.
    """
    if any(slot.env.get("CUDA_VISIBLE_DEVICES") != "" for slot in slots) \
            or "forkserver" not in mp.get_all_start_methods():  # no fork server on Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))
    return ctx


def worker_environment(slot: Slot) -> dict[str, str]:
    """The launcher's whole environment with the slot's own on top: a forked worker inherits the
    fork server's environment (from when it started), not the launcher's of today."""
    return {**os.environ, **slot.env}
