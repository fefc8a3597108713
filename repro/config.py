"""Frozen, typed specifications: what a dataset, a model and one run *are*.

Every spec is an immutable ``@dataclass(frozen=True, kw_only=True)``; derived values are
properties, validation happens in ``__post_init__`` and raises :class:`SpecError` with a
message naming the field and what is allowed.  No code mutates a spec: build a new one with
``dataclasses.replace``.

The vocabulary (``pde``, ``low``, ``high``, ``resolution``, ``n_train``, ``model``, ``arm``,
``lr``, ``seed`` ...) is the same word in TOML grids, CLI options, MLflow params and the
analysis DataFrame (see :mod:`repro.schema`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from repro import schema

#: PDE systems of docs/protocol.md §1, plus the mixture used for mixed pre-training (§3 E4).
PDES: tuple[str, ...] = ("poisson", "advdiff", "helmholtz", "mixed")
SINGLE_PDES: tuple[str, ...] = ("poisson", "advdiff", "helmholtz")

#: The three ways of obtaining a downstream model (docs/protocol.md §2.8).
#: A pre-training run is simply a ``scratch`` run on the upstream dataset whose checkpoint
#: later runs name in ``init_from``.
ARMS: tuple[str, ...] = ("scratch", "transfer", "zero_shot")

#: Coefficient-channel layouts: ``native`` = the PDE's own coefficient vector, ``mixed`` = the
#: 6 coefficients [K11, K22, K12, v1, v2, omega] of the general operator
#: -div(K grad u) + v.grad u - omega u = f shared by all three systems (docs/protocol.md §2.2).
LAYOUTS: tuple[str, ...] = ("native", "mixed")

#: Diffusion scale kappa of all three systems (authors' code).
KAPPA: float = 0.01

#: Coefficient names per PDE, in the order of the HDF5 ``tensor`` dataset and the network's
#: input channels (after the source channel f).
COEFFICIENTS: dict[str, tuple[str, ...]] = {
    "poisson": ("K11", "K22", "K12"),
    "advdiff": ("K11", "K22", "K12", "v1", "v2"),
    "helmholtz": ("kappa", "omega"),
    "mixed": ("K11", "K22", "K12", "v1", "v2", "omega"),
}

#: The physics ranges of the mixed pre-training set: SYS-1(1,5) + SYS-2(0.2,1) + SYS-3(1,10).
MIXED_COMPONENTS: tuple[tuple[str, float, float], ...] = (
    ("poisson", 1.0, 5.0),
    ("advdiff", 0.2, 1.0),
    ("helmholtz", 1.0, 10.0),
)

#: Model-size ladder (docs/protocol.md §2.4): name -> (width, n_modes).  ``xxs`` is an extra rung
#: for CPU tests and the quick grid; the paper's ladder is xs..xl.  ``xxs-m8`` and ``xs-m8`` are
#: the CPU study's extra rungs: the widths of xxs and xs with 8 modes, so that small models are
#: not set by mode truncation (m = 4 leaves ~4.8 % of ||u|| of poisson(5,10) outside the kept
#: modes); with s they form a width ladder 8, 16, 32 at m = 8.
MODEL_LADDER: dict[str, tuple[int, int]] = {
    "xxs": (8, 4),
    "xxs-m8": (8, 8),
    "xs": (16, 4),
    "xs-m8": (16, 8),
    "s": (32, 8),
    "m": (64, 16),
    "l": (64, 32),
    "xl": (128, 32),
}

#: Learning rates swept by the paper for every (task, N, arm) cell.
PAPER_LRS: tuple[float, ...] = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3)


class SpecError(ValueError):
    """A specification is invalid; the message names the field and what is allowed."""


#: Field metadata of a spec field added after datasets and run_keys existed: while the field holds
#: its default it is left out of :func:`canonical_json`, hence of every hash, run_key and file
#: address built from it, so specs that do not use the new option keep their identity.  A spec
#: that sets it gets a new identity, as it should (it describes different data or a different run).
#: Use as ``field(default=..., metadata=OMIT_AT_DEFAULT)``; the default must be a plain constant.
OMIT_AT_DEFAULT: Mapping[str, bool] = types.MappingProxyType({"omit_at_default": True})

#: ``DatasetSpec.stream`` values: ``default`` = the range's own random stream (as every dataset had
#: before this field existed); ``downstream`` = a separate stream for a downstream dataset whose range
#: a pre-training dataset of the same grid also uses (else it would be a prefix of that dataset).
STREAMS: tuple[str, ...] = ("default", "downstream")

#: ``DatasetSpec.psi_targeting`` values (SYS-2's lam, see :mod:`repro.pdes.advdiff`): ``exact`` =
#: realised Psi equals the drawn target (ours); ``authors`` = lam from the authors' lookup table.
PSI_TARGETINGS: tuple[str, ...] = ("exact", "authors")


def _fail(owner: str, field: str, value: Any, allowed: str) -> None:
    raise SpecError(f"{owner}.{field} = {value!r} is invalid: {allowed}")


def _check_finite(owner: str, field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(owner, field, value, "expected a finite number")


#: Upper bounds that catch typos before they become allocation tracebacks, overflows or
#: absurd estimates (issue 11 #6): the paper's grids use 128², seeds < 10 and 500 epochs.
MAX_RESOLUTION = 1024
MAX_SEED = 2**31 - 1  # numpy's and torch's seeding both accept it; larger overflowed in a run
MAX_EPOCHS = 100_000


def _check_at_most(owner: str, field: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        _fail(owner, field, value, f"expected at most {limit:,} ({what})")


def _check_positive_int(owner: str, field: str, value: int, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(owner, field, value, "expected an integer")
    if value < 0 or (value == 0 and not allow_zero):
        _fail(owner, field, value, "expected an integer >= 0" if allow_zero else "expected an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """One dataset: a PDE with its physics-parameter range, resolution, split sizes and seed.

    ``low``/``high`` bound the physics parameter of docs/protocol.md §1 (SYS-1: eigenvalue ``e``;
    SYS-2: advection-to-diffusion ratio Psi; SYS-3: integer omega, inclusive).  For
    ``pde="mixed"`` they must be left out: the mixture's ranges are :data:`MIXED_COMPONENTS`.
    """

    pde: str
    low: float | None = None
    high: float | None = None
    resolution: int = 128
    n_train: int = 32768
    n_val: int = 4096
    n_test: int = 4096
    seed: int = 0
    #: Random stream of the samples (see :data:`STREAMS`); omitted from hashes at ``default``.
    stream: str = dataclasses.field(default="default", metadata=OMIT_AT_DEFAULT)
    #: How SYS-2 (advdiff, and the mixture's SYS-2 third) chooses lam (see :data:`PSI_TARGETINGS`);
    #: omitted from hashes at ``exact``.
    psi_targeting: str = dataclasses.field(default="exact", metadata=OMIT_AT_DEFAULT)

    def __post_init__(self) -> None:
        own = "data"
        if self.pde not in PDES:
            _fail(own, "pde", self.pde, f"allowed: {', '.join(PDES)}")
        if self.pde == "mixed":
            if self.low is not None or self.high is not None:
                _fail(own, "low/high", (self.low, self.high),
                      "the mixed dataset has fixed ranges SYS-1(1,5)+SYS-2(0.2,1)+SYS-3(1,10); leave them out")
        else:
            if self.low is None or self.high is None:
                _fail(own, "low/high", (self.low, self.high), f"a {self.pde} dataset needs a range low < high")
            _check_finite(own, "low", self.low)
            _check_finite(own, "high", self.high)
            # Canonical floats so that 5 and 5.0 give the same dataset hash and run_key.
            object.__setattr__(self, "low", float(self.low))
            object.__setattr__(self, "high", float(self.high))
            if self.low >= self.high:
                _fail(own, "low", self.low, f"expected low < high (high = {self.high})")
            if self.pde == "poisson" and self.low < 1:
                _fail(own, "low", self.low, "the Poisson anisotropy e must be >= 1 (K has eigenvalues 1 and e)")
            if self.pde == "advdiff" and self.low < 0:
                _fail(own, "low", self.low, "the advection-to-diffusion ratio Psi must be >= 0")
            if self.pde == "helmholtz":
                if float(self.low) != int(self.low) or float(self.high) != int(self.high):
                    _fail(own, "low/high", (self.low, self.high), "Helmholtz omega ranges are integers")
                if self.low < 0:
                    _fail(own, "low", self.low, "Helmholtz omega must be >= 0")
        _check_positive_int(own, "resolution", self.resolution)
        if self.resolution < 8 or self.resolution % 2:
            _fail(own, "resolution", self.resolution, "expected an even grid size >= 8")
        _check_at_most(own, "resolution", self.resolution, MAX_RESOLUTION, "the grid side n; the paper uses 128")
        for name in ("n_train", "n_val", "n_test"):
            _check_positive_int(own, name, getattr(self, name))
        _check_positive_int(own, "seed", self.seed, allow_zero=True)
        _check_at_most(own, "seed", self.seed, MAX_SEED, "2^31 - 1, what numpy and torch seeding accept")
        if self.stream not in STREAMS:
            _fail(own, "stream", self.stream, f"allowed: {', '.join(STREAMS)}")
        if self.psi_targeting not in PSI_TARGETINGS:
            _fail(own, "psi_targeting", self.psi_targeting, f"allowed: {', '.join(PSI_TARGETINGS)}")
        if self.psi_targeting != "exact" and self.pde not in ("advdiff", "mixed"):
            _fail(own, "psi_targeting", self.psi_targeting,
                  f"only advdiff and mixed datasets draw a Psi; a {self.pde} dataset takes 'exact'")

    @property
    def label(self) -> str:
        """Short human label, e.g. ``poisson(1,5)`` or ``mixed``."""
        if self.pde == "mixed":
            return "mixed"
        return f"{self.pde}({format_range_end(self.low)},{format_range_end(self.high)})"

    @property
    def coefficients(self) -> tuple[str, ...]:
        return COEFFICIENTS[self.pde]

    def split_size(self, split: str) -> int:
        if split not in SPLITS:
            raise SpecError(f"split = {split!r} is invalid: allowed: {', '.join(SPLITS)}")
        return int(getattr(self, f"n_{split}"))


SPLITS: tuple[str, ...] = ("train", "val", "test")


def format_range_end(x: float | None) -> str:
    """Format a range end without a trailing ``.0`` (``5.0`` -> ``5``, ``0.2`` -> ``0.2``)."""
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture of one FNO (docs/protocol.md §2.3).

    Lift, ``n_layers`` Fourier layers, projection.
    """

    in_channels: int
    width: int
    n_modes: int
    n_layers: int = 4

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "n_modes", "n_layers"):
            _check_positive_int("model", name, getattr(self, name))

    @property
    def n_params(self) -> int:
        """Real parameters of one member (a complex weight counts as two reals):
        ``(C+1) w + L (4 w² m² + w² + w) + (2w² + 2w) + (2w + 1)`` -- lift, ``L`` Fourier layers
        (two complex ``w x w x m x m`` corner blocks plus a 1x1 conv with bias), projection."""
        c, w, m, n_layers = self.in_channels, self.width, self.n_modes, self.n_layers
        lift = c * w + w
        layer = 2 * 2 * w * w * m * m + w * w + w
        projection = (w * 2 * w + 2 * w) + (2 * w + 1)
        return lift + n_layers * layer + projection

    @classmethod
    def from_ladder(cls, name: str, in_channels: int) -> "ModelSpec":
        if name not in MODEL_LADDER:
            raise SpecError(f"model = {name!r} is invalid: allowed sizes: {', '.join(MODEL_LADDER)}")
        width, n_modes = MODEL_LADDER[name]
        return cls(in_channels=in_channels, width=width, n_modes=n_modes)


