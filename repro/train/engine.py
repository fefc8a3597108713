"""Execute runs: group compatible RunSpecs into ensembles, train, evaluate, record in MLflow.

The one data path for training (docs/design.md §1):

    [RunSpec] --group by batch_key--> ensemble of M members
      --load data (content-addressed HDF5) + checkpoint--> tensors resident on the device
      --train_ensemble--> best weights per member --evaluate--> test/rel_l2
      --RunRecorder--> one MLflow child run per RunSpec (params, metrics, checkpoint, PNG)

Failures are data: a diverged member (non-finite, or a rel-L2 above
:func:`repro.train.loop.divergence_limit`), an out-of-memory error, a missing checkpoint or any
exception ends the affected runs FAILED with a ``failure_reason`` tag; other groups go on.
"""

from __future__ import annotations

import functools
import math
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from repro import schema
from repro.config import DatasetSpec, RunSpec, to_dict
from repro.ensembles import group_specs
from repro.compilation import check_compile_mode, compiles
from repro.flops import training_flops, unit_training_flops
from repro.outcome import RunOutcome
from repro.execution import RunContext
from repro.progress import Bar
from repro.data import SplitData, default_data_dir, load_split, to_layout
from repro.data.normalise import Normaliser, build_inputs, fit_normaliser
from repro.data.subsets import nested_subset
from repro.models import FNO, load_members, member_state, resolve_spectral
from repro.models.fno import check_precision
from repro.models.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from repro import tracking
from repro.train import pretrained
from repro.train.preview import plot_predictions
from repro.train.compiled import is_out_of_memory
from repro.train.loop import (EnsembleData, EnsembleResult, EpochReport, Schedule, divergence_reason, evaluate,
                              train_ensemble)


@dataclass(frozen=True)
class _Split:
    """One split on the device: network inputs (S, C, n, n), targets (S, n, n)."""

    inputs: torch.Tensor
    targets: torch.Tensor


@dataclass(frozen=True)
class _Source:
    """The pre-trained model a transfer / zero-shot group starts from."""

    checkpoint: Checkpoint
    upstream: DatasetSpec


@dataclass(frozen=True)
class _Call:
    """One :func:`execute` call, resolved: its context, what the engine derived from it, and the
    per-call hooks."""

    context: RunContext
    device: torch.device
    spectral: str
    data_dir: Path
    roles: Mapping[str, str]
    progress: bool
    extra_tags: Mapping[str, str]
    claim: Callable[[Mapping[str, str]], Mapping[str, str]] | None


def execute(specs: Sequence[RunSpec], context: RunContext, *, roles: Mapping[str, str] | None = None,
            progress: bool = True, extra_tags: Mapping[str, str] | None = None,
            claim: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None) -> list[RunOutcome]:
    """Train / evaluate every spec and record each as one MLflow run.

    Parameters
    ----------
    specs:
        Resolved run specifications; those sharing a :func:`repro.ensembles.batch_key` train together as one
        ensemble of up to ``context.max_members`` members (1: one by one).
    context:
        Store, dataset cache, device, spectral path, precision, grid and parent run
        (:class:`repro.execution.RunContext`).  bf16's accuracy against fp32 is checked by
        ``benchmarks/bench_train.py --sections bf16``; like ``fast`` it is logged as a param, not
        part of the run_key.
    roles:
        run_key -> role tag (``schema.ROLE_PRETRAIN`` for runs other runs start from).
    progress:
        Show a training progress bar.
    extra_tags:
        Tags set on every run when it is created (e.g. the grid worker's identity, so that a
        launcher can tell a live RUNNING run from one whose process died).
    claim:
        Called with {run_key: run id} of each ensemble's runs right after they are created and
        before anything trains; returns {run_key: reason} of those another process owns (their
        runs are gone, their outcome is ``schema.ELSEWHERE``).  The grid passes
        :func:`repro.grid.store.claim`, so concurrent launchers never train a key twice.

    Returns
    -------
    One :class:`RunOutcome` per spec, in the order given.  Per-run failures do not raise.

    Raises
    ------
    ValueError
        ``precision`` unknown, or bf16 on a CPU or with the reference path (before any run starts).
    """
    spectral = resolve_spectral(context.fast, context.device)
    check_precision(context.precision, context.device, spectral)
    check_compile_mode(context.compile_mode)
    tracking.init_store(context.tracking_uri)
    call = _Call(context=context, device=torch.device(context.device), spectral=spectral,
                 data_dir=Path(context.data_dir) if context.data_dir is not None else default_data_dir(),
                 roles=roles or {}, progress=progress, extra_tags=extra_tags or {}, claim=claim)
    outcomes: dict[str, RunOutcome] = {}
    for group in group_specs(specs, context.max_members, context.device):
        for outcome in _execute_group_splitting_on_oom(group, call):
            outcomes[outcome.run_key] = outcome
    return [outcomes[s.run_key] for s in specs]


