"""Synthetic MLflow stores laid out exactly like the training engine's, for tests and benchmarks.

The analysis layer only *reads* MLflow; this is its test fixture (imported by the tests and by
``benchmarks/bench_analysis.py``).  It writes through the engine's own writer,
:class:`repro.tracking.RunRecorder` (one parent run per grid, one child per
:class:`~repro.config.RunSpec`, the same params, tags and metrics), but with test errors drawn
from planted scaling laws, so that fits, transfer metrics and claims can be checked against known truth:

- scratch:   err(N) = E_m + A * N^-alpha                       (E_m shrinks with model size)
- transfer:  err(N) = E_m + (A / b) * N^-alpha,  b = benefit * growth^size / (1 + decay * shift)
  so the data-efficiency multiplier is exactly b^(1/alpha) at every error level;
- zero-shot: err = z0 * (1 + 4 * shift) (grows with the OOD shift);
- every trained run is multiplied by an LR penalty 1 + c * log10(lr / lr_best)^2 (transfer's
  best LR is smaller than scratch's, so tuning the fine-tuning LR matters) and by lognormal noise;
- trained runs are converged (``convergence/late_improvement`` 0.1-0.5 %) except a planted fraction
  ``unconverged`` of the downstream runs of ``unconverged_arms`` (late improvement 5-25 %, error
  inflated by 1 + 4 x that: an under-trained run is worse, as measured in issue 9 §1);
- compute: ``compute/sample_steps`` = N x epochs, ``compute/flops`` from :func:`repro.flops.training_flops`,
  ``compute/pretrain_flops`` = the pre-training run's flops for transfer and zero-shot runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from repro import schema, tracking
from repro.config import DatasetSpec, RunSpec
from repro.flops import training_flops
from analysis.transfer import shift_magnitude

#: Upstream ranges of the E3 ladder (docs/protocol.md §3.3), used by the benchmark store.
E3_SHIFTS: tuple[tuple[tuple[str, float, float], tuple[str, float, float]], ...] = (
    (("poisson", 1.0, 2.5), ("poisson", 1.0, 5.0)),
    (("poisson", 1.0, 5.0), ("poisson", 2.5, 7.5)),
    (("poisson", 1.0, 5.0), ("poisson", 5.0, 10.0)),
    (("poisson", 1.0, 5.0), ("poisson", 10.0, 20.0)),
    (("advdiff", 0.2, 1.0), ("advdiff", 1.0, 2.0)),
    (("advdiff", 0.2, 1.0), ("advdiff", 2.0, 5.0)),
    (("helmholtz", 1.0, 10.0), ("helmholtz", 10.0, 20.0)),
    (("helmholtz", 1.0, 10.0), ("helmholtz", 20.0, 40.0)),
)

#: Two shifts of the quick grid: the headline E1 shift and a milder one.
QUICK_SHIFTS = (E3_SHIFTS[1], E3_SHIFTS[2])


@dataclass(frozen=True, kw_only=True)
class SyntheticGrid:
    """Shape and planted truth of a synthetic grid."""

    #: Never a shipped grid's label: `fit-laws --grid <label>` selects a shipped grid by its plan.
    name: str = "synthetic"
    shifts: tuple[tuple[tuple[str, float, float], tuple[str, float, float]], ...] = QUICK_SHIFTS
    models: tuple[str, ...] = ("xxs", "xs")
    n_values: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    lrs: tuple[float, ...] = (1e-4, 5e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1)
    #: seeds used at N above this (the paper runs several seeds only at small N)
    max_n_all_seeds: int = 1 << 30
    mixed: bool = False  # add E4: a model pre-trained on the mixture, fine-tuned on each task
    epochs: int = 3
    resolution: int = 32
    n_failed: int = 1  # runs that end FAILED with a failure_reason (and are re-run FINISHED)
    n_killed: int = 0
    # planted truth
    e_floor: float = 0.02
    a: float = 1.5
    alpha: float = 0.5
    benefit: float = 6.0
    growth: float = 1.5
    #: how fast the benefit falls with the shift's magnitude (0: the same benefit at every shift)
    shift_decay: float = 2.0
    zero_shot: float = 0.08
    noise: float = 0.05
    lr_best: dict[str, float] = field(default_factory=lambda: {"scratch": 1e-3, "transfer": 1e-4})
    lr_penalty: float = 0.5
    seed: int = 0
    #: fraction of the trained downstream runs of ``unconverged_arms`` planted as not converged
    #: (picked by a hash of the run_key, so the other runs' draws do not change)
    unconverged: float = 0.0
    unconverged_arms: tuple[str, ...] = ("scratch", "transfer")


@dataclass(frozen=True)
class SyntheticRun:
    """One child run to write: its spec, extra params, tags, final metrics and state."""

    spec: RunSpec
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[float]]
    status: str


def synthetic_flops(spec: RunSpec) -> float:
    """The FLOPs the engine would record for ``spec`` trained ``epochs`` full passes on the reference
    spectral path (as the runs' ``fast = False`` param says), validated once per epoch (a zero-shot
    run: validated once, as the engine does)."""
    return training_flops(spec.model_spec, spec.data.resolution, "reference", samples_seen=spec.n_train * spec.epochs,
                          n_val=spec.data.n_val, evaluations=max(spec.epochs, 1))


def _hash_unit(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (a run_key is hex)."""
    return int(key[:8], 16) / 2 ** 32


