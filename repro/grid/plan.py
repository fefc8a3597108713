"""Grid expansion: :class:`GridSpec` -> :class:`Plan` (pure and deterministic).

Order and identity:

1. Pre-training runs, one per (upstream dataset, model size, pre-training seed) used by a
   ``transfer`` or ``zero_shot`` arm: a ``scratch`` run on the full upstream training split
   (role ``pretrain``) with ``seed`` = the pre-training seed (``[pretrain] seeds``).
2. Downstream runs, in the order shifts × models × N × lr × seed × pre-training seed:

   - ``scratch``: one per (downstream task, model, N, lr, seed), in the native layout, shared
     by every shift that ends at that task (deduplicated by run_key);
   - ``transfer``: the same axes plus the shift and the pre-training seed, ``init_from`` = the
     pre-training run_key; from a ``mixed`` upstream the downstream data is read in the mixed
     7-channel layout;
   - ``zero_shot``: one per (shift, model, pre-training seed): n_train = epochs = lr = 0.

   Runs from different pre-training seeds differ only in ``init_from`` (the analysis tells the
   pre-training seeds apart by it); a grid with one pre-training seed plans exactly the runs, keys
   and order it planned before ``[pretrain] seeds`` existed.

Every run's identity is ``RunSpec.run_key`` (sha256 of its canonical JSON), so the same grid
expands to the same keys in any process, and two grids that share runs share their keys.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from repro import schema
from repro.config import RunSpec, SpecError
from repro.ensembles import DEFAULT_MAX_MEMBERS, group_specs  # what the engine trains together
from repro.grid.spec import GridSpec, grid_from_mapping, read_grid

ROLE_PRETRAIN = schema.ROLE_PRETRAIN
ROLE_DOWNSTREAM = schema.ROLE_DOWNSTREAM
ROLE_AUDIT = schema.ROLE_AUDIT
#: When two blocks plan the same run_key, the stronger role wins: a run others start from stays a
#: pre-training run, and a curve point is never demoted to an audit.
_ROLE_RANK = {ROLE_PRETRAIN: 0, ROLE_DOWNSTREAM: 1, ROLE_AUDIT: 2}

#: Axes reported by ``--dry-run`` and ``repro status``.
AXES: tuple[str, ...] = ("role", "arm", "model", "n_train", "lr", "seed", "pretrain_seed", "task", "shift")


@dataclass(frozen=True)
class PlannedRun:
    """One RunSpec with what the grid knows about it."""

    spec: RunSpec
    role: str
    #: Shift labels (``"up -> down"``) this run serves; a shared scratch run serves several.
    shifts: tuple[str, ...] = ()
    #: Seed of the pre-training run: its own (role pretrain) or that of ``init_from``; None for scratch.
    pretrain_seed: int | None = None

    @property
    def run_key(self) -> str:
        return self.spec.run_key

    @property
    def depends_on(self) -> str | None:
        """run_key of the pre-training run this one starts from (transfer, zero_shot)."""
        return self.spec.init_from

    def axis_values(self) -> dict[str, object]:
        spec = self.spec
        return {"role": self.role, "arm": spec.arm, "model": spec.model, "n_train": spec.n_train,
                "lr": spec.lr, "seed": spec.seed,
                "pretrain_seed": "-" if self.pretrain_seed is None else self.pretrain_seed, "task": spec.data.label,
                "shift": ", ".join(self.shifts) if self.shifts else "-"}


@dataclass(frozen=True)
class Unit:
    """A work unit: runs with one ``batch_key`` that the engine trains together as an ensemble."""

    runs: tuple[PlannedRun, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.run_key for r in self.runs)

    @property
    def specs(self) -> tuple[RunSpec, ...]:
        return tuple(r.spec for r in self.runs)

    @property
    def task_id(self) -> str:
        """The unit's id in the schedule and the estimate (its first run's key)."""
        return f"unit:{self.keys[0]}"

    @property
    def depends_on(self) -> frozenset[str]:
        return frozenset(r.depends_on for r in self.runs if r.depends_on)

    @property
    def role(self) -> str:
        return self.runs[0].role

    def describe(self) -> str:
        s = self.runs[0].spec
        return f"{s.arm} {s.data.label} {s.model} N={s.n_train} ×{len(self.runs)}"


@dataclass(frozen=True)
class Plan:
    """The expanded grid: every run once, pre-training first."""

    grid: GridSpec
    runs: tuple[PlannedRun, ...]
    _index: dict[str, PlannedRun] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({r.run_key: r for r in self.runs})

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[PlannedRun]:
        return iter(self.runs)

    def __getitem__(self, run_key: str) -> PlannedRun:
        return self._index[run_key]

    def __contains__(self, run_key: object) -> bool:
        return run_key in self._index

    @property
    def plan_hash(self) -> str:
        """Identity of the plan (sha256 of its sorted run_keys, 16 hex): two grid files with one
        label but different runs have different hashes."""
        import hashlib

        return hashlib.sha256(",".join(sorted(self.keys)).encode()).hexdigest()[:16]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.run_key for r in self.runs)

    @property
    def roles(self) -> dict[str, str]:
        return {r.run_key: r.role for r in self.runs}

    @property
    def pretrain(self) -> tuple[PlannedRun, ...]:
        return tuple(r for r in self.runs if r.role == ROLE_PRETRAIN)

    @property
    def downstream(self) -> tuple[PlannedRun, ...]:
        return tuple(r for r in self.runs if r.role == ROLE_DOWNSTREAM)

    @property
    def audit(self) -> tuple[PlannedRun, ...]:
        """Budget-audit runs (:attr:`repro.grid.spec.Experiment.budget_audit`)."""
        return tuple(r for r in self.runs if r.role == ROLE_AUDIT)

    def dependants(self, run_key: str) -> tuple[PlannedRun, ...]:
        return tuple(r for r in self.runs if r.depends_on == run_key)

    def axis_counts(self, keys: Iterable[str] | None = None) -> dict[str, Counter]:
        """axis -> Counter(value -> number of runs), over ``keys`` (default: all runs)."""
        runs = self.runs if keys is None else [self._index[k] for k in keys]
        counts: dict[str, Counter] = {axis: Counter() for axis in AXES}
        for run in runs:
            for axis, value in run.axis_values().items():
                if axis == "shift":
                    for shift in run.shifts or ("-",):
                        counts[axis][shift] += 1
                else:
                    counts[axis][value] += 1
        return counts

    def units(self, keys: Iterable[str] | None = None, *, max_members: int = DEFAULT_MAX_MEMBERS,
              device: str | None = None) -> list[Unit]:
        """Group ``keys`` (default: all) by the engine's ``batch_key`` into units of ≤ ``max_members``.

        With a ``device``, units are the ensembles the engine will train there (on a CPU it
        caps them by activation size), so the schedule and the estimate see the real jobs.
        Units come in plan order (pre-training first); members keep plan order.
        """
        wanted = set(self.keys if keys is None else keys)
        specs = [run.spec for run in self.runs if run.run_key in wanted]
        groups = group_specs(specs, max(1, int(max_members)), device)
        return [Unit(tuple(self._index[spec.run_key] for spec in group)) for group in groups]


def expand(grid: GridSpec) -> Plan:
    """Expand a grid into its runs (pure, deterministic; no I/O)."""
    runs: dict[str, PlannedRun] = {}

    def add(spec: RunSpec, role: str, shift: str | None, pretrain_seed: int | None = None) -> None:
        key = spec.run_key
        prev = runs.get(key)
        shifts = tuple(dict.fromkeys((prev.shifts if prev else ()) + ((shift,) if shift else ())))
        if prev is not None and _ROLE_RANK[prev.role] < _ROLE_RANK[role]:
            role = prev.role  # a run that others start from stays a pre-training run, a curve point a curve point
            pretrain_seed = prev.pretrain_seed if prev.role == ROLE_PRETRAIN else pretrain_seed
        runs[key] = PlannedRun(spec=spec, role=role, shifts=shifts, pretrain_seed=pretrain_seed)

    pre: dict[tuple[str, str, int], RunSpec] = {}
    audited: list[tuple[int, RunSpec]] = []  # (block index, the run each audit run re-trains)
    for i, block in enumerate(grid.blocks()):
        audited += [(i, spec) for spec in _expand_block(block, add, pre)]
    for i, spec in audited:
        if spec.run_key not in runs or runs[spec.run_key].role != ROLE_DOWNSTREAM:
            name = grid.experiments[i].name
            raise SpecError(f"experiments[{i}] ({name}): budget_audit cell {spec.arm} {spec.data.label} {spec.model} "
                            f"N={spec.n_train} lr={spec.lr:g} seed={spec.seed} has no grid run to audit (no other "
                            "block plans it): audit cells must be cells of the grid")
    ordered = [r for r in runs.values() if r.role == ROLE_PRETRAIN] + \
              [r for r in runs.values() if r.role != ROLE_PRETRAIN]
    return Plan(grid=grid, runs=tuple(ordered))


def _expand_block(grid: GridSpec, add: Callable[..., None], pre: dict[tuple[str, str, int], RunSpec]) -> list[RunSpec]:
    """Add one plain grid's runs (``pre``: pre-training runs by (upstream, model, seed), shared by blocks).

    Returns, for a budget-audit block, the grid run each of its runs re-trains (same spec at the
    grid's own budget), so that :func:`expand` can check that every audited cell exists.
    """
    needs_pretrain = any(arm in grid.arms for arm in ("transfer", "zero_shot"))
    pre_seeds = grid.pretrain.all_seeds if needs_pretrain else ()
    for shift in grid.shifts if needs_pretrain else ():
        for model in grid.models:
            for pseed in pre_seeds:
                if (shift.upstream, model, pseed) in pre:
                    continue
                data = grid.dataset(shift.upstream, "upstream")
                spec = RunSpec(arm="scratch", data=data, model=model, n_train=data.n_train, lr=grid.pretrain.lr,
                               epochs=grid.pretrain.epochs, layout="mixed" if data.pde == "mixed" else "native",
                               batch_size=grid.batch_size, seed=pseed, eval_every=grid.pretrain.eval_every)
                pre[(shift.upstream, model, pseed)] = spec
                add(spec, ROLE_PRETRAIN, None, pseed)

    ft = grid.finetune
    # An audit block's finetune is already scaled; its runs audit the budget and have no zero-shot arm.
    trained_role = ROLE_AUDIT if grid.budget_audit else ROLE_DOWNSTREAM
    base_ft = grid.parent.finetune if grid.budget_audit and grid.parent is not None else ft
    audited: list[RunSpec] = []
    for shift in grid.shifts:
        data = grid.dataset(shift.downstream, "downstream")
        mixed_up = shift.upstream == "mixed"
        for model in grid.models:
            sources = [(pseed, pre[(shift.upstream, model, pseed)]) for pseed in pre_seeds]
            if "zero_shot" in grid.arms and not grid.budget_audit:
                for pseed, source in sources:
                    add(RunSpec(arm="zero_shot", data=data, model=model, n_train=0, lr=0.0, epochs=0,
                                layout="mixed" if mixed_up else "native", batch_size=grid.batch_size, seed=0,
                                init_from=source.run_key, eval_every=1), ROLE_DOWNSTREAM, shift.label, pseed)
            for n in grid.n_train:
                epochs = ft.epochs_for(n, grid.batch_size)
                base_epochs = base_ft.epochs_for(n, grid.batch_size)
                for lr in grid.lrs:
                    for seed in grid.seeds_for(n):
                        if "scratch" in grid.arms:
                            spec = RunSpec(arm="scratch", data=data, model=model, n_train=n, lr=lr, epochs=epochs,
                                           batch_size=grid.batch_size, seed=seed, eval_every=ft.eval_every)
                            add(spec, trained_role, shift.label)
                            if grid.budget_audit:
                                audited.append(dataclasses.replace(spec, epochs=base_epochs))
                        if "transfer" in grid.arms:
                            for pseed, source in sources:
                                spec = RunSpec(arm="transfer", data=data, model=model, n_train=n, lr=lr,
                                               epochs=epochs, layout="mixed" if mixed_up else "native",
                                               batch_size=grid.batch_size, seed=seed, init_from=source.run_key,
                                               eval_every=ft.eval_every)
                                add(spec, trained_role, shift.label, pseed)
                                if grid.budget_audit:
                                    audited.append(dataclasses.replace(spec, epochs=base_epochs))
    return audited


# --- loading: a grid file is valid when every run it expands to is -------------------------------

def _expand_checked(grid: GridSpec, where: str) -> Plan:
    try:
        return expand(grid)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None


def parse_grid(data: dict, *, where: str = "<grid>") -> GridSpec:
    """Build and validate a :class:`GridSpec` from a parsed TOML mapping; expanding it checks every
    RunSpec (e.g. N against the split sizes), and problems are reported against ``where``."""
    grid = grid_from_mapping(data, where=where)
    _expand_checked(grid, where)
    return grid


def load_plan(name_or_path: str | Path) -> Plan:
    """Read, validate and expand a grid (a shipped name or a TOML path) in one pass."""
    path, data = read_grid(name_or_path)
    return _expand_checked(grid_from_mapping(data, where=str(path)), str(path))


def load_grid(name_or_path: str | Path) -> GridSpec:
    """Read and validate a grid.  Errors are :class:`SpecError` naming the file and the key."""
    return load_plan(name_or_path).grid