class _OutOfMemory(RuntimeError):
    """An ensemble ran out of memory; ``finished`` are its runs already recorded FINISHED."""

    def __init__(self, finished: list[RunOutcome]) -> None:
        super().__init__("out of memory")
        self.finished = finished


def _execute_group_splitting_on_oom(group: list[RunSpec], call: _Call) -> list[RunOutcome]:
    """Run a group; if the device runs out of memory, retry the runs that did not finish in
    halves (down to one run).  The aborted attempt stays in MLflow as FAILED with its reason."""
    try:
        return _execute_group(group, call, allow_oom_retry=len(group) > 1)
    except _OutOfMemory as oom:
        done = {o.run_key for o in oom.finished}
        rest = [spec for spec in group if spec.run_key not in done]
        halves = [part for part in (rest[:len(rest) // 2], rest[len(rest) // 2:]) if part]
        return oom.finished + [o for part in halves for o in _execute_group_splitting_on_oom(part, call)]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def _execute_group(group: list[RunSpec], call: _Call, *, allow_oom_retry: bool) -> list[RunOutcome]:
    started = time.perf_counter()
    ctx, device, spectral, data_dir = call.context, call.device, call.spectral, call.data_dir
    tracking_uri, grid, precision, claim = ctx.tracking_uri, ctx.grid, ctx.precision, call.claim
    extra = _model_params(group[0], spectral, precision)
    tags = {**call.extra_tags, schema.T_DEVICE: device_name(str(device))}
    if schema.T_GRID_HEARTBEAT in tags:  # fresh on every claim (an OOM retry's comes much later)
        tags[schema.T_GRID_HEARTBEAT] = f"{time.time():.0f}"
    if grid:
        tags[schema.T_GRID] = grid
    recorders = [tracking.RunRecorder.start(tracking_uri, spec, extra_params=extra,
                                            tags={**tags, schema.T_ROLE: call.roles.get(spec.run_key, schema.ROLE_DOWNSTREAM)},
                                            parent_run_id=ctx.parent_run_id) for spec in group]
    elsewhere: list[RunOutcome] = []
    if claim is not None:  # the runs just created are this process's claims on their keys
        lost = claim({spec.run_key: rec.run_id for spec, rec in zip(group, recorders)})
        elsewhere = [RunOutcome(spec.run_key, schema.ELSEWHERE, None, None, lost[spec.run_key], 0.0, skipped=True)
                     for spec in group if spec.run_key in lost]
        kept = [(spec, rec) for spec, rec in zip(group, recorders) if spec.run_key not in lost]
        if not kept:
            return elsewhere
        group, recorders = [spec for spec, _ in kept], [rec for _, rec in kept]
        allow_oom_retry = allow_oom_retry and len(group) > 1
    head = group[0]
    outcomes: dict[int, RunOutcome] = {}

    def fail_all(reason: str) -> None:
        for m, (spec, rec) in enumerate(zip(group, recorders)):
            if m not in outcomes:
                rec.fail(reason)
                outcomes[m] = RunOutcome(spec.run_key, schema.FAILED, rec.run_id, None, reason,
                                         time.perf_counter() - started)

    try:
        source = _load_source(head, tracking_uri, grid) if head.init_from else None
        if source is not None:
            upstream = {schema.P_UPSTREAM_PDE: source.upstream.pde, schema.P_UPSTREAM_LOW: source.upstream.low,
                        schema.P_UPSTREAM_HIGH: source.upstream.high}
            shift = f"{source.upstream.label} -> {head.data.label}"
            for rec in recorders:
                rec.log_params(upstream)
                rec.set_tags({schema.T_SHIFT: shift})
        normaliser, splits, subsets, hashes = _load_splits(group, source, data_dir, device)
        for rec in recorders:
            rec.set_tags({f"{schema.T_DATA_HASH_PREFIX}{name}": digest for name, digest in hashes.items()})
        model = FNO(head.model_spec, members=len(group), spectral=spectral, precision=precision,
                    seeds=[s.seed for s in group]).to(device)
        if source is not None:
            load_members(model, source.checkpoint.state)
        if head.arm == "zero_shot":
            results = _zero_shot(model, splits)
        else:
            compiled = compiles(ctx.compile_mode, str(device), unit_training_flops(group, spectral),
                                spectral=spectral)
            results = _train(group, model, splits, subsets, recorders, progress=call.progress, compiled=compiled)
        test_err = evaluate(model, splits["test"].inputs, splits["test"].targets).mean(dim=1).tolist()
        preview = _preview(model, splits["test"])
        wall = time.perf_counter() - started
        for m, (spec, rec) in enumerate(zip(group, recorders)):
            reason = results.failure[m]
            if reason is None and not math.isfinite(test_err[m]):
                reason = "diverged: non-finite test error"
            if reason is None and results.initial_val:  # trained runs; zero-shot only measures
                reason = divergence_reason("test rel-L2", test_err[m], results.initial_val[m],
                                           f" (lr={spec.lr:g})")
            if reason is not None:
                rec.fail(reason)
                outcomes[m] = RunOutcome(spec.run_key, schema.FAILED, rec.run_id, None, reason, wall)
                continue
            _record_success(spec, m, model, normaliser, preview, rec, results, test_err[m], wall,
                            n_members=len(group), device=device, spectral=spectral, source=source)
            rec.finish()
            outcomes[m] = RunOutcome(spec.run_key, schema.FINISHED, rec.run_id, test_err[m], None, wall)
    except KeyboardInterrupt:
        fail_all("interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - failures are data; the grid goes on
        if is_out_of_memory(err):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if allow_oom_retry:
                finished = [o for o in outcomes.values() if o.status == schema.FINISHED]
                fail_all(f"out of memory with {len(group)} runs in one ensemble; retried in smaller ensembles")
                raise _OutOfMemory(finished + elsewhere) from err  # neither is retried
            fail_all(f"out of memory: {_one_line(err)}")
        elif isinstance(err, (pretrained.CheckpointNotFound, CheckpointError)):
            fail_all(str(err).splitlines()[0])  # the message already names the checkpoint
        else:
            where = traceback.extract_tb(err.__traceback__)[-1]
            fail_all(f"{_one_line(err)} (at {Path(where.filename).name}:{where.lineno})")
    return elsewhere + [outcomes[m] for m in range(len(group))]


def _model_params(spec: RunSpec, spectral: str, precision: str) -> dict[str, object]:
    model = spec.model_spec
    return {schema.P_WIDTH: model.width, schema.P_N_MODES: model.n_modes,
            schema.P_IN_CHANNELS: model.in_channels, schema.P_FAST: spectral != "reference",
            schema.P_SPECTRAL: spectral,
            schema.P_PRECISION: precision}


def _load_source(spec: RunSpec, tracking_uri: str, grid: str | None = None) -> _Source:
    """Resolve and load the pre-trained checkpoint (a damaged cached copy is fetched again);
    check that it fits this run's data."""
    checkpoint = pretrained.load_pretrained(spec.init_from, tracking_uri, grid=grid)
    upstream = DatasetSpec(**checkpoint.data_spec)
    want = spec.model_spec
    have = checkpoint.model_spec
    if have.in_channels != want.in_channels:
        raise ValueError(f"checkpoint {spec.init_from} takes {have.in_channels} input channels "
                         f"({upstream.label}, layout {checkpoint.meta.get('layout')}) but {spec.data.label} in layout "
                         f"{spec.layout} has {want.in_channels}; use layout='mixed' for a mixed pre-trained model")
    if (have.width, have.n_modes, have.n_layers) != (want.width, want.n_modes, want.n_layers):
        raise ValueError(f"checkpoint {spec.init_from} is a width={have.width}, n_modes={have.n_modes} model, "
                         f"but the run asks for model {spec.model!r} (width={want.width}, n_modes={want.n_modes})")
    return _Source(checkpoint=checkpoint, upstream=upstream)


@functools.lru_cache(maxsize=4)
def _read_split(data: DatasetSpec, split: str, data_dir: Path) -> SplitData:
    """A verified split, cached per process: the many small runs of a grid worker share it.

    ``load_split`` verifies the content hash and rebuilds a missing or bad file.
    """
    return load_split(data, split, data_dir, rebuild=True)


def _subsets(group: Sequence[RunSpec]) -> np.ndarray:
    """(M, N) training-sample indices per member.

    Nested subsets: N = 2^k is a prefix of 2^(k+1) for the same seed, and the draw depends on
    (split size, N, seed) only, never on the arm, so scratch and transfer see the same examples.
    """
    head = group[0]
    return np.stack([nested_subset(head.data.n_train, head.n_train, spec.seed) for spec in group])


def _to_device(spec: RunSpec, data: SplitData, normaliser: Normaliser, device: torch.device,
               rows: np.ndarray | None = None) -> _Split:
    """Network inputs and targets of ``data`` (only ``rows`` if given) on the device."""
    source, tensor, solution = data.source, data.tensor, data.solution
    if rows is not None:
        source, tensor, solution = source[rows], tensor[rows], solution[rows]
    source_t = torch.from_numpy(np.ascontiguousarray(source)).to(device)
    tensor_t = torch.from_numpy(np.ascontiguousarray(to_layout(spec.data.pde, tensor, spec.layout))).to(device)
    return _Split(inputs=build_inputs(source_t, tensor_t, normaliser).float(),
                  targets=torch.from_numpy(np.ascontiguousarray(solution)).to(device).float())


def _load_splits(group: Sequence[RunSpec], source: _Source | None, data_dir: Path,
                 device: torch.device) -> tuple[Normaliser, dict[str, _Split], torch.Tensor | None, dict[str, str]]:
    """Inputs on the device, normalised with the model's normaliser, and the members' subsets.

    A model carries its normaliser: transfer and zero-shot use the pre-training data's
    statistics (from the checkpoint); scratch uses this dataset's full training split.  Of the
    training split only the samples some member trains on go to the device (N=8 out of 2^15
    should not cost gigabytes); the returned subsets (M, N) index into those.
    """
    spec = group[0]
    raw = {split: _read_split(spec.data, split, data_dir) for split in ("val", "test")}
    if spec.arm != "zero_shot":
        raw["train"] = _read_split(spec.data, "train", data_dir)
    if source is not None:
        normaliser = Normaliser.from_dict(source.checkpoint.normaliser)
    elif spec.layout == "native" or spec.data.pde == "mixed":
        normaliser = raw["train"].normaliser
    else:  # native data fed in the mixed layout: statistics of the converted coefficients
        train = raw["train"]
        normaliser = fit_normaliser(train.source, to_layout(spec.data.pde, train.tensor, spec.layout))
    splits = {split: _to_device(spec, raw[split], normaliser, device) for split in ("val", "test")}
    subsets = None
    if spec.arm != "zero_shot":
        member_rows = _subsets(group)  # (M, N) indices into the training split
        rows, positions = np.unique(member_rows, return_inverse=True)  # used rows; (M, N) positions in them
        splits["train"] = _to_device(spec, raw["train"], normaliser, device, rows)
        subsets = torch.from_numpy(positions.reshape(member_rows.shape)).long().to(device)
    hashes = {split: data.content_hash for split, data in raw.items()}
    return normaliser, splits, subsets, hashes


def _zero_shot(model: FNO, splits: Mapping[str, _Split]) -> EnsembleResult:
    val = evaluate(model, splits["val"].inputs, splits["val"].targets).mean(dim=1).tolist()
    members = len(val)
    return EnsembleResult(best_val=val, best_epoch=[0] * members, failure=[None] * members, train_seconds=0.0,
                          samples_seen=0, evaluations=1)


def _train(group: list[RunSpec], model: FNO, splits: Mapping[str, _Split], subsets: torch.Tensor,
           recorders: Sequence[tracking.RunRecorder], *, progress: bool, compiled: bool) -> EnsembleResult:
    head = group[0]
    data = EnsembleData(inputs=splits["train"].inputs, targets=splits["train"].targets, subsets=subsets)
    schedule = Schedule(epochs=head.epochs, batch_size=head.batch_size, lrs=tuple(s.lr for s in group),
                        eval_every=head.eval_every)
    label = (f"{head.arm} {head.data.label} {head.model} N={head.n_train}" + (f" ×{len(group)}" if len(group) > 1 else "")
             + (" compiled" if compiled else ""))
    with Bar(label, head.epochs, enabled=progress) as bar:
        def on_epoch(report: EpochReport) -> None:
            for m, rec in enumerate(recorders):
                metrics = {schema.M_TRAIN_LOSS: report.train_loss[m], schema.M_LR: report.lr[m]}
                if report.val_rel_l2 is not None:
                    metrics[schema.M_VAL_REL_L2] = report.val_rel_l2[m]
                rec.log_epoch(report.epoch, {k: v for k, v in metrics.items() if math.isfinite(v)})
            bar.update(completed=report.epoch, status=_epoch_status(report))

        return train_ensemble(model, data, splits["val"].inputs, splits["val"].targets, schedule,
                              seeds=[s.seed for s in group], on_epoch=on_epoch, compiled=compiled)


def _epoch_status(report: EpochReport) -> str:
    """Loss and validation error of an epoch, for the progress bar (best member)."""
    status = f"loss {min(report.train_loss):.3g}"
    if report.val_rel_l2 is not None:
        status += f"  val rel L2 {min(report.val_rel_l2):.3g}"
    return status


def device_name(device: str) -> str:
    """Human device name for the ``device`` tag (GPU model on CUDA, CPU model otherwise)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def compute_metrics(spec: RunSpec, results: EnsembleResult, spectral: str,
                    source: Checkpoint | None = None) -> dict[str, float]:
    """Compute spent by one member: samples processed and analytic FLOPs (:func:`repro.flops.training_flops`).

    A run started from a checkpoint also gets the pre-training run's FLOPs from the checkpoint's
    meta (NaN for checkpoints written before it was recorded).
    """
    flops = training_flops(spec.model_spec, spec.data.resolution, spectral, samples_seen=results.samples_seen,
                           n_val=spec.data.n_val, evaluations=results.evaluations)
    out = {schema.M_SAMPLE_STEPS: float(results.samples_seen), schema.M_FLOPS: flops}
    if source is not None:
        out[schema.M_PRETRAIN_FLOPS] = float(source.meta.get(schema.M_FLOPS, math.nan))
    return out


def _record_success(spec: RunSpec, m: int, model: FNO, normaliser: Normaliser, preview: _Preview,
                    rec: tracking.RunRecorder, results: EnsembleResult, test_err: float, wall: float, *,
                    n_members: int, device: torch.device, spectral: str, source: _Source | None) -> None:
    """Final metrics, the member's checkpoint and a prediction figure for one finished run."""
    samples_per_second = (results.samples_seen * n_members / results.train_seconds) if results.train_seconds else 0.0
    compute = compute_metrics(spec, results, spectral, source.checkpoint if source is not None else None)
    final = dict(compute)
    if results.convergence:  # trained runs only; zero-shot has no training to converge
        verdict = results.convergence[m]
        final[schema.M_LATE_IMPROVEMENT] = verdict.late_improvement
        final[schema.M_CONVERGED] = 1.0 if verdict.converged else 0.0
        if verdict.reason is not None:
            rec.set_tags({schema.T_CONVERGENCE_REASON: verdict.reason})
    rec.log_final({
        **final,
        schema.M_TEST_REL_L2: test_err,
        schema.M_BEST_VAL_REL_L2: results.best_val[m],
        schema.M_BEST_EPOCH: results.best_epoch[m],
        schema.M_WALL_SECONDS: wall,
        schema.M_SAMPLES_PER_SECOND: samples_per_second,
        # Device time attributed to this run: the ensemble's wall time shared by its members.
        schema.M_GPU_SECONDS: wall / n_members if device.type == "cuda" else 0.0,
        schema.M_N_PARAMS: model.n_params_per_member,
        schema.M_COMPILED: 1.0 if results.compiled else 0.0,
    })
    with tempfile.TemporaryDirectory(prefix="repro-run-") as tmp:
        ckpt = Path(tmp) / Path(schema.A_CHECKPOINT).name
        save_checkpoint(ckpt, model_spec=spec.model_spec, state=member_state(model, m),
                        normaliser=normaliser.to_dict(), data_spec=to_dict(spec.data),
                        meta={"run_key": spec.run_key, "arm": spec.arm, "layout": spec.layout,
                              "best_epoch": results.best_epoch[m], "best_val_rel_l2": results.best_val[m],
                              # what training this model cost, for runs that start from it
                              schema.M_FLOPS: compute[schema.M_FLOPS],
                              schema.M_SAMPLE_STEPS: compute[schema.M_SAMPLE_STEPS]})
        rec.log_artifact(ckpt, str(Path(schema.A_CHECKPOINT).parent))
        png = Path(tmp) / schema.A_PREDICTIONS
        plot_predictions(preview.source, preview.target, preview.pred[m], png)
        rec.log_artifact(png)


@dataclass(frozen=True)
class _Preview:
    """The first few test samples and every member's prediction of them (numpy, on the CPU)."""

    source: np.ndarray  # (k, n, n) normalised source channel
    target: np.ndarray  # (k, n, n)
    pred: np.ndarray  # (M, k, n, n)


def _preview(model: FNO, test: _Split, n_samples: int = 3) -> _Preview:
    k = min(n_samples, test.inputs.shape[0])
    x = test.inputs[:k]
    with torch.no_grad():
        pred = model(x.unsqueeze(0).expand(model.members, *x.shape))  # (M, k, n, n), one pass for all members
    return _Preview(source=x[:, 0].cpu().numpy(), target=test.targets[:k].cpu().numpy(),
                    pred=pred.float().cpu().numpy())

