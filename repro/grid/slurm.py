"""SLURM executor: submitit job arrays, one phase per dependency level.

Phases: (1) datasets, (2) pre-training units, (3) downstream units.  Each phase is one job
array; array task ``i`` of ``T`` pulls units ``i, i+T, i+2T, ...`` and, before each, re-reads
MLflow and drops keys that finished meanwhile (so a resubmitted or overlapping array never
trains a finished key again).  Between phases the launcher records the dependants of failed
pre-training runs as FAILED, naming the pre-training run, without submitting them.

The array tasks write to MLflow directly; for many hosts point ``--tracking-uri`` at an
``mlflow server`` (PostgreSQL backend) — never SQLite on a network filesystem.  Without a
cluster, ``cluster="debug"`` (in-process) or ``"local"`` (subprocesses) run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from repro import schema
from repro.grid.ledger import GridOutcome, Ledger, build_tasks, pretrain_reason
from repro.grid.worker import DataTask, Settings, UnitTask, run_task
from repro.outcome import RunOutcome


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 16
    tasks: int | None = None  # array size per phase (default: one per unit, at most max_tasks)
    max_tasks: int = 256
    folder: Path = Path(".repro/slurm")
    cluster: str | None = None  # None: slurm; "debug" / "local" for tests without a cluster
    setup: tuple[str, ...] = ()  # shell lines run before each task (module load, venv activate)
    additional: dict[str, Any] = field(default_factory=dict)


def _executor(opts: SlurmOptions, name: str):
    import submitit

    cluster = opts.cluster or "slurm"
    ex = submitit.AutoExecutor(folder=str(opts.folder / "%j"), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": opts.time_min, "name": name}
    if cluster == "slurm":
        params.update(slurm_partition=opts.partition, slurm_gpus_per_task=opts.gpus_per_task or None,
                      slurm_array_parallelism=opts.array_parallelism, slurm_setup=list(opts.setup),
                      slurm_additional_parameters=dict(opts.additional))
        if opts.cpus_per_task:
            params["slurm_cpus_per_task"] = opts.cpus_per_task
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex


def sbatch_script(opts: SlurmOptions, n_tasks: int, *, name: str = "repro-grid") -> str:
    """The sbatch script a phase with ``n_tasks`` array tasks is submitted with (for inspection/tests).

    Built by submitit's own template function with the parameters :func:`_executor` passes,
    so it works without a cluster.
    """
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    folder = str(opts.folder / "%j")
    params: dict[str, Any] = {"time": opts.time_min, "job_name": name, "array_parallelism": opts.array_parallelism,
                              "gpus_per_task": opts.gpus_per_task or None, "setup": list(opts.setup),
                              "additional_parameters": dict(opts.additional), "partition": opts.partition,
                              "cpus_per_task": opts.cpus_per_task, "map_count": n_tasks}
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=folder, **{k: v for k, v in params.items() if v is not None})


TaskResult = tuple[str, list[RunOutcome] | None, str | None]  # task id, run outcomes, error


def array_task(tasks: list[DataTask | UnitTask], settings: Settings) -> list[TaskResult]:
    """Body of one array task: run its share of the phase; never raises for one task's failure.

    With several GPUs in the allocation (``--gpus-per-task`` > 1) the share runs on a local
    pool of one worker per GPU, so no GPU idles; otherwise task after task in this process.
    """
    from repro.tracking import configure_store_logs

    configure_store_logs()  # submitit's process: retries to the tracking server announced, as locally
    return run_share(tasks, settings, _allocation_slots(settings))


def _allocation_slots(settings: Settings) -> list:
    """One slot per GPU SLURM gave this task (its CUDA_VISIBLE_DEVICES); none for one GPU or CPU."""
    if not settings.context.device.startswith("cuda"):
        return []
    from repro.grid.local import gpu_count, make_slots

    n_gpus = gpu_count()
    return make_slots(device="cuda", workers=None, n_gpus=n_gpus) if n_gpus > 1 else []


def run_share(tasks: list[DataTask | UnitTask], settings: Settings, slots: list) -> list[TaskResult]:
    """Run independent tasks (one phase) in this process, or on ``slots`` when there are several."""
    if len(slots) <= 1:
        return [_run_here(task, settings) for task in tasks]
    from repro.grid.local import Scheduler, run_local

    results: dict[str, tuple[list[RunOutcome] | None, str | None]] = {}

    def record(task: DataTask | UnitTask, outcomes: list[RunOutcome] | None, error: str | None) -> None:
        results[task.task_id] = (outcomes, error)

    run_local(Scheduler(tasks=list(tasks), deps={}), settings, slots, on_start=lambda task: None,
              on_result=record, on_blocked=lambda task, reason: record(task, None, reason))
    return [(task.task_id, *results.get(task.task_id, (None, "never started"))) for task in tasks]


def _run_here(task: DataTask | UnitTask, settings: Settings) -> TaskResult:
    import traceback

    try:
        return (task.task_id, run_task(task, settings), None)
    except Exception:  # noqa: BLE001 - recorded by the launcher
        return (task.task_id, None, traceback.format_exc(limit=5).strip().splitlines()[-1])


def _run_phase(tasks: list[DataTask | UnitTask], settings: Settings, opts: SlurmOptions, name: str,
               console: Any) -> dict[str, tuple[list[RunOutcome] | None, str | None]]:
    if not tasks:
        return {}
    n = min(len(tasks), opts.tasks or opts.max_tasks)
    shares = [tasks[i::n] for i in range(n)]
    ex = _executor(opts, name)
    jobs = ex.map_array(array_task, shares, [settings] * n)
    if console is not None:
        console.print(f"submitted {name}: {n} array tasks ({jobs[0].job_id.split('_')[0]})", highlight=False)
    results: dict[str, tuple[list[RunOutcome] | None, str | None]] = {}
    for job, share in zip(jobs, shares):
        try:
            for task_id, outcomes, error in job.result():
                results[task_id] = (outcomes, error)
        except Exception as err:  # noqa: BLE001 - a lost array task: its share failed
            reason = f"SLURM array task {job.job_id} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}"
            for task in share:
                results.setdefault(task.task_id, (None, reason))
    return results


def run_slurm(plan, todo: list[str], finished: set[str], settings: Settings, opts: SlurmOptions | None,
              outcome: GridOutcome, *, console: Any = None) -> None:
    """Run ``todo`` keys of ``plan`` as three dependent SLURM array phases; fills ``outcome``."""
    opts = opts or SlurmOptions()
    ctx = settings.context
    uri = ctx.tracking_uri
    data_tasks, pairs, deps = build_tasks(plan, todo, finished=finished, max_members=ctx.max_members,
                                          device=ctx.device)
    describe = pretrain_reason(plan)
    ledger = Ledger(plan, outcome, uri=uri, parent_run_id=ctx.parent_run_id, finished=finished)
    bad_data: dict[str, str] = {}
    data_results = _run_phase(list(data_tasks), settings, opts, f"{plan.grid.label}-data", console)
    for t in data_tasks:
        err = data_results.get(t.task_id, (None, "no result"))[1]
        if err:
            bad_data[t.task_id] = f"dataset {t.dataset.label} could not be prepared: {err}"

    for phase in (schema.ROLE_PRETRAIN, schema.ROLE_DOWNSTREAM):
        runnable = []
        for unit, task in pairs:
            # audit runs start from pre-trained models like downstream runs: same phase
            if (schema.ROLE_PRETRAIN if unit.role == schema.ROLE_PRETRAIN else schema.ROLE_DOWNSTREAM) != phase:
                continue
            if any(dep in ledger.waiting for dep in deps[task.task_id]):  # its owner also runs the dependants
                for spec in task.specs:
                    ledger.wait(spec.run_key)
                continue
            reason = _broken_dependency(deps[task.task_id], bad_data, ledger, describe)
            if reason:
                ledger.block(task, reason)
            else:
                runnable.append(task)
        results = _run_phase(runnable, settings, opts, f"{plan.grid.label}-{phase}", console)
        for task in runnable:
            outcomes, error = results.get(task.task_id, (None, "no result"))
            ledger.apply(task, outcomes, error)
    for key in list(dict.fromkeys(outcome.running_elsewhere)):
        st = ledger.settle(key, stale_after=settings.stale_after)
        if st is not None and st.kind == "gone":  # given up there: a failure here, so the exit says run again
            ledger.fail(key, "left to another invocation that did not finish it: run the grid again")


def _broken_dependency(deps: list[str], bad_data: dict[str, str], ledger: Ledger,
                       describe: Callable[[str, str], str]) -> str | None:
    """Why a unit cannot run (a dataset failed, a pre-training run failed or did not finish), or None."""
    for dep in deps:
        if dep in bad_data:
            return bad_data[dep]
        if dep in ledger.failed:
            return describe(dep, ledger.failed[dep])
        if not dep.startswith("data:") and dep not in ledger.done:
            return describe(dep, "it did not finish")
    return None
