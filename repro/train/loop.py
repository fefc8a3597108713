"""The training loop for an ensemble of M runs that share data layout and architecture.

Pure torch, no MLflow: the engine (:mod:`repro.train.engine`) feeds tensors in and records
what comes out.  A single run is simply M = 1.

Protocol (PROTOCOL.md §2): loss = sum over pixels of (u_hat - u)^2 / batch; Adam; cosine LR to
0 over the run, no warm-up; batch = min(batch_size, N); reshuffle every epoch with a seeded
generator; validation relative L2 every ``eval_every`` epochs; keep the best checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

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


@dataclass
class EnsembleResult:
    """Outcome per member: best validation error, its epoch, and failure reasons."""

    best_val: list[float]
    best_epoch: list[int]
    failure: list[str | None]
    train_seconds: float
    samples_seen: int  # per member
    history: list[EpochReport] = field(default_factory=list)


def squared_error_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of the squared error divided by the batch size, per member.

    pred, target: (M, B, n, n) -> (M,)
    """
    return (pred - target).pow(2).sum(dim=(1, 2, 3)) / pred.shape[1]


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
                   on_epoch: Callable[[EpochReport], None] | None = None) -> EnsembleResult:
    """Train the M members of ``model`` together; on return the model holds each member's best
    (lowest validation error) weights.

    Members are independent: their parameters, optimiser state, data order and learning rates
    never mix, so the result equals M separate runs up to floating-point reassociation.  A
    member whose loss becomes non-finite is marked failed and no longer affects anything.
    """
    members, n_train = data.subsets.shape
    if members != schedule.n_members or members != len(seeds):
        raise ValueError(f"ensemble of {members} subsets, {schedule.n_members} learning rates, {len(seeds)} seeds")
    device = data.inputs.device
    batch = max(1, min(schedule.batch_size, n_train))
    steps_per_epoch = math.ceil(n_train / batch)
    total_steps = steps_per_epoch * schedule.epochs
    optimiser = EnsembleAdam(list(model.parameters()), schedule.lrs)
    # Shuffling streams are seeded per member and independent of the subset draw.
    generators = [torch.Generator().manual_seed(10_007 * int(s) + 1) for s in seeds]

    best_val = [math.inf] * members
    best_epoch = [0] * members
    failure: list[str | None] = [None] * members
    best_state = {name: p.detach().clone() for name, p in model.named_parameters()}
    history: list[EpochReport] = []
    step = 0
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
            loss = squared_error_loss(model(x).float(), y)  # (M,)
            optimiser.zero_grad()
            # Members are independent, so the gradient of the sum is each member's own gradient.
            torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum().backward()
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
    return EnsembleResult(best_val=best_val, best_epoch=best_epoch, failure=failure,
                          train_seconds=train_seconds, samples_seen=len(history) * n_train, history=history)