def _dataset(t: tuple[str, float, float] | str, grid: SyntheticGrid, n_train: int) -> DatasetSpec:
    if t == "mixed":
        return DatasetSpec(pde="mixed", resolution=grid.resolution, n_train=n_train, n_val=64, n_test=64)
    pde, low, high = t
    return DatasetSpec(pde=pde, low=low, high=high, resolution=grid.resolution, n_train=n_train, n_val=64, n_test=64)


def plan(grid: SyntheticGrid) -> list[SyntheticRun]:
    """All child runs of ``grid`` with their planted errors (pure; nothing is written)."""
    rng = np.random.default_rng(grid.seed)
    n_max = max(grid.n_values)
    runs: list[SyntheticRun] = []
    tasks: dict[str, tuple[str, float, float]] = {}
    pretrain: dict[tuple[str, str], RunSpec] = {}
    for up, down in grid.shifts:
        tasks[_dataset(down, grid, n_max).label] = down
    for size, model in enumerate(grid.models):
        e_model = grid.e_floor * 0.7 ** size
        # pre-training runs: scratch on the upstream data, role=pretrain
        ups = {up for up, _ in grid.shifts} | ({"mixed"} if grid.mixed else set())
        for up in sorted(ups, key=str):
            data = _dataset(up, grid, 4 * n_max)
            layout = "mixed" if up == "mixed" else "native"
            spec = RunSpec(arm="scratch", data=data, model=model, n_train=data.n_train, lr=1e-3,
                           epochs=grid.epochs, layout=layout)
            pretrain[(str(up), model)] = spec
            runs.append(_make(grid, spec, "pretrain", None, e_model * 0.8, rng))
        for label, down in tasks.items():
            for n in grid.n_values:
                for seed in _seeds(grid, n):
                    for lr in grid.lrs:
                        spec = RunSpec(arm="scratch", data=_dataset(down, grid, n_max), model=model, n_train=n,
                                       lr=lr, epochs=grid.epochs, seed=seed)
                        err = (e_model + grid.a * n ** -grid.alpha) * _lr_factor(grid, "scratch", lr)
                        runs.append(_make(grid, spec, "downstream", None, err, rng))
        sources = [(up, down, 1.0) for up, down in grid.shifts]
        if grid.mixed:  # E4: the mixture model fine-tuned on every downstream task
            sources += [("mixed", down, 1.0 / 1.5) for down in dict.fromkeys(d for _, d in grid.shifts)]
        for up, down, scale in sources:
            upstream = pretrain[(str(up), model)]
            layout = "mixed" if up == "mixed" else "native"
            data = _dataset(down, grid, n_max)
            shift = 0.5 if up == "mixed" else shift_magnitude(up, down)
            b = scale * grid.benefit * grid.growth ** size / (1.0 + grid.shift_decay * shift)
            for n in grid.n_values:
                for seed in _seeds(grid, n):
                    for lr in grid.lrs:
                        spec = RunSpec(arm="transfer", data=data, model=model, n_train=n, lr=lr, epochs=grid.epochs,
                                       seed=seed, layout=layout, init_from=upstream.run_key)
                        err = (e_model + grid.a / b * n ** -grid.alpha) * _lr_factor(grid, "transfer", lr)
                        runs.append(_make(grid, spec, "downstream", upstream.data, err, rng,
                                          pretrain_flops=synthetic_flops(upstream)))
            spec = RunSpec(arm="zero_shot", data=data, model=model, n_train=0, lr=0.0, epochs=0, layout=layout,
                           init_from=upstream.run_key)
            runs.append(_make(grid, spec, "downstream", upstream.data, grid.zero_shot * (1 + 4 * shift), rng,
                              pretrain_flops=synthetic_flops(upstream)))
    return _add_failures(grid, runs, rng)


