"""The ``repro`` command line: parses options, builds specs, calls one library function each.

Heavy imports (torch, mlflow, plotnine) happen inside the commands so that ``repro --help``
stays instant and the analysis commands run without torch installed.
"""

from __future__ import annotations

import typer

from repro import schema
from repro.ensembles import DEFAULT_MAX_MEMBERS

app = typer.Typer(
    name="repro",
    help="Pre-train, fine-tune and compare Fourier Neural Operators; fit scaling laws; report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


ENV_DEBUG = schema.ENV_DEBUG
ENV_STORE_TIMEOUT = "REPRO_STORE_TIMEOUT"


def main() -> None:
    """The console script: ``app`` with one clear line instead of a traceback for anything
    unexpected (``--debug`` anywhere on the command line, or REPRO_DEBUG=1, shows it)."""
    import os
    import sys

    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        os.environ[ENV_DEBUG] = "1"
    if len(sys.argv) > 1 and sys.argv[1] in _READ_COMMANDS:
        _bound_store_requests()
    else:
        _patient_store_requests()
    from repro.tracking import configure_store_logs, server_gone

    configure_store_logs()
    try:
        app(prog_name="repro")
    except Exception as err:  # noqa: BLE001 - the last line of defence of a command-line tool
        if os.environ.get(ENV_DEBUG):
            raise
        gone = server_gone(err)
        if gone is not None:
            typer.secho(f"error: {gone}", fg=typer.colors.RED, err=True)
            raise SystemExit(1) from None
        text = str(err).strip().splitlines()
        typer.secho(f"error: {type(err).__name__}: {text[0] if text else ''} (a bug, or an unhandled case: "
                    f"re-run with --debug for the traceback)", fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None


#: Commands that only read the store: a request that hangs is bounded for them.  run-grid and
#: train keep MLflow's patient retries (a server restart mid-grid must not fail runs), each one
#: announced (repro.tracking.RetryAnnouncer); they are protected by the probe at start
#: (:func:`_probe_server`).
_READ_COMMANDS = ("status", "fit-laws", "report", "export")
STORE_TIMEOUT_S = 15.0
#: One HTTP request's limit for the patient commands (MLflow's default is 120 s): a server that
#: accepts and never answers is announced after this long, then retried (7 times, backing off).
PATIENT_REQUEST_TIMEOUT_S = 30


def _bound_store_requests() -> None:
    """Bound what one MLflow HTTP request may take (MLflow's defaults, 120 s x 7 retries with
    backoff, leave a dead server silent for minutes); the user's own MLFLOW_HTTP_* settings win."""
    import math
    import os

    try:
        timeout = str(math.ceil(float(os.environ.get(ENV_STORE_TIMEOUT, STORE_TIMEOUT_S))))
    except ValueError:
        return  # _store_timeout() reports it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", timeout)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _patient_store_requests() -> None:
    """run-grid, train: MLflow's retries (7, backing off up to 2 min) ride out a server restart,
    but one request waits at most :data:`PATIENT_REQUEST_TIMEOUT_S` before its retry is announced;
    the user's own MLFLOW_HTTP_REQUEST_TIMEOUT wins."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(PATIENT_REQUEST_TIMEOUT_S))


def _store_timeout() -> float:
    import os

    try:
        return max(0.5, float(os.environ.get(ENV_STORE_TIMEOUT, STORE_TIMEOUT_S)))
    except ValueError:
        fail(f"{ENV_STORE_TIMEOUT}={os.environ[ENV_STORE_TIMEOUT]!r} is not a number of seconds")
        raise  # unreachable


# --- generate (data layer) ------------------------------------------------------------------

#: DatasetSpec field -> the `repro generate` option that sets it (for one-line errors).
_GENERATE_OPTIONS = {
    "pde": "--pde", "low/high": "--range", "low": "--range", "high": "--range", "resolution": "--resolution",
    "n_train": "--n-train", "n_val": "--n-val", "n_test": "--n-test", "seed": "--seed",
}


def _parse_int(option: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        fail(f"{option} = {text!r} is invalid: expected an integer")
        raise  # unreachable: fail() exits


def _parse_range(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    parts = text.split(",")
    if len(parts) != 2:
        fail(f"--range = {text!r} is invalid: expected two numbers LOW,HIGH (e.g. 5,10)")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        fail(f"--range = {text!r} is invalid: expected two numbers LOW,HIGH (e.g. 5,10)")
        raise


@app.command()
def generate(
    pde: str = typer.Option(..., "--pde", metavar="PDE", help="poisson | advdiff | helmholtz | mixed"),
    range_: str = typer.Option(None, "--range", metavar="LOW,HIGH",
                               help="physics-parameter range: e (poisson), Psi (advdiff), integer omega "
                                    "(helmholtz); leave out for mixed"),
    n_train: str = typer.Option("32768", "--n-train", metavar="INT", help="training samples"),
    n_val: str = typer.Option("4096", "--n-val", metavar="INT", help="validation samples"),
    n_test: str = typer.Option("4096", "--n-test", metavar="INT", help="test samples"),
    resolution: str = typer.Option("128", "--resolution", metavar="INT", help="grid size n (n x n, even, >= 8)"),
    seed: str = typer.Option("0", "--seed", metavar="INT", help="dataset seed"),
    out: str = typer.Option(None, "--out", metavar="DIR", help="data directory [default: $REPRO_DATA_DIR or .repro/data]"),
) -> None:
    """Generate (or verify and reuse) the train/val/test splits of one dataset.

    Files are content-addressed and verified by hash; a bad file is reported and rebuilt.

    Example:  repro generate --pde poisson --range 5,10 --n-train 32768 --n-val 4096 --n-test 4096 --resolution 128 --seed 1 --out data/
    """
    import os
    import re
    from pathlib import Path

    from repro.config import SPLITS, DatasetSpec, SpecError

    low, high = _parse_range(range_)
    sizes = {name: _parse_int(opt, text) for name, opt, text in (
        ("n_train", "--n-train", n_train), ("n_val", "--n-val", n_val), ("n_test", "--n-test", n_test),
        ("resolution", "--resolution", resolution), ("seed", "--seed", seed))}
    try:
        spec = DatasetSpec(pde=pde, low=low, high=high, **sizes)
    except SpecError as err:
        match = re.match(r"data\.([\w/]+)", str(err))
        option = _GENERATE_OPTIONS.get(match.group(1), "") if match else ""
        fail(f"{option}: {err}" if option else str(err))
        return
    from repro.data import DataError, default_data_dir, ensure_split

    data_dir = Path(out) if out else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        fail(f"--out = {str(data_dir)!r} is not a writable directory ({err.strerror or err})")
    for split in SPLITS:
        try:
            path = ensure_split(spec, split, data_dir, progress=True)
            digest = _hash_of(path)
        except (DataError, OSError, RuntimeError, ValueError) as err:
            fail(f"{spec.label} {split}: {err}")
            return
        typer.echo(f"{split:5s} {path}  sha256:{digest}")


def _hash_of(path: object) -> str:
    """The content hash recorded in a (just verified) split file."""
    import h5py

    with h5py.File(path, "r") as h5:
        return str(h5.attrs["content_hash"])



# --- train (training engine) ----------------------------------------------------------------


def _check_precision(precision: str, device: str, fast: bool | None) -> None:
    """One-line refusal of a precision the runs cannot use (before any data or run is made)."""
    if precision == "fp32":
        return  # always valid; no torch import for the default (a SLURM login node may lack torch)
    from repro.models.fno import check_precision, resolve_spectral

    try:
        check_precision(precision, device, resolve_spectral(fast, device))
    except ValueError as err:
        fail(f"--precision: {err}")


def _check_compile(mode: str) -> None:
    """One-line refusal of an unknown ``--compile`` mode (torch-free)."""
    from repro.compilation import check_compile_mode

    try:
        check_compile_mode(mode)
    except ValueError as err:
        fail(f"--compile: {err}")


def autodetect_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (``repro train``; run-grid resolves its own
    device with :func:`repro.grid.resources.resolve`)."""
    from repro.grid.local import gpu_count

    return "cuda" if gpu_count() else "cpu"


@app.command()
def train(
    pde: str = typer.Option(..., help="poisson | advdiff | helmholtz | mixed"),
    range_: str = typer.Option(None, "--range", help="physics-parameter range LOW,HIGH (not for mixed)"),
    arm: str = typer.Option("scratch", help="scratch | transfer | zero_shot"),
    from_: str = typer.Option(None, "--from", help="pre-trained run_key or checkpoint path (transfer, zero_shot)"),
    n_train: int = typer.Option(None, help="training subset size N (default: the whole training split)"),
    model: str = typer.Option(None, help="model size: xxs, xxs-m8, xs, xs-m8, s, m, l, xl (default: xs on a CPU, "
                                          "l on a GPU)"),
    lr: float = typer.Option(1e-3, help="learning rate (Adam, cosine decay to 0)"),
    epochs: int = typer.Option(None, help="epochs (default: 100 on a CPU, the paper's 500 on a GPU)"),
    seed: int = typer.Option(0, help="initialisation, subset and shuffling seed"),
    batch_size: int = typer.Option(None, help="batch size, min(batch, N) is used (default: 32 on a CPU, 128 on a GPU)"),
    eval_every: int = typer.Option(1, help="validate every k epochs"),
    layout: str = typer.Option(None, help="coefficient layout: native | mixed (default: the checkpoint's, else native)"),
    resolution: int = typer.Option(None, help="grid size n (n x n) (default: 32 on a CPU, the paper's 128 on a GPU)"),
    sizes: str = typer.Option(None, help="dataset split sizes TRAIN,VAL,TEST (default: 1024,128,128 on a CPU, "
                                         "the paper's 32768,4096,4096 on a GPU)"),
    data_seed: int = typer.Option(0, help="dataset seed (as `repro generate --seed` and grids' data_seed)"),
    device: str = typer.Option(None, help="cpu | cuda | cuda:K (default: cuda if available)"),
    fast: bool = typer.Option(None, "--fast/--reference", help="spectral path (default: fastest on the device)"),
    precision: str = typer.Option("fp32", "--precision", metavar="fp32|bf16",
                                  help="forward precision: fp32 (default, every device) or bf16 (CUDA and the fast "
                                       "path only; autocast, ~5e-3 error floor vs fp32: see benchmarks/bench_train.py "
                                       "--sections bf16)"),
    compile_mode: str = typer.Option("auto", "--compile", metavar="auto|on|off",
                                 help="torch.compile the training forward: auto (CPU units long enough to pay for "
                                      "a compilation: 1.2-1.4x faster training on 2 cores), on, off"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else ./.repro/mlflow.db)"),
    data_dir: str = typer.Option(None, help="dataset cache (default: $REPRO_DATA_DIR or ./.repro/data)"),
) -> None:
    """Train (or evaluate) one FNO run and record it in MLflow.

    Examples:

      repro train --pde poisson --range 1,5 --resolution 32 --sizes 512,64,64 --model xs --epochs 50

      repro train --pde poisson --range 5,10 --arm transfer --from 3f2a9c0d1e4b5a67 --n-train 64 --model m --lr 1e-3

      repro train --pde poisson --range 5,10 --arm zero_shot --from path/to/model.pt

      repro train --pde poisson --range 1,5 --model s --device cuda --precision bf16   # explicit bf16 (default fp32)
    """
    from pathlib import Path

    from repro.config import DatasetSpec, RunSpec, SpecError
    from repro import tracking

    uri = tracking_uri or tracking.default_tracking_uri()
    _require_store(uri, must_exist=False)
    device = device or autodetect_device()
    _check_precision(precision, device, fast)
    _check_compile(compile_mode)
    defaults = _TRAIN_DEFAULTS["cpu" if device == "cpu" else "cuda"]
    chosen = {"model": model, "epochs": epochs, "batch_size": batch_size, "resolution": resolution, "sizes": sizes}
    if any(v is None for v in chosen.values()):
        typer.echo(f"defaults for {device}: " + ", ".join(f"--{k.replace('_', '-')} {defaults[k]}"
                                                         for k, v in chosen.items() if v is None), err=True)
    model, epochs, batch_size, resolution, sizes = (defaults[k] if v is None else v for k, v in chosen.items())
    try:
        n_tr, n_va, n_te = (int(x) for x in sizes.split(","))
    except ValueError:
        fail(f"--sizes {sizes!r} is invalid: expected three integers TRAIN,VAL,TEST such as 512,64,64")
    low, high = _parse_range(range_)
    checkpoint = None
    if arm != "scratch":
        if not from_:
            fail(f"--from is required for --arm {arm}: a pre-trained run_key or checkpoint path")
        from repro.models.checkpoint import CheckpointError
        from repro.train import pretrained

        if not Path(from_).expanduser().is_file() and not pretrained.is_run_key(from_):  # before the store is touched
            fail(f"--from {from_!r}: no such checkpoint file, and not a run_key (16 hex digits)")
        try:
            tracking.init_store(uri)
            checkpoint = pretrained.load_pretrained(from_, uri)  # a damaged cached copy is fetched again
        except (pretrained.CheckpointNotFound, CheckpointError) as err:
            fail(str(err))
    if layout is None:
        layout = "mixed" if pde == "mixed" or (checkpoint and checkpoint.meta.get("layout") == "mixed") else "native"
    try:
        data = DatasetSpec(pde=pde, low=low, high=high, resolution=resolution, n_train=n_tr, n_val=n_va,
                           n_test=n_te, seed=data_seed)
        zero = arm == "zero_shot"
        spec = RunSpec(arm=arm, data=data, model=model, layout=layout, n_train=0 if zero else (n_train or n_tr),
                       lr=0.0 if zero else lr, epochs=0 if zero else epochs, seed=seed, batch_size=batch_size,
                       eval_every=eval_every, init_from=from_ if arm != "scratch" else None)
    except SpecError as err:
        fail(str(err))
    if checkpoint is not None and checkpoint.model_spec.in_channels != spec.model_spec.in_channels:
        fail(f"checkpoint {from_} takes {checkpoint.model_spec.in_channels} input channels but {data.label} "
             f"in layout {layout} gives {spec.model_spec.in_channels}")
    from repro.data import default_data_dir, ensure_split
    from repro.execution import RunContext
    from repro.grid.resources import memory_problem
    from repro.train.engine import execute

    memory = memory_problem([spec], slots=1, remote=False)
    if memory is not None and memory[1]:
        fail(memory[0])
    typer.echo(_cost_line(spec, device), err=True)
    root = Path(data_dir) if data_dir else default_data_dir()
    for split in ("train", "val", "test"):  # generated here, with a progress bar, if not cached
        ensure_split(data, split, root, progress=True)
    context = RunContext(tracking_uri=uri, data_dir=Path(data_dir) if data_dir else None, device=device, fast=fast,
                         precision=precision, compile_mode=compile_mode)
    (outcome,) = execute([spec], context, progress=True)
    if outcome.status != "FINISHED":
        fail(f"run {outcome.run_key} FAILED: {outcome.failure_reason}", code=1)
    typer.echo(f"run_key {outcome.run_key}  mlflow run {outcome.run_id}  test rel L2 {outcome.test_rel_l2:.4g}"
               f"  ({outcome.wall_seconds:.1f} s)")


#: `repro train`'s defaults per device: a minimal command on a CPU is a minutes-long run, on a GPU
#: the paper's setting (model l, 500 epochs, 128^2, 32,768 / 4,096 / 4,096 samples).
_TRAIN_DEFAULTS = {
    "cpu": {"model": "xs", "epochs": 100, "batch_size": 32, "resolution": 32, "sizes": "1024,128,128"},
    "cuda": {"model": "l", "epochs": 500, "batch_size": 128, "resolution": 128, "sizes": "32768,4096,4096"},
}
#: The rate the cost line assumes on a CPU: what one core reached on the fused path
#: (benchmarks/bench_train.py, model s at 32^2: 29 % of a 127 GFLOP/s SGEMM peak).
_CPU_FLOPS_PER_S = 35e9


def _cost_line(spec, device: str) -> str:
    """One line of what a run will cost before it starts (steps, analytic FLOPs, a CPU time)."""
    import math

    from repro.flops import forward_flops

    if spec.arm == "zero_shot":
        return "cost: evaluation only (zero-shot)"
    n = spec.n_train or spec.data.n_train
    steps = spec.epochs * math.ceil(n / min(spec.batch_size, n))
    flops = 3.0 * forward_flops(spec.model_spec, spec.data.resolution, "fast") * spec.epochs * n
    line = (f"cost: {spec.epochs:,} epochs x {math.ceil(n / min(spec.batch_size, n)):,} steps = {steps:,} steps "
            f"on N = {n:,} at {spec.data.resolution}^2, ~{flops:.2g} FLOPs (model {spec.model})")
    if device == "cpu":
        from repro.grid.console import hms

        line += f"; about {hms(flops / _CPU_FLOPS_PER_S)} on one CPU core at {_CPU_FLOPS_PER_S / 1e9:.0f} GFLOP/s"
    return line


# --- run-grid / status / ui (grid launcher) -------------------------------------------------


def _require_store(uri: str, *, must_exist: bool = True) -> str:
    """Fail fast and clearly on a store that cannot answer, and return the URI to read.

    A tracking server that refuses or is silent is probed with one bounded request.  With
    ``must_exist`` (the commands that only read) a SQLite file must exist — MLflow would create an
    empty one and every count would read 0; the usual cause is running from another folder or
    REPRO_HOME — and a store in a read-only folder is read from a temporary copy (SQLite cannot
    open a WAL-mode database there).  Without it (run-grid, train, ui: they write) a read-only
    store is refused with the reason.
    """
    from repro.tracking import is_tracking_server, sqlite_path

    if is_tracking_server(uri):
        _probe_server(uri)
        return uri

    path = sqlite_path(uri)
    if path is None:
        return uri
    if must_exist and not path.exists():
        fail(f"no MLflow store at {path} (nothing has run with this store yet): pass --tracking-uri, set "
             f"REPRO_HOME or REPRO_TRACKING_URI, or run `repro run-grid` first")
    if not _writable(path):
        if not must_exist:
            fail(f"the MLflow store {path} is read-only (its folder or file cannot be written): nothing can be "
                 f"recorded there; `repro export` it elsewhere or pass a writable --tracking-uri")
        return _read_only_copy(path)
    return uri


def _writable(db: Path) -> bool:
    import os

    folder = db.parent if db.parent.exists() else next((p for p in db.parents if p.exists()), Path("/"))
    return os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def _read_only_copy(db: Path) -> str:
    """A temporary copy of a read-only SQLite store (with its WAL, replayed on open)."""
    import atexit
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="repro-readonly-"))
    atexit.register(shutil.rmtree, tmp, True)
    for suffix in ("", "-wal"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            shutil.copy2(src, tmp / src.name)
    typer.echo(f"note: {db} is read-only; reading a temporary copy of it", err=True)
    return f"sqlite:///{tmp / db.name}"


def _probe_server(uri: str) -> None:
    import socket
    import urllib.error
    import urllib.request

    timeout = _store_timeout()
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answers (a proxy without /health, say): the calls themselves will tell
    except (TimeoutError, socket.timeout):
        fail(f"MLflow server {uri} accepted the connection but did not answer within {timeout:g} s "
             f"({ENV_STORE_TIMEOUT} sets the limit)")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            fail(f"MLflow server {uri} did not answer within {timeout:g} s ({ENV_STORE_TIMEOUT} sets the limit)")
        fail(f"MLflow server {uri} cannot be reached: {reason}")


def _next_steps(grid: str, uri: str, explicit_uri: bool) -> str:
    where = f" --tracking-uri {uri}" if explicit_uri else ""
    return f"next: repro fit-laws --grid {grid}{where}   then   repro report --grid {grid}{where}"


def _load_plan(grid: str):
    from repro.config import SpecError
    from repro.grid.plan import load_plan

    try:
        return load_plan(grid)
    except SpecError as err:
        fail(str(err))


@app.command("run-grid")
def run_grid_cmd(
    grid: str = typer.Option("quick", "--grid", help="shipped grid name (runs/NAME.toml) or path to a TOML file"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, what is finished and the estimated cost; run nothing"),
    workers: int = typer.Option(None, help="parallel workers (default: CPU cores, or GPUs x --runs-per-gpu)"),
    device: str = typer.Option(None, help="cpu | cuda (default: cuda if available; with --executor slurm, "
                                          "cuda when --gpus-per-task > 0: the compute nodes' device)"),
    runs_per_gpu: int = typer.Option(1, help="worker slots per GPU"),
    max_members: int = typer.Option(DEFAULT_MAX_MEMBERS, help="at most this many runs trained together as one ensemble (1: no batching)"),
    executor: str = typer.Option("local", help="local | slurm"),
    partition: str = typer.Option(None, help="SLURM partition"),
    time_limit: int = typer.Option(240, "--time", help="SLURM time limit per array task, minutes"),
    gpus_per_task: int = typer.Option(None, help="SLURM GPUs per array task (default: 1 with --device cuda, 0 with "
                                                 "cpu; an array task runs one worker per GPU it gets)"),
    array_parallelism: int = typer.Option(16, help="SLURM: at most this many array tasks at once"),
    slurm_tasks: int = typer.Option(None, help="SLURM array size (default: one task per unit, at most 256)"),
    slurm_folder: str = typer.Option(None, help="SLURM logs and scripts (default: <REPRO_HOME>/slurm)"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else ./.repro/mlflow.db)"),
    data_dir: str = typer.Option(None, help="dataset cache (default: $REPRO_DATA_DIR or ./.repro/data)"),
    fast: bool = typer.Option(None, "--fast/--reference", help="spectral path (default: fastest on the device)"),
    precision: str = typer.Option("fp32", "--precision", metavar="fp32|bf16",
                                  help="forward precision: fp32 (default, every device) or bf16 (CUDA and the fast "
                                       "path only; autocast, ~5e-3 error floor vs fp32: see benchmarks/bench_train.py "
                                       "--sections bf16)"),
    compile_mode: str = typer.Option("auto", "--compile", metavar="auto|on|off",
                                 help="torch.compile the training forward: auto (CPU units long enough to pay for "
                                      "a compilation: 1.2-1.4x faster training on 2 cores), on, off"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="dry run: time a few steps per model size for the estimate"),
    stale_after: float = typer.Option(600.0, help="seconds without a heartbeat before a remote RUNNING run counts as dead"),
) -> None:
    """Run a grid of pre-training, fine-tuning, scratch and zero-shot runs, resumably.

    FINISHED runs are skipped; failed, killed, missing and stale runs are run (again).  Exit
    status 1 when any run failed.

    Examples:

      repro run-grid                                  # the quick CPU grid

      repro run-grid --grid quick --dry-run           # plan, progress so far, estimated cost

      repro run-grid --grid gpu-demo --device cuda --runs-per-gpu 2

      repro run-grid --grid gpu-demo --device cuda --precision bf16   # explicit bf16 (default fp32)

      repro run-grid --grid paper-e1 --executor slurm --partition gpu --time 720 --tracking-uri http://head:5000
    """
    from pathlib import Path

    from repro import tracking
    from repro.execution import RunContext
    from repro.grid import console, launcher, resources

    plan = _load_plan(grid)
    uri = tracking_uri or tracking.default_tracking_uri()
    _require_store(uri, must_exist=False)
    try:
        where = resources.resolve(executor=executor, device=device, workers=workers, runs_per_gpu=runs_per_gpu,
                                  max_members=max_members, gpus_per_task=gpus_per_task,
                                  array_parallelism=array_parallelism)
    except resources.ResourceError as err:
        fail(str(err))
    device, slots = where.device, where.slots
    _check_precision(precision, device, fast)
    _check_compile(compile_mode)
    context = RunContext(tracking_uri=uri, data_dir=Path(data_dir) if data_dir else None, device=device,
                         fast=fast, precision=precision, compile_mode=compile_mode, max_members=max_members)
    try:
        if dry_run:
            from repro.grid.dryrun import DryRunOptions, dry_run as print_dry_run

            print_dry_run(plan, DryRunOptions(
                context, slots=slots, threads=where.threads, calibrate=calibrate, device_here=where.device_here,
                remote=where.remote, stale_after=stale_after), echo=typer.echo, warn=lambda line: typer.echo(line, err=True))
            return
        slurm = None
        if executor == "slurm":
            from repro.grid.slurm import SlurmOptions

            slurm = SlurmOptions(partition=partition, time_min=time_limit, gpus_per_task=where.gpus_per_task,
                                 array_parallelism=array_parallelism, tasks=slurm_tasks,
                                 folder=Path(slurm_folder) if slurm_folder else tracking.repro_home() / "slurm")
        opts = launcher.Options(context, workers=slots, runs_per_gpu=runs_per_gpu, executor=executor, slurm=slurm,
                                stale_after=stale_after)
        from repro.grid.estimate import eta_weights

        def costs(units):  # per-unit weights for the live ETA
            return eta_weights(units, device=device, fast=fast, compile_mode=compile_mode)

        typer.echo(f"grid {plan.grid.label}: {len(plan)} runs; reading what {uri} holds of them ...", err=True)
        out = launcher.run_grid(plan, opts, costs=costs if executor == "local" else None)
    except KeyboardInterrupt:
        fail("interrupted; running runs were marked KILLED and will run again next time", code=130)
    except (tracking.StoreError, resources.ResourceError) as err:
        fail(str(err))
    typer.echo(console.outcome_text(out, plan))
    if not out.ok:
        raise typer.Exit(1)
    if out.complete == out.total:
        typer.echo(_next_steps(grid, uri, tracking_uri is not None))


@app.command()
def status(
    grid: str = typer.Option("quick", "--grid", help="shipped grid name or path to a TOML file"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else ./.repro/mlflow.db)"),
) -> None:
    """Summarise a grid from MLflow: completion per axis, failures with their reasons.

    Example:

      repro status --grid quick
    """
    from repro.grid import console, launcher
    from repro import tracking

    plan = _load_plan(grid)
    uri = tracking_uri or tracking.default_tracking_uri()
    uri = _require_store(uri)
    try:
        rep = launcher.grid_status(plan, uri)
    except tracking.StoreError as err:
        fail(str(err))
    typer.echo(f"store: {uri}")
    typer.echo(console.status_text(rep))


#: How long `repro ui` waits for the MLflow server to answer (a first start took 88 s on a busy machine).
_UI_START_S = 300.0


@app.command()
def ui(
    port: int = typer.Option(5000, min=1, max=65535, help="port on 127.0.0.1"),
    tracking_uri: str = typer.Option(None, help="MLflow store (default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else ./.repro/mlflow.db)"),
) -> None:
    """Open the MLflow UI over the project's store on http://127.0.0.1:PORT, on the runs page.

    Prints "starting ..." at once and the runs page's address when the UI answers; Ctrl-C stops it.

    Example:

      repro ui --port 5000
    """
    import os
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    from repro import tracking

    uri = tracking_uri or tracking.default_tracking_uri()
    if uri.startswith("http"):
        fail(f"{uri} is already an MLflow server: open it in a browser")
    _require_store(uri, must_exist=False)
    experiment = tracking.init_store(uri)
    try:
        tracking.mark_experiment_kind(uri)  # the UI then opens on runs, not on GenAI traces
        view = "?" + tracking.set_runs_view(uri)  # ... with the grid's key columns shown
    except Exception as err:  # noqa: BLE001 - e.g. a read-only store: the UI still shows it
        view = ""
        typer.echo(f"note: could not store the runs view in {uri} ({str(err).splitlines()[0][:120]}); "
                   "the UI opens with MLflow's default columns", err=True)
    exe = shutil.which("mlflow")
    cmd = [exe] if exe else [sys.executable, "-m", "mlflow"]
    cmd += ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    import socket

    with socket.socket() as probe:  # another server on the port would answer /health for us
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} on 127.0.0.1 is in use: choose another with --port")
    base = f"http://127.0.0.1:{port}"
    typer.echo(f"starting the MLflow UI over {uri} (the first start can take a minute) ...")
    import signal

    def stop(signum: int, frame: object) -> None:  # `kill` stops the server with the command
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # its own process group: the server's workers are stopped with it (os.killpg below)
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + _UI_START_S
    try:
        while proc.poll() is None:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    fail(f"the MLflow UI did not answer on {base} within {_UI_START_S:.0f} s")
                time.sleep(0.5)
        if proc.poll() is not None:
            fail(f"the MLflow UI exited with status {proc.returncode} (is port {port} in use? try --port)")
        typer.echo(f"MLflow UI ready: {base}/#/experiments/{experiment}/runs{view}   (Ctrl-C stops it; the "
                   "page lists the training runs by name; clear the search box to see each grid "
                   "invocation's parent run too.  MLflow opens its Assistant panel on a browser's first "
                   "visit: close it with x, it stays closed)")
        if proc.wait() != 0:
            raise typer.Exit(proc.returncode)
    except KeyboardInterrupt:
        pass
    finally:  # never leave the server behind (a failed start, Ctrl-C, SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@app.command()
def export(
    grid: str = typer.Option("quick", "--grid", help="shipped grid name or path to a TOML file"),
    to: str = typer.Option(..., "--to", help="new SQLite file to write (never overwritten), e.g. reports/NAME/mlflow.db"),
    tracking_uri: str = typer.Option(None, help="MLflow store to read (default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else ./.repro/mlflow.db)"),
    artifacts: bool = typer.Option(False, "--artifacts/--no-artifacts", help="copy checkpoints and figures too"),
) -> None:
    """Copy one grid's runs into a new, portable SQLite MLflow store.

    Every run of the grid's plan (failed ones too) with tags, params, full metric histories and
    statuses, plus the grid's parent runs; status, fit-laws, report and ui work on the copy.

    Examples:

      repro export --grid gpu-demo --to reports/gpu-demo/mlflow.db

      repro export --grid paper-e1 --tracking-uri http://head:5000 --to e1.db --artifacts

      repro fit-laws --grid gpu-demo --tracking-uri sqlite:///reports/gpu-demo/mlflow.db
    """
    from rich.progress import Progress

    from repro.grid import export as export_mod
    from repro import tracking

    plan = _load_plan(grid)
    uri = tracking_uri or tracking.default_tracking_uri()
    uri = _require_store(uri)
    try:
        with Progress(transient=True) as bar:
            job = bar.add_task(f"exporting {plan.grid.label}", total=None)
            result = export_mod.export_grid(plan, uri, Path(to), artifacts=artifacts,
                                            on_run=lambda: bar.advance(job))
    except tracking.StoreError as err:
        fail(str(err))
    typer.echo(f"exported {result.n_runs} runs and {result.n_parents} grid invocation(s) of {plan.grid.label} "
               f"to {result.path} (open with --tracking-uri sqlite:///{result.path})")


# --- fit-laws / report (analysis) -----------------------------------------------------------

from pathlib import Path  # noqa: E402  - kept in this section; typer resolves the annotations below
from typing import Optional  # noqa: E402

_GRID_HELP = ("Only runs of this grid: a shipped grid name or a grid TOML selects the run_keys of its plan (and runs "
              "tagged with the name), so runs shared with another grid count; any other name selects by the MLflow "
              "'grid' tag. Default: every grid in the store.")
_URI_HELP = "MLflow tracking URI. Default: $REPRO_TRACKING_URI, then $MLFLOW_TRACKING_URI, else sqlite:///<$REPRO_HOME or ./.repro>/mlflow.db."
_BOOT_HELP = "Bootstrap replicates per fitted curve (0: no intervals)."


def _analysis_command(which: str, grid: str | None, tracking_uri: str | None, out: Path | None,
                      n_boot: int) -> None:
    from repro.threads import limit_before_import

    limit_before_import(1)  # before numpy is imported: the fits are latency-bound (repro.threads)
    from analysis import commands
    from analysis.collect import StoreError, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    uri = _require_store(uri)
    try:
        getattr(commands, which)(uri, grid, out, n_boot=n_boot,
                                 keys=_grid_keys(grid))
    except StoreError as err:
        fail(str(err))


def _grid_keys(grid: str | None) -> dict[str, str] | None:
    """The run_keys of ``grid``'s plan, each with the role the plan gives it, when it loads as a
    grid spec (shipped name or TOML path); else ``None``: the analysis then selects by the ``grid``
    tag alone (e.g. a grid whose TOML is gone) and reads each run's role off its tag."""
    if grid is None:
        return None
    from repro.config import SpecError
    from repro.grid import load_plan

    try:
        return load_plan(grid).roles
    except (SpecError, OSError):
        return None


@app.command("fit-laws")
def fit_laws(
    grid: Optional[str] = typer.Option(None, "--grid", help=_GRID_HELP),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=_URI_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder. Default: <REPRO_HOME>/reports/<grid or 'all'> (./.repro/reports/...)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help=_BOOT_HELP),
) -> None:
    """Fit scaling laws, transfer metrics and the paper's claims; print tables, write CSV/JSON.

    Picks the learning rate per (task, shift, model, N, arm, seed) on validation error and fits err(N) = E + A*N^-alpha per curve with bootstrap intervals (and the joint N x P law where >= 3 model sizes exist).

    Writes fits.csv, joint_fits.csv, multiplier.csv, d_t.csv, transfer_summary.csv, benefit.csv, zero_shot.csv, mixed.csv, selected_runs.csv, exclusions.csv and analysis.json. Cells with too few points are listed as skipped; the rest is still fitted.

    Examples:

        repro fit-laws --grid quick

        repro fit-laws --tracking-uri sqlite:///runs/mlflow.db --out reports/e1
    """
    _analysis_command("fit_laws", grid, tracking_uri, out, n_boot)


@app.command("report")
def report(
    grid: Optional[str] = typer.Option(None, "--grid", help=_GRID_HELP),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=_URI_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for index.html. Default: <REPRO_HOME>/reports/<grid or 'all'> (./.repro/reports/...)."),
    n_boot: int = typer.Option(200, "--n-boot", min=0, help=_BOOT_HELP),
) -> None:
    """Render one self-contained HTML report (figures embedded; opens without network).

    Sections: the paper's claims beside ours, error vs N per shift and model size with fitted curves and bands, multiplier vs error level, D_T(N), benefit vs model size, the OOD ladder, mixed pre-training, the fit table, and provenance (grids, commits, exclusions with reasons, the MLflow run behind every point).

    Examples:

        repro report --grid quick

        repro report --grid paper-e1 --out reports/paper-e1
    """
    _analysis_command("report", grid, tracking_uri, out, n_boot)



if __name__ == "__main__":  # pragma: no cover
    main()
