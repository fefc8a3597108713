"""The training loop for an ensemble of M runs that share data layout and architecture.

Pure torch, no MLflow: the engine (:mod:`repro.train.engine`) feeds tensors in and records
what comes out.  A single run is simply M = 1.

Protocol (docs/protocol.md §2.5): loss = sum over pixels of (u_hat - u)^2 / batch; Adam; cosine
LR to 0 over the run, no warm-up; batch = min(batch_size, N); reshuffle every epoch with a seeded
generator; validation relative L2 every ``eval_every`` epochs; keep the best checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import torch

from repro.train.compiled import BatchLoss, compile_batch_loss, compile_failed, is_out_of_memory
from repro.train.optim import EnsembleAdam, cosine_factor


@dataclass(frozen=True)
class EnsembleData:
    """Samples resident on the device and each member's training subset.

    ``inputs`` (S, C, n, n) and ``targets`` (S, n, n) hold every sample any member uses;
    ``subsets`` (M, N) indexes into them: member m trains on ``inputs[subsets[m]]``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    subsets: torch.Tensor


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings shared by the members, except the learning rate."""

    epochs: int
    batch_size: int
    lrs: tuple[float, ...]
    eval_every: int = 1

    @property
    def n_members(self) -> int:
        return len(self.lrs)


@dataclass
class EpochReport:
    """What one epoch produced, per member (length-M lists)."""

    epoch: int  # 1-based
    train_loss: list[float]
    val_rel_l2: list[float] | None
    lr: list[float]


#: A run counts as converged when its best validation error improved by at most this fraction
#: over the last fifth of training (see :func:`convergence`).  Measured (issue 9 §1: xs at 32²,
#: poisson(1,5) -> poisson(5,10), scratch and transfer, N = 8, 32, 128, lr 1e-3 and 3e-3, 100 to
#: 2000 optimiser steps, two seeds at N = 128): every run within 5 % of its longest-budget test
#: error showed at most 0.27 %; the under-trained scratch runs (1.3-6.6x that error) 1.3-2.9 %,
#: and a 20-epoch pre-training run (1.7x its 60-epoch error) 1.14 %.  0.5 % sits in the middle
#: (log scale) of the gap.  Under the cosine schedule the last fifth anneals the LR below 10 % of
#: its peak, so mildly under-trained runs slip through: transfer at N = 128 after 100 steps
#: (1.15-1.35x) showed only 0.2-0.43 %.  The flag catches badly under-trained runs; a step budget
#: long enough for both arms is still needed.
CONVERGENCE_THRESHOLD = 0.005


#: A member diverged when a validation rel-L2 (at any evaluation; its test error at the end)
#: exceeds ``DIVERGENCE_FACTOR`` times ``max(initial validation rel-L2, 1)``: 1 is the zero
#: predictor's error, the initial error is the model's before its first step (a random
#: initialisation's, or for transfer the pre-trained model's zero-shot error).  Non-finite values
#: have always counted; this catches the blow-ups that stay finite (issue 11 #9: lr = 10 reached
#: test rel-L2 3.6e12 and FINISHED).  Margin: over the 409 FINISHED trained runs (scratch and
#: transfer) of reports/cpu-study/partial the largest validation rel-L2 at any evaluation is 2.05
#: and the largest test rel-L2 1.05, so a limit of at least 10 leaves every one of them alone.
DIVERGENCE_FACTOR = 10.0


def divergence_limit(initial: float) -> float:
    """The rel-L2 above which a member counts as diverged: ``DIVERGENCE_FACTOR * max(initial, 1)``
    (a non-finite ``initial`` counts as 1)."""
    return DIVERGENCE_FACTOR * (max(initial, 1.0) if math.isfinite(initial) else 1.0)


def divergence_reason(what: str, value: float, initial: float, where: str) -> str | None:
    """``failure_reason`` of a finite ``what`` (e.g. "validation rel-L2") above
    :func:`divergence_limit`, else None; ``where`` says when (" at epoch 7 (lr=10)")."""
    limit = divergence_limit(initial)
    if not value > limit:
        return None
    return (f"diverged: {what} {value:.4g}{where} exceeds {DIVERGENCE_FACTOR:g}x max(initial validation "
            f"rel-L2 {initial:.4g}, 1) = {limit:.4g}")


@dataclass(frozen=True)
class Convergence:
    """Late-training improvement of one member's best validation error, and the verdict.

    ``late_improvement`` is NaN (and ``converged`` False) when the evaluations cannot tell;
    ``reason`` then says why.
    """

    late_improvement: float
    converged: bool
    reason: str | None = None


#: The late part of a run in which :func:`convergence` looks for improvement: the last fifth.
LATE_FRACTION = Fraction(1, 5)


def late_cutoff(epochs: int) -> int:
    """Last epoch before the late part of a run: ``ceil(0.8 * epochs)``, exactly (a float
    0.8 * 35 is 28.000000000000004, which would round up to 29)."""
    return math.ceil(epochs * (1 - LATE_FRACTION))


def convergence(evaluations: Sequence[tuple[int, float]], epochs: int, *,
                threshold: float = CONVERGENCE_THRESHOLD) -> Convergence:
    """Did validation error stop falling?  Relative improvement over the last fifth of training.

    ``late_improvement = (best_early - best_all) / best_early`` where ``best_early`` is the best
    validation rel-L2 at epochs ``<= ceil(0.8 * epochs)`` and ``best_all`` the best of the run;
    0 when the best came before the last fifth.  ``converged = late_improvement <= threshold``.

    The cosine schedule anneals the learning rate towards 0 in the last fifth (factor below
    0.1), which favours "converged"; the measurement behind :data:`CONVERGENCE_THRESHOLD` checks
    that under-trained runs are still flagged, because annealing itself still improves them.

    Parameters
    ----------
    evaluations:
        ``(epoch, val rel-L2)`` of every evaluated epoch (1-based); non-finite values are skipped.
    epochs:
        Planned length of the run.

    Returns
    -------
    Convergence
        NaN and not converged, with a reason, unless at least one evaluation lies on each side
        of the cut-off (so at least two evaluations).
    """
    cut = late_cutoff(epochs)
    finite = [(e, v) for e, v in evaluations if math.isfinite(v)]
    early = [v for e, v in finite if e <= cut]
    late = [v for e, v in finite if e > cut]
    if not early or not late:
        return Convergence(math.nan, False,
                           f"not measurable: {len(early)} validation evaluation(s) up to epoch {cut} and "
                           f"{len(late)} after, of {epochs} epochs; need one on each side of the last fifth "
                           "(evaluate more often or train longer)")
    best_early = min(early)
    improvement = (best_early - min(best_early, min(late))) / best_early if best_early > 0 else 0.0
    return Convergence(improvement, improvement <= threshold)


@dataclass
class EnsembleResult:
    """Outcome per member: best validation error, its epoch, and failure reasons.

    ``samples_seen`` is the number of training samples each member processed (the sum over
    optimiser steps of the batch size: every epoch visits its N samples once); ``evaluations``
    the number of validation passes.  ``convergence`` is per member (empty without training).
    """

    best_val: list[float]
    best_epoch: list[int]
    failure: list[str | None]
    train_seconds: float
    samples_seen: int  # per member
    evaluations: int = 0
    convergence: list[Convergence] = field(default_factory=list)
    #: Validation rel-L2 per member before the first step: the divergence reference (empty
    #: without training).  A check, not model selection: not counted in ``evaluations``.
    initial_val: list[float] = field(default_factory=list)
    #: Whether the training step ran compiled throughout: asked for, and neither the compiled
    #: loss nor the compiled update fell back to eager (either falls back on its own).
    compiled: bool = False


def squared_error_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of the squared error divided by the batch size, per member.

    pred, target: (M, B, n, n) -> (M,)
    """
    return (pred - target).pow(2).sum(dim=(1, 2, 3)) / pred.shape[1]