def _seeds(grid: SyntheticGrid, n: int) -> tuple[int, ...]:
    return grid.seeds if n <= grid.max_n_all_seeds else grid.seeds[:1]


def _lr_factor(grid: SyntheticGrid, arm: str, lr: float) -> float:
    return 1.0 + grid.lr_penalty * math.log10(lr / grid.lr_best[arm]) ** 2


def _make(grid: SyntheticGrid, spec: RunSpec, role: str, upstream: DatasetSpec | None, err: float,
          rng: np.random.Generator, *, pretrain_flops: float | None = None) -> SyntheticRun:
    trained = spec.arm != "zero_shot"
    # Convergence from the run_key alone, so planting unconverged runs moves no other draw.
    unit = _hash_unit(spec.run_key)
    unconverged = (trained and role == "downstream" and spec.arm in grid.unconverged_arms
                   and unit < grid.unconverged)
    late = 0.05 + 0.2 * unit / grid.unconverged if unconverged else 0.001 + 0.004 * unit
    if unconverged:
        err *= 1.0 + 4.0 * late
    test = float(err * math.exp(grid.noise * rng.standard_normal()))
    val = float(test * math.exp(0.02 * rng.standard_normal()))  # val tracks test closely
    model = spec.model_spec
    params: dict[str, Any] = {schema.P_WIDTH: model.width, schema.P_N_MODES: model.n_modes,
                              schema.P_IN_CHANNELS: model.in_channels,
                              schema.P_FAST: False, schema.P_PRECISION: "fp32"}
    tags = {schema.T_GRID: grid.name, schema.T_ROLE: role, schema.T_DEVICE: "synthetic",
            f"{schema.T_DATA_HASH_PREFIX}train": spec.data.label}
    if upstream is not None:
        params.update({schema.P_UPSTREAM_PDE: upstream.pde, schema.P_UPSTREAM_LOW: upstream.low,
                       schema.P_UPSTREAM_HIGH: upstream.high})
        tags[schema.T_SHIFT] = f"{upstream.label} -> {spec.data.label}"
    epochs = spec.epochs
    history = {} if epochs == 0 else {
        schema.M_TRAIN_LOSS: [test * 3.0 / (e + 1) for e in range(epochs)],
        schema.M_VAL_REL_L2: [val * (epochs - e) for e in range(epochs)],
        schema.M_LR: [spec.lr * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)],
    }
    metrics = {schema.M_TEST_REL_L2: test, schema.M_BEST_VAL_REL_L2: val, schema.M_BEST_EPOCH: max(epochs - 1, 0),
               schema.M_WALL_SECONDS: 0.01 * (spec.n_train + 1) * max(epochs, 1),
               schema.M_SAMPLES_PER_SECOND: 1000.0, schema.M_GPU_SECONDS: 0.0,
               schema.M_N_PARAMS: model.n_params,
               schema.M_SAMPLE_STEPS: float(spec.n_train * epochs), schema.M_FLOPS: synthetic_flops(spec)}
    if trained:
        metrics.update({schema.M_LATE_IMPROVEMENT: late, schema.M_CONVERGED: 0.0 if unconverged else 1.0})
    if pretrain_flops is not None:
        metrics[schema.M_PRETRAIN_FLOPS] = pretrain_flops
    return SyntheticRun(spec, params, tags, metrics, history, schema.FINISHED)


