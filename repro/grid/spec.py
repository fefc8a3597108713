"""Grid specifications: ``runs/<name>.toml`` -> :class:`GridSpec` (frozen, validated, data only).

A grid names *axes* (model sizes, downstream N, physics shifts, arms, learning rates, seeds) and
the fixed settings around them (resolution, dataset sizes, pre-training and fine-tuning
schedules).  :func:`repro.grid.plan.expand` turns it into RunSpecs.  Example (``runs/quick.toml``)::

    label = "quick"
    resolution = 32
    models = ["xxs", "xs"]
    n_train = [8, 32, 128]
    arms = ["scratch", "transfer", "zero_shot"]
    lrs = [1e-3, 3e-3]
    seeds = [0]

    [upstream]                # sizes of every pre-training dataset
    n_train = 1024
    n_val = 128
    n_test = 128

    [downstream]              # sizes of every downstream dataset
    n_train = 128
    n_val = 128
    n_test = 128

    [pretrain]                # one pre-training run per (upstream, model, pre-training seed)
    epochs = 30
    lr = 3e-3

    [finetune]                # scratch and transfer runs; epochs, or a number of optimiser steps
    steps = 200               # epochs(N) = clamp(ceil(steps / batches_per_epoch(N)), min_epochs, max_epochs)
    min_epochs = 5
    max_epochs = 200

    [[shifts]]                # physics shifts: dataset labels "pde(low,high)" or "mixed"
    upstream = "poisson(1,5)"
    downstream = "poisson(5,10)"

Unknown keys, wrong types, empty axes and impossible values raise :class:`repro.config.SpecError`
naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from repro.config import (ARMS, MAX_EPOCHS, MAX_RESOLUTION, MAX_SEED, MODEL_LADDER, PSI_TARGETINGS, SINGLE_PDES,
                          DatasetSpec, SpecError, format_range_end, from_mapping)

#: Largest fine-tuning budget in optimiser steps (a typo guard, like repro.config.MAX_EPOCHS).
MAX_STEPS = 100_000_000
#: Largest multiple of the fine-tuning budget a budget-audit block may ask for.
MAX_BUDGET_AUDIT = 10

#: Where the shipped grids live (``runs/`` at the repository root).
RUNS_DIR = Path(__file__).resolve().parents[2] / "runs"

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LABEL_RE = re.compile(rf"^\s*({'|'.join(SINGLE_PDES)})\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*$")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Split sizes of a family of datasets (every upstream, or every downstream dataset)."""

    n_train: int
    n_val: int
    n_test: int

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            if value < 1:
                raise SpecError(f"{name} = {value!r} is invalid: expected an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class Pretrain:
    """Pre-training: one scratch run on the full upstream set per (upstream dataset, model size,
    pre-training seed).

    ``seeds = [0, 1]`` asks for several pre-training runs per (upstream, model), so that the
    transfer and zero-shot arms, which are run from every one of them, carry pre-training variance
    into their intervals.  ``seed = 0`` (one pre-training run) is the older spelling, still read;
    giving both is an error.  Neither: seed 0.
    """

    epochs: int
    lr: float
    seed: int | None = None
    seeds: tuple[int, ...] | None = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise SpecError(f"epochs = {self.epochs!r} is invalid: expected an integer in 1..{MAX_EPOCHS:,}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SpecError(f"lr = {self.lr!r} is invalid: expected a learning rate > 0")
        if self.seed is not None and self.seeds is not None:
            raise SpecError(f"seed = {self.seed!r} and seeds = {list(self.seeds)!r} are both given: use seeds "
                            "(a list of pre-training seeds) or the older single seed, not both")
        if self.seeds is not None:
            if not self.seeds:
                raise SpecError("seeds = [] is invalid: give at least one pre-training seed")
            if len(set(self.seeds)) != len(self.seeds):
                raise SpecError(f"seeds = {list(self.seeds)!r} is invalid: values must be distinct")
        if any(not 0 <= seed <= MAX_SEED for seed in self.all_seeds):
            key, value = ("seeds", list(self.seeds)) if self.seeds is not None else ("seed", self.seed)
            raise SpecError(f"{key} = {value!r} is invalid: expected integers in 0..{MAX_SEED}")
        if self.eval_every < 1:
            raise SpecError(f"eval_every = {self.eval_every!r} is invalid: expected an integer >= 1")

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """The pre-training seeds, in grid order: ``seeds``, else ``(seed,)``, else ``(0,)``."""
        if self.seeds is not None:
            return self.seeds
        return (0 if self.seed is None else self.seed,)


@dataclass(frozen=True, kw_only=True)
class Finetune:
    """Schedule length of the downstream scratch and transfer runs.

    Either a fixed ``epochs`` (the paper: 500 for every N), or a budget of optimiser ``steps``
    so that small N still trains long enough: ``epochs(N) = ceil(steps / ceil(N / batch(N)))``
    clamped to ``[min_epochs, max_epochs]`` with ``batch(N) = min(batch_size, N)``.
    """

    epochs: int | None = None
    steps: int | None = None
    min_epochs: int = 1
    max_epochs: int | None = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise SpecError(f"epochs/steps = {(self.epochs, self.steps)!r} is invalid: give exactly one of "
                            "epochs (fixed) or steps (optimiser steps per run)")
        for name, limit in (("epochs", MAX_EPOCHS), ("steps", MAX_STEPS), ("max_epochs", MAX_EPOCHS)):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= limit:
                raise SpecError(f"{name} = {value!r} is invalid: expected an integer in 1..{limit:,}")
        if self.min_epochs < 1:
            raise SpecError(f"min_epochs = {self.min_epochs!r} is invalid: expected an integer >= 1")
        if self.max_epochs is not None and self.max_epochs < self.min_epochs:
            raise SpecError(f"max_epochs = {self.max_epochs!r} is invalid: expected >= min_epochs ({self.min_epochs})")
        if self.eval_every < 1:
            raise SpecError(f"eval_every = {self.eval_every!r} is invalid: expected an integer >= 1")

    def scaled(self, factor: int) -> Finetune:
        """The same rule with ``factor`` times the budget (epochs or steps, and both clamps).

        With ``steps`` the resulting epochs are ``factor`` times the original up to the ceiling of
        ``steps / batches per epoch`` (exactly ``factor`` times whenever the batches divide the steps).
        """
        mul = (lambda v: None if v is None else v * factor)
        return Finetune(epochs=mul(self.epochs), steps=mul(self.steps), min_epochs=self.min_epochs * factor,
                        max_epochs=mul(self.max_epochs), eval_every=self.eval_every)

    def epochs_for(self, n_train: int, batch_size: int) -> int:
        """Number of epochs of a run on ``n_train`` samples."""
        if self.epochs is not None:
            return self.epochs
        batches = math.ceil(n_train / max(1, min(batch_size, n_train)))
        epochs = max(self.min_epochs, math.ceil(self.steps / batches))
        return min(epochs, self.max_epochs) if self.max_epochs is not None else epochs


@dataclass(frozen=True, kw_only=True)
class Shift:
    """One physics shift: pre-train on ``upstream``, evaluate / fine-tune on ``downstream``.

    Both are dataset labels as printed everywhere else (``poisson(1,5)``, ``advdiff(0.2,1)``,
    ``helmholtz(1,10)``); ``upstream`` may also be ``mixed`` (docs/protocol.md §3 E4).
    """

    upstream: str
    downstream: str

    def __post_init__(self) -> None:
        # Canonical labels, so that poisson(1,5) and poisson(1.0, 5.0) are one shift (one tag, one curve).
        for key in ("upstream", "downstream"):
            object.__setattr__(self, key, canonical_label(getattr(self, key), allow_mixed=(key == "upstream"), key=key))

    @property
    def label(self) -> str:
        """``"<upstream> -> <downstream>"`` (the ``shift`` tag / column)."""
        return f"{self.upstream} -> {self.downstream}"


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One block of a composite grid (``[[experiments]]``): its own axes, the grid's settings.

    A study such as docs/protocol.md §3's E1-E4 needs different axes per experiment (many N on the
    headline shift, several sizes on one shift, many shifts at one size, ...); one Cartesian
    product would multiply them all.  Every axis left out is the grid's own (top-level) value.
    The grid's plan is the union of its blocks' runs: a run two blocks share (same spec, hence
    same run_key) is trained once, and the analysis sees one grid.
    """

    name: str
    description: str = ""
    models: tuple[str, ...] | None = None
    n_train: tuple[int, ...] | None = None
    arms: tuple[str, ...] | None = None
    lrs: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None
    multi_seed_max_n: int | None = None
    #: Pre-training seeds of this block's upstream models (default: ``[pretrain]``'s).
    pretrain_seeds: tuple[int, ...] | None = None
    shifts: tuple[Shift, ...] | None = None
    #: A budget audit: train this block's scratch and transfer cells again with ``budget_audit`` times
    #: the ``[finetune]`` budget (role ``audit``, kept out of every curve); the analysis reports how much
    #: the longer budget still lowered each run's error -- the check that the grid's budget converged,
    #: which the per-run diagnostic cannot make under cosine annealing (its final drop comes anyway).
    budget_audit: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise SpecError(f"name = {self.name!r} is invalid: expected letters, digits, '-', '_' or '.'")
        if self.budget_audit is not None and not 2 <= self.budget_audit <= MAX_BUDGET_AUDIT:
            raise SpecError(f"budget_audit = {self.budget_audit!r} is invalid: expected an integer in "
                            f"2..{MAX_BUDGET_AUDIT} (the multiple of the fine-tuning budget to audit with)")


def canonical_label(label: str, *, allow_mixed: bool, key: str = "label") -> str:
    """``"poisson(1.0, 5)"`` -> ``"poisson(1,5)"``: the label a dataset of that range prints."""
    pde, low, high = parse_label(label, allow_mixed=allow_mixed, key=key)
    return "mixed" if pde == "mixed" else f"{pde}({format_range_end(low)},{format_range_end(high)})"


def parse_label(label: str, *, allow_mixed: bool, key: str = "label") -> tuple[str, float | None, float | None]:
    """``"poisson(1,5)"`` -> ``("poisson", 1.0, 5.0)``; ``"mixed"`` -> ``("mixed", None, None)``."""
    if allow_mixed and label.strip() == "mixed":
        return ("mixed", None, None)
    match = _LABEL_RE.match(label)
    if not match:
        allowed = "'pde(low,high)' with pde one of " + ", ".join(SINGLE_PDES)
        raise SpecError(f"{key} = {label!r} is invalid: expected {allowed}" + (", or 'mixed'" if allow_mixed else ""))
    return (match.group(1), float(match.group(2)), float(match.group(3)))


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    """A grid: axes × fixed settings.  Built strictly from TOML by :func:`load_grid`."""

    label: str
    description: str = ""
    resolution: int
    models: tuple[str, ...]
    n_train: tuple[int, ...]
    arms: tuple[str, ...] = ARMS
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    #: Above this N only the first seed is run (several seeds matter most at small N).
    multi_seed_max_n: int | None = None
    batch_size: int = 128
    data_seed: int = 0
    #: How every SYS-2 dataset of the grid (advdiff, and the mixture's SYS-2 third) chooses lam:
    #: "exact" (realised Psi = target) or "authors" (their lookup table, realised Psi misses it).
    psi_targeting: str = "exact"
    upstream: Sizes
    downstream: Sizes
    pretrain: Pretrain
    finetune: Finetune
    #: Required unless ``experiments`` are given (then each block names its own, or inherits these).
    shifts: tuple[Shift, ...] = ()
    #: Blocks of a composite grid (see :class:`Experiment`); none: the grid is one Cartesian product.
    experiments: tuple[Experiment, ...] = ()
    #: The composite grid a block was cut from (set by :meth:`blocks`, never read from TOML): a
    #: block's datasets follow the stream rule of the whole grid (:meth:`dataset`).
    parent: GridSpec | None = field(default=None, compare=False, repr=False)
    #: Set by :meth:`blocks` on a budget-audit block (its ``finetune`` is already scaled); never read from TOML.
    budget_audit: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.label):
            raise SpecError(f"label = {self.label!r} is invalid: expected letters, digits, '-', '_' or '.'")
        axes = {"models": self.models, "n_train": self.n_train, "arms": self.arms, "lrs": self.lrs,
                "seeds": self.seeds}
        if not self.experiments or self.shifts:
            axes["shifts"] = self.shifts
        for name, values in axes.items():
            if not values:
                raise SpecError(f"{name} = [] is invalid: an axis needs at least one value")
            if len(set(values)) != len(values):
                raise SpecError(f"{name} = {list(values)!r} is invalid: values must be distinct")
        for model in self.models:
            if model not in MODEL_LADDER:
                raise SpecError(f"models = {list(self.models)!r} is invalid: allowed sizes: {', '.join(MODEL_LADDER)}")
            n_modes = MODEL_LADDER[model][1]
            if n_modes > self.resolution // 2:
                raise SpecError(f"models = {list(self.models)!r} is invalid: {model} keeps {n_modes} Fourier modes, "
                                f"more than resolution {self.resolution} allows (at most {self.resolution // 2})")
        for arm in self.arms:
            if arm not in ARMS:
                raise SpecError(f"arms = {list(self.arms)!r} is invalid: allowed: {', '.join(ARMS)}")
        for n in self.n_train:
            if n < 1 or n > self.downstream.n_train:
                raise SpecError(f"n_train = {list(self.n_train)!r} is invalid: every N must be in "
                                f"1..downstream.n_train ({self.downstream.n_train})")
        for lr in self.lrs:
            if not (math.isfinite(lr) and lr > 0):
                raise SpecError(f"lrs = {list(self.lrs)!r} is invalid: learning rates must be finite and > 0")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise SpecError(f"seeds = {list(self.seeds)!r} is invalid: seeds must be in 0..{MAX_SEED}")
        if not 0 <= self.data_seed <= MAX_SEED:
            raise SpecError(f"data_seed = {self.data_seed!r} is invalid: expected an integer in 0..{MAX_SEED}")
        if self.resolution < 8 or self.resolution % 2 or self.resolution > MAX_RESOLUTION:
            raise SpecError(f"resolution = {self.resolution!r} is invalid: expected an even grid size in "
                            f"8..{MAX_RESOLUTION} (the paper uses 128)")
        if self.batch_size < 1:
            raise SpecError(f"batch_size = {self.batch_size!r} is invalid: expected an integer >= 1")
        if self.multi_seed_max_n is not None and self.multi_seed_max_n < 1:
            raise SpecError(f"multi_seed_max_n = {self.multi_seed_max_n!r} is invalid: expected an integer >= 1")
        if self.psi_targeting not in PSI_TARGETINGS:
            raise SpecError(f"psi_targeting = {self.psi_targeting!r} is invalid: allowed: {', '.join(PSI_TARGETINGS)}")
        # Build every dataset once so that bad ranges fail here, naming the shift.
        for i, shift in enumerate(self.shifts):
            for key in ("upstream", "downstream"):
                try:
                    self.dataset(getattr(shift, key), key)
                except SpecError as err:
                    raise SpecError(f"shifts[{i}].{key} = {getattr(shift, key)!r} is invalid: {err}") from None
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise SpecError(f"experiments: names {names!r} are invalid: each block needs its own name")
        for i, block in enumerate(self.experiments):
            try:
                self._block(block)
            except SpecError as err:
                raise SpecError(f"experiments[{i}] ({block.name}): {err}") from None

    def _block(self, experiment: Experiment) -> GridSpec:
        overrides = {name: getattr(experiment, name) for name in ("models", "n_train", "arms", "lrs", "seeds",
                                                                   "multi_seed_max_n", "shifts")
                     if getattr(experiment, name) is not None}
        pretrain = self.pretrain if experiment.pretrain_seeds is None else \
            dataclasses.replace(self.pretrain, seed=None, seeds=experiment.pretrain_seeds)
        description = experiment.description or self.description
        audit = experiment.budget_audit
        finetune = self.finetune if audit is None else self.finetune.scaled(audit)
        return dataclasses.replace(self, experiments=(), parent=self, pretrain=pretrain, description=description,
                                   finetune=finetune, budget_audit=audit, **overrides)

    def blocks(self) -> tuple[GridSpec, ...]:
        """The plain (one-product) grids this grid is the union of: itself, or one per experiment."""
        return tuple(self._block(e) for e in self.experiments) if self.experiments else (self,)

    @property
    def all_shifts(self) -> tuple[Shift, ...]:
        """Every shift of the whole grid (all blocks), in order, once each."""
        root = self.parent or self
        if not root.experiments:
            return root.shifts
        # Only shifts some block runs: an unused top-level default must not move other blocks' datasets.
        return tuple(dict.fromkeys(s for e in root.experiments for s in (e.shifts or root.shifts)))

    def dataset(self, label: str, role: str) -> DatasetSpec:
        """The :class:`DatasetSpec` of ``label`` with the ``role``'s (upstream/downstream) split sizes.

        A downstream dataset on a range that one of this grid's pre-training datasets also uses
        (E4 in distribution, ``poisson(1,5) -> poisson(1,5)``; E3's ``poisson(1,2.5) -> poisson(1,5)``
        beside ``poisson(1,5)`` upstream) draws from its own random stream (``stream = "downstream"``):
        with the range's stream its splits would be prefixes of the pre-training splits, so the
        pre-trained model would have been trained (and selected) on the downstream samples.  Every
        other downstream dataset keeps the range's stream, hence its content and run_keys.
        """
        pde, low, high = parse_label(label, allow_mixed=(role == "upstream"), key=role)
        sizes = self.upstream if role == "upstream" else self.downstream
        stream = "default"
        if role == "downstream" and (pde, low, high) in {parse_label(s.upstream, allow_mixed=True)
                                                         for s in self.all_shifts}:
            stream = "downstream"
        psi = self.psi_targeting if pde in ("advdiff", "mixed") else "exact"
        return DatasetSpec(pde=pde, low=low, high=high, resolution=self.resolution, n_train=sizes.n_train,
                           n_val=sizes.n_val, n_test=sizes.n_test, seed=self.data_seed, stream=stream,
                           psi_targeting=psi)

    def seeds_for(self, n_train: int) -> tuple[int, ...]:
        if self.multi_seed_max_n is not None and n_train > self.multi_seed_max_n:
            return self.seeds[:1]
        return self.seeds


def grid_path(name_or_path: str | Path) -> Path:
    """A shipped grid name (``quick`` -> ``runs/quick.toml``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists() or len(path.parts) > 1:
        return path
    return RUNS_DIR / f"{name_or_path}.toml"


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in RUNS_DIR.glob("*.toml"))


def read_grid(name_or_path: str | Path) -> tuple[Path, dict]:
    """The grid file's path and its parsed TOML.  Errors are :class:`SpecError` naming the file."""
    path = grid_path(name_or_path)
    if not path.is_file():
        raise SpecError(f"grid {str(name_or_path)!r}: no such file {path}; shipped grids: {', '.join(shipped_grids())}")
    try:
        return path, tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None


def grid_from_mapping(data: dict, *, where: str = "<grid>") -> GridSpec:
    """Build a :class:`GridSpec` from a parsed TOML mapping, checking every key and value; the
    runs it expands to are checked by :func:`repro.grid.plan.parse_grid`."""
    for key in ("parent", "budget_audit"):
        if key in data:
            raise SpecError(f"{where}: unknown key(s) {key} (set by the planner on [[experiments]] blocks, "
                            "not a grid setting)")
    return from_mapping(GridSpec, data, where=where)