def batch_loss(model: torch.nn.Module) -> BatchLoss:
    """The training loss of one batch for ``model``: ``(x, y) -> (per-member loss (M,), total)``,
    where ``total`` is the scalar whose gradient training follows.

    Members are independent, so the gradient of the sum is each member's own gradient; a member
    whose loss is not finite adds nothing to it (it is marked failed at the end of the epoch), so it
    cannot poison the others.  One function, so that the compiled step
    (:func:`repro.train.compiled.compile_batch_loss`) and the eager one compute the same thing.
    """
    def loss_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = squared_error_loss(model(x).float(), y)
        return loss, torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()

    return loss_of


def _loss_and_gradients(loss_of: BatchLoss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-member loss of one batch, with its gradients accumulated into the parameters."""
    loss, total = loss_of(x, y)
    total.backward()
    return loss


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample relative L2 error ||u_hat - u|| / ||u||: (..., n, n) -> (...)."""
    return torch.linalg.vector_norm(pred - target, dim=(-2, -1)) / torch.linalg.vector_norm(target, dim=(-2, -1))


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             chunk: int = 256) -> torch.Tensor:
    """Per-member, per-sample relative L2 of the ensemble on one split.

    inputs (S, C, n, n), targets (S, n, n) -> (M, S).  Every member sees the same samples.
    """
    was_training = model.training
    model.eval()
    members = int(model.members)
    chunk = max(1, chunk // members)
    errors = []
    for start in range(0, inputs.shape[0], chunk):
        x = inputs[start:start + chunk]
        # (B, C, n, n) -> (M, B, C, n, n): the same batch for every member (a view, no copy).
        pred = model(x.unsqueeze(0).expand(members, *x.shape))
        errors.append(relative_l2(pred.float(), targets[start:start + chunk].unsqueeze(0)))
    model.train(was_training)
    return torch.cat(errors, dim=1)


def _epoch_permutations(generators: Sequence[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """One fresh permutation of range(n) per member, from its own seeded generator: (M, n)."""
    return torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)


def train_ensemble(model: torch.nn.Module, data: EnsembleData, val_inputs: torch.Tensor,
                   val_targets: torch.Tensor, schedule: Schedule, *, seeds: Sequence[int],
                   on_epoch: Callable[[EpochReport], None] | None = None,
                   compiled: bool = False) -> EnsembleResult:
    """Train the M members of ``model`` together; on return the model holds each member's best
    (lowest validation error) weights.

    Members are independent: their parameters, optimiser state, data order and learning rates
    never mix, so the result equals M separate runs up to floating-point reassociation.  A
    member whose loss becomes non-finite, or whose validation error becomes non-finite or exceeds
    :func:`divergence_limit` of its error before the first step, is marked failed and no longer
    affects anything.

    ``compiled``: the batch loss (forward and loss) runs through
    :func:`repro.train.compiled.compile_batch_loss` and the optimiser's update through
    :func:`repro.train.compiled.compile_update` (evaluations
    stay eager); if either fails for another reason than memory, that step is redone eagerly, the
    rest of the unit runs that part eagerly and the result says so (``EnsembleResult.compiled``).
    """
    members, n_train = data.subsets.shape
    if members != schedule.n_members or members != len(seeds):
        raise ValueError(f"ensemble of {members} subsets, {schedule.n_members} learning rates, {len(seeds)} seeds")
    device = data.inputs.device
    batch = max(1, min(schedule.batch_size, n_train))
    steps_per_epoch = math.ceil(n_train / batch)
    total_steps = steps_per_epoch * schedule.epochs
    # Shuffling streams are seeded per member and independent of the subset draw.
    generators = [torch.Generator().manual_seed(10_007 * int(s) + 1) for s in seeds]

    best_val = [math.inf] * members
    best_epoch = [0] * members
    failure: list[str | None] = [None] * members
    best_state = {name: p.detach().clone() for name, p in model.named_parameters()}
    eager_loss = batch_loss(model)
    loss_of = compile_batch_loss(eager_loss) if compiled else eager_loss
    # Made after compile_batch_loss (its dynamo reset clears what was compiled before it).
    optimiser = EnsembleAdam(list(model.parameters()), schedule.lrs, compiled=compiled)
    history: list[EpochReport] = []
    step = 0
    # The divergence reference: each member's validation error before it trains (one extra pass).
    initial_val = evaluate(model, val_inputs, val_targets).mean(dim=1).tolist()
    started = time.perf_counter()
    model.train()
    for epoch in range(1, schedule.epochs + 1):
        order = _epoch_permutations(generators, n_train, device)  # (M, N)
        epoch_loss = torch.zeros(members, device=device)
        epoch_lr_factor = cosine_factor(step, total_steps)
        for b in range(steps_per_epoch):
            # (M, B) positions into each member's subset -> (M, B) sample indices.
            idx = data.subsets.gather(1, order[:, b * batch:(b + 1) * batch])
            x = data.inputs[idx]  # (M, B, C, n, n)
            y = data.targets[idx]  # (M, B, n, n)
            optimiser.zero_grad()
            loss = None
            if loss_of is not eager_loss:
                try:
                    loss = _loss_and_gradients(loss_of, x, y)  # (M,)
                except Exception as err:
                    if is_out_of_memory(err):
                        raise  # the engine's OOM handling (smaller ensembles), not a compiler fault
                    # No C++ compiler, an unsupported op, a failed recompilation for a last partial
                    # batch: this step and the rest train eagerly (nothing was applied yet).
                    compile_failed(err, "forward and loss")
                    loss_of = eager_loss
                    optimiser.zero_grad()
            if loss is None:  # eager; outside the except block, so the failed attempt is freed
                loss = _loss_and_gradients(eager_loss, x, y)
            optimiser.step(cosine_factor(step, total_steps))
            step += 1
            epoch_loss += loss.detach() * (idx.shape[1] / n_train)
        losses = epoch_loss.tolist()
        for m, value in enumerate(losses):
            if failure[m] is None and not math.isfinite(value):
                failure[m] = f"diverged: non-finite training loss at epoch {epoch} (lr={schedule.lrs[m]:g})"
        val_list = None
        if epoch % schedule.eval_every == 0 or epoch == schedule.epochs:
            val = evaluate(model, val_inputs, val_targets).mean(dim=1)  # (M,)
            val_list = val.tolist()
            improved = [failure[m] is None and math.isfinite(v) and v < best_val[m] for m, v in enumerate(val_list)]
            for m, v in enumerate(val_list):
                if failure[m] is None and not math.isfinite(v):
                    failure[m] = f"diverged: non-finite validation error at epoch {epoch} (lr={schedule.lrs[m]:g})"
                elif failure[m] is None:
                    failure[m] = divergence_reason("validation rel-L2", v, initial_val[m],
                                                   f" at epoch {epoch} (lr={schedule.lrs[m]:g})")
            if any(improved):
                mask = torch.tensor(improved, device=device)
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        best_state[name][mask] = p.detach()[mask]
                for m in range(members):
                    if improved[m]:
                        best_val[m], best_epoch[m] = val_list[m], epoch
        report = EpochReport(epoch=epoch, train_loss=losses, val_rel_l2=val_list,
                             lr=[lr * epoch_lr_factor for lr in schedule.lrs])
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if all(f is not None for f in failure):
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - started
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(best_state[name])
    evaluated = [(r.epoch, r.val_rel_l2) for r in history if r.val_rel_l2 is not None]
    verdicts = [convergence([(epoch, values[m]) for epoch, values in evaluated], schedule.epochs)
                for m in range(members)]
    return EnsembleResult(best_val=best_val, best_epoch=best_epoch, failure=failure,
                          train_seconds=train_seconds, samples_seen=len(history) * n_train,
                          evaluations=len(evaluated), convergence=verdicts, initial_val=initial_val,
                          compiled=loss_of is not eager_loss and optimiser.compiled)