def _add_failures(grid: SyntheticGrid, runs: list[SyntheticRun], rng: np.random.Generator) -> list[SyntheticRun]:
    """Failed runs come first (the launcher later re-runs them, FINISHED, under the same key)."""
    trained = [r for r in runs if r.spec.arm != "zero_shot" and r.tags[schema.T_ROLE] == "downstream"]
    picks = rng.choice(len(trained), size=min(len(trained), grid.n_failed + grid.n_killed), replace=False)
    extra = []
    for i, idx in enumerate(picks):
        base = trained[int(idx)]
        if i < grid.n_failed:
            tags = {**base.tags, schema.T_FAILURE_REASON: "diverged: train/loss is NaN at epoch 2"}
            extra.append(SyntheticRun(base.spec, base.params, tags, {}, {}, schema.FAILED))
        else:
            extra.append(SyntheticRun(base.spec, base.params, base.tags, {}, {}, schema.KILLED))
    return extra + runs


def write_store(tracking_uri: str, grid: SyntheticGrid, runs: list[SyntheticRun] | None = None) -> str:
    """Write ``grid``'s runs into the MLflow store at ``tracking_uri``; return the parent run id."""
    tracking.init_store(tracking_uri)
    parent_id = tracking.start_parent_run(tracking_uri, grid=grid.name)
    for run in plan(grid) if runs is None else runs:
        recorder = tracking.RunRecorder.start(tracking_uri, run.spec, extra_params=run.params, tags=run.tags,
                                              parent_run_id=parent_id)
        for step, metrics in enumerate(zip(*run.history.values())):
            recorder.log_epoch(step, dict(zip(run.history, metrics)))
        if run.status == schema.FINISHED:
            recorder.log_final(run.metrics)
            recorder.finish()
        elif run.status == schema.FAILED:
            recorder.fail(run.tags[schema.T_FAILURE_REASON])
        else:
            tracking.end_run(tracking_uri, recorder.run_id, run.status)
    tracking.end_run(tracking_uri, parent_id, schema.FINISHED)
    return parent_id


def frame(grid: SyntheticGrid, runs: list[SyntheticRun] | None = None) -> pd.DataFrame:
    """The frame :func:`analysis.collect.collect_runs` reads back from :func:`write_store`'s store,
    built without MLflow: the recorder's params (``flatten(spec)`` + the run's extra params), tags and
    final metrics, typed by the collector's own :func:`~analysis.collect.runs_to_frame`.  For tests
    that need several planted truths analysed (claims pinned per truth) but not the store itself;
    ``test_analysis_e2e`` checks it equals the store's read-back."""
    from analysis.collect import runs_to_frame
    from repro.config import flatten

    records = []
    for i, run in enumerate(plan(grid) if runs is None else runs):
        row: dict[str, Any] = {schema.C_RUN_ID: f"{grid.name}-{i:05d}", schema.C_STATUS: run.status,
                               schema.C_START_TIME: 1_000 * (i + 1), schema.C_PARENT_RUN_ID: f"{grid.name}-parent",
                               schema.T_RUN_KEY: run.spec.run_key, **run.tags}
        row.update({k: str(v) for k, v in {**flatten(run.spec), **run.params}.items()})
        row.update(run.metrics)
        records.append(row)
    return runs_to_frame(records)