def in_channels(pde: str, layout: str) -> int:
    """Network input channels: the source f plus one constant channel per coefficient."""
    return 1 + len(COEFFICIENTS["mixed" if layout == "mixed" else pde])


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training or evaluation run, fully resolved.  Its hash is the run's identity.

    - ``data``: the dataset this run trains on and is evaluated on (the downstream task; for a
      pre-training run, the upstream dataset).
    - ``n_train``: size of the nested random training subset (docs/protocol.md §2.9); 0 for
      zero-shot.
    - ``init_from``: run_key (16 hex chars) or checkpoint path of the pre-trained model for the
      ``transfer`` and ``zero_shot`` arms.
    - ``seed``: model initialisation, subset draw and shuffling.
    """

    arm: str
    data: DatasetSpec
    model: str
    n_train: int
    lr: float
    epochs: int
    layout: str = "native"
    batch_size: int = 128
    seed: int = 0
    init_from: str | None = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        own = "run"
        if not isinstance(self.data, DatasetSpec):
            _fail(own, "data", self.data, "expected a DatasetSpec")
        if self.arm not in ARMS:
            _fail(own, "arm", self.arm, f"allowed: {', '.join(ARMS)}")
        if self.model not in MODEL_LADDER:
            _fail(own, "model", self.model, f"allowed sizes: {', '.join(MODEL_LADDER)}")
        if self.layout not in LAYOUTS:
            _fail(own, "layout", self.layout, f"allowed: {', '.join(LAYOUTS)}")
        if self.data.pde == "mixed" and self.layout != "mixed":
            _fail(own, "layout", self.layout, "the mixed dataset only exists in the 'mixed' layout")
        n_modes = MODEL_LADDER[self.model][1]
        if n_modes > self.data.resolution // 2:
            _fail(own, "model", self.model,
                  f"keeps {n_modes} Fourier modes, more than resolution {self.data.resolution} allows "
                  f"(at most resolution/2 = {self.data.resolution // 2})")
        _check_positive_int(own, "seed", self.seed, allow_zero=True)
        _check_at_most(own, "seed", self.seed, MAX_SEED, "2^31 - 1, what numpy and torch seeding accept")
        _check_positive_int(own, "batch_size", self.batch_size)
        _check_positive_int(own, "eval_every", self.eval_every)
        if self.arm == "zero_shot":
            if (self.n_train, self.epochs, self.lr) != (0, 0, 0.0):
                _fail(own, "arm", self.arm, "a zero_shot run trains nothing: use n_train = 0, epochs = 0, lr = 0")
        else:
            _check_positive_int(own, "n_train", self.n_train)
            _check_positive_int(own, "epochs", self.epochs)
            _check_at_most(own, "epochs", self.epochs, MAX_EPOCHS, "the paper trains 500")
            _check_finite(own, "lr", self.lr)
            object.__setattr__(self, "lr", float(self.lr))
            if self.lr <= 0:
                _fail(own, "lr", self.lr, "expected a learning rate > 0")
        if self.n_train > self.data.n_train:
            _fail(own, "n_train", self.n_train,
                  f"larger than the training split of {self.data.label} ({self.data.n_train} samples)")
        if self.arm == "scratch" and self.init_from is not None:
            _fail(own, "init_from", self.init_from, "a scratch run starts from random weights; leave it out")
        if self.arm != "scratch" and not self.init_from:
            _fail(own, "init_from", self.init_from, f"the {self.arm} arm needs a pre-trained run_key or checkpoint")

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_ladder(self.model, in_channels(self.data.pde, self.layout))

    @property
    def effective_batch_size(self) -> int:
        """batch = min(batch_size, N): full batch below 128 samples (docs/protocol.md §2.5)."""
        return max(1, min(self.batch_size, self.n_train))

    @functools.cached_property
    def run_key(self) -> str:
        # Cached on the (frozen, hence immutable) instance: expanding a 3,000-run grid read it
        # ~10^5 times, and re-hashing was 3.6 of its 3.9 s.
        return spec_hash(self)


def to_dict(spec: Any) -> dict[str, Any]:
    """A spec as plain nested dicts (JSON-ready)."""
    return dataclasses.asdict(spec)


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, floats as repr) of a spec or mapping.

    Fields marked :data:`OMIT_AT_DEFAULT` are left out while they hold their default (at any depth),
    so adding such a field changes no existing hash.
    """
    return json.dumps(_identity_view(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _identity_view(obj: Any) -> Any:
    """``dataclasses.asdict`` without the :data:`OMIT_AT_DEFAULT` fields that hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("omit_at_default") and value == f.default:
                continue
            out[f.name] = _identity_view(value)
        return out
    if isinstance(obj, Mapping):
        return {key: _identity_view(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_identity_view(value) for value in obj]
    return obj


def spec_hash(obj: Any, length: int = 16) -> str:
    """``sha256(canonical JSON)[:length]``: stable identity of a resolved spec."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted flat view of a (nested) spec: ``{"arm": ..., "data.pde": ..., ...}``.

    These dotted names are the MLflow params and the analysis DataFrame columns.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def from_mapping(cls: type, mapping: Mapping[str, Any], *, where: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping (e.g. parsed TOML), strictly.

    Unknown keys, missing required keys and wrong types raise :class:`SpecError` naming
    ``where`` (a file or section), the key and what is allowed.  Nested dataclass fields are
    built recursively from sub-mappings.
    """
    if not isinstance(mapping, Mapping):
        raise SpecError(f"{where}: expected a table, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in mapping.items():
        kwargs[name] = _coerce(hints[name], value, where=f"{where}.{name}")
    missing = [n for n, f in fields.items()
               if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where=where)
            except SpecError as err:
                errors.append(str(err))
        raise SpecError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where=f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where=where)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def run_name(spec: "RunSpec", role: str | None = None) -> str:
    """The run's name in the MLflow UI: unique within a grid and readable at a glance, e.g.
    ``scratch poisson(5,10) xs N=128 lr=0.003 seed=0`` or ``pretrain poisson(1,5) xs ...``."""
    head = schema.ROLE_PRETRAIN if role == schema.ROLE_PRETRAIN else spec.arm
    bits = [head, spec.data.label, spec.model]
    if spec.arm != "zero_shot":
        bits += [f"N={spec.n_train}", f"lr={spec.lr:g}", f"seed={spec.seed}"]
    if spec.init_from:  # which pre-trained model (two pre-training seeds share an upstream)
        bits.append(f"from={Path(spec.init_from).name[:8]}")
    return " ".join(bits)


def repro_home() -> Path:
    """The project's home directory: ``$REPRO_HOME``, else ``./.repro`` (absolute)."""
    return Path(os.environ.get(schema.ENV_HOME, schema.DEFAULT_HOME)).resolve()


def default_tracking_uri() -> str:
    """``$REPRO_TRACKING_URI``, else MLflow's own ``$MLFLOW_TRACKING_URI``, else the SQLite store
    ``<home>/mlflow.db``.

    Shared by the writer (training) and the readers (analysis), so both find the same store.
    """
    return (os.environ.get(schema.ENV_TRACKING_URI) or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{repro_home() / 'mlflow.db'}")
