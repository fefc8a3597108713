"""What a worker does: prepare a dataset, or run one unit through the training engine.

Used by both executors: the local pool's worker processes (:func:`pool_worker`) and the SLURM
array tasks (:mod:`repro.grid.slurm`).  A unit is re-checked against MLflow just before it
runs ("pull"): keys that finished meanwhile, or that another live process is training, are
dropped; the runs the engine creates are claims that :func:`repro.grid.store.claim` settles
against other launchers, so no key is trained twice at once.  While the engine trains, a heartbeat thread tags the unit's RUNNING runs with this
process's identity (see :mod:`repro.grid.store`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Mapping, Sequence

from repro import schema
from repro.config import DatasetSpec, RunSpec
from repro.execution import RunContext
from repro.grid import store
from repro.outcome import RunOutcome
from repro.threads import limited_threads


@dataclass(frozen=True)
class DataTask:
    """Generate (or verify) every split of one dataset before units that read it start."""

    dataset: DatasetSpec

    @property
    def task_id(self) -> str:
        from repro.config import spec_hash

        return f"data:{spec_hash(self.dataset)}"


@dataclass(frozen=True)
class UnitTask:
    """Run these specs (one batch_key) through the engine."""

    task_id: str
    specs: tuple[RunSpec, ...]
    roles: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """How every task of one invocation runs: the engine's context (grid and parent run filled
    in) and the liveness timings of :mod:`repro.grid.store`."""

    context: RunContext
    heartbeat_s: float = store.HEARTBEAT_S
    stale_after: float = store.STALE_AFTER_S


def prepare_dataset(dataset: DatasetSpec, data_dir: Path | None) -> None:
    from repro.data import default_data_dir, ensure_split

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    for split in ("train", "val", "test"):
        ensure_split(dataset, split, root)


class _Heartbeat(threading.Thread):
    """Tags the RUNNING runs of ``keys`` with this worker's identity: soon after start, then periodically."""

    def __init__(self, settings: Settings, keys: Sequence[str]) -> None:
        super().__init__(daemon=True, name="grid-heartbeat")
        self.settings, self.keys = settings, list(keys)
        self.identity = store.process_identity()
        self.stop = threading.Event()

    def run(self) -> None:
        wait = min(1.0, self.settings.heartbeat_s)
        while not self.stop.wait(wait):
            try:
                store.beat_runs(self.settings.context.tracking_uri, self.settings.context.parent_run_id, self.keys,
                                self.identity)
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                pass
            wait = self.settings.heartbeat_s


def run_unit(task: UnitTask, settings: Settings) -> list[RunOutcome]:
    """Run the unfinished specs of ``task``; returns one outcome per spec of the task."""
    from repro.train.engine import execute

    uri = settings.context.tracking_uri
    states = store.key_states(uri, [s.run_key for s in task.specs])
    out: list[RunOutcome] = []
    todo = []
    for spec in task.specs:
        st = store.standing(uri, states[spec.run_key].runs, stale_after=settings.stale_after)
        if st.kind == "finished":
            out.append(RunOutcome(spec.run_key, schema.FINISHED, st.run.info.run_id, skipped=True))
        elif st.kind == "live":
            out.append(RunOutcome(spec.run_key, schema.ELSEWHERE, st.run.info.run_id, skipped=True,
                                  failure_reason=f"run {st.run.info.run_id} of another invocation is training it"))
        else:  # failed before, or gone: ours to train
            todo.append(spec)
    if not todo:
        return out
    beat = _Heartbeat(settings, [s.run_key for s in todo])
    beat.start()
    try:
        outcomes = execute(todo, settings.context, roles=dict(task.roles), progress=False,
                           extra_tags={store.T_WORKER: store.process_identity(), store.T_HEARTBEAT: f"{time.time():.0f}"},
                           claim=lambda mine: store.claim(uri, mine, stale_after=settings.stale_after))
    finally:
        beat.stop.set()
    out.extend(outcomes)
    return out


def run_task(task: DataTask | UnitTask, settings: Settings) -> list[RunOutcome]:
    if isinstance(task, DataTask):
        prepare_dataset(task.dataset, settings.context.data_dir)
        return []
    return run_unit(task, settings)


# --- the local pool's worker process --------------------------------------------------------------

#: A worker's process name (``ps``, ``top``, /proc/PID/comm): forked from the fork server, its
#: command line is the fork server's.
WORKER_PROCESS_NAME = b"repro-worker"


def _die_with_launcher() -> None:
    """Exit when the launcher dies (even by kill -9), so no orphan keeps training.

    A CPU worker's parent process is the launcher's fork server, which outlives the launcher while
    any worker holds its pipe; so the worker watches the launcher itself: multiprocessing's parent
    process of a worker is the process that started it, and its sentinel (a pipe the launcher holds
    open) becomes ready when the launcher exits.  A spawned worker's parent is the launcher:
    PDEATHSIG kills it at once as well.
    """
    try:  # Linux: the kernel sends SIGKILL when the parent thread exits
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, WORKER_PROCESS_NAME)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    launcher = mp.parent_process()
    if launcher is None:  # not started by multiprocessing (a test calling pool_worker directly)
        return

    def watch() -> None:
        wait([launcher.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


def pool_worker(conn: Any, env: Mapping[str, str], cwd: str, settings: Settings) -> None:
    """Entry point of one local worker process: receive tasks on ``conn``, answer with outcomes.

    ``env`` (the launcher's environment with the slot's ``CUDA_VISIBLE_DEVICES`` and thread counts)
    replaces the process's own first: a spawned worker has not imported torch yet; a forked one has
    (in its fork server), so its thread count is also set through :func:`limited_threads` below.
    Messages in: a task, or None to stop.  Messages out: ``("done", task_id, outcomes)`` or
    ``("error", task_id, traceback)``.
    """
    os.environ.clear()  # a forked worker holds its fork server's environment: take the launcher's
    os.environ.update(env)
    os.chdir(cwd)  # multiprocessing's preparation does this too; explicit, so the rule does not rest on it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides how to stop
    from repro.tracking import configure_store_logs

    configure_store_logs()
    _die_with_launcher()
    threads = env.get("OMP_NUM_THREADS")  # read again by torch when it loads; set here if already loaded
    with limited_threads(int(threads) if threads else None):
        _serve(conn, settings)
    _leave(conn)


def _leave(conn: Any) -> None:
    """End the worker without the interpreter's teardown.  Every task's files are closed, its
    runs recorded and its outcome sent before the next message is read, so there is nothing left
    to finalise; finalising the torch and MLflow modules costs ~1.5 s of CPU per worker (a
    process importing both exits 1.2-1.7 s after its last line on the 2-core machine), which the
    launcher waits for at the end of every grid, with every worker doing it at once."""
    import logging

    from repro.tracking import flush_async_logging

    try:
        flush_async_logging()
    except Exception:  # noqa: BLE001 - the runs' outcomes are sent already; leave regardless
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    conn.close()
    os._exit(0)


def _serve(conn: Any, settings: Settings) -> None:
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = run_task(task, settings)
            conn.send(("done", task.task_id, result))
        except BaseException:  # noqa: BLE001 - report anything; the launcher records it
            conn.send(("error", task.task_id, traceback.format_exc(limit=8)))
        sys.stdout.flush()
