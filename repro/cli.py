"""The ``repro`` command line: parses options, builds specs, calls one library function each.

Heavy imports (torch, mlflow, plotnine) happen inside the commands so that ``repro --help``
stays instant and the analysis commands run without torch installed.
"""

from __future__ import annotations

import typer

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


# --- generate (data layer) ------------------------------------------------------------------


# --- train (training engine) ----------------------------------------------------------------


def parse_range(text: str, option: str = "--range") -> tuple[float, float]:
    """``"5,10"`` -> (5.0, 10.0); a one-line error naming the option otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        fail(f"{option} {text!r} is invalid: expected two numbers LOW,HIGH such as 5,10")
    return low, high


def autodetect_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (only the CLI autodetects)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command()
def train(
    pde: str = typer.Option(..., help="poisson | advdiff | helmholtz | mixed"),
    range_: str = typer.Option(None, "--range", help="physics-parameter range LOW,HIGH (not for mixed)"),
    arm: str = typer.Option("scratch", help="scratch | transfer | zero_shot"),
    from_: str = typer.Option(None, "--from", help="pre-trained run_key or checkpoint path (transfer, zero_shot)"),
    n_train: int = typer.Option(None, help="training subset size N (default: the whole training split)"),
    model: str = typer.Option("l", help="model size: xxs, xs, s, m, l, xl"),
    lr: float = typer.Option(1e-3, help="learning rate (Adam, cosine decay to 0)"),
    epochs: int = typer.Option(500, help="epochs"),
    seed: int = typer.Option(0, help="initialisation, subset and shuffling seed"),
    batch_size: int = typer.Option(128, help="batch size (min(batch, N) is used)"),
    eval_every: int = typer.Option(1, help="validate every k epochs"),
    layout: str = typer.Option(None, help="coefficient layout: native | mixed (default: the checkpoint's, else native)"),
    resolution: int = typer.Option(128, help="grid size n (n x n)"),
    sizes: str = typer.Option("32768,4096,4096", help="dataset split sizes TRAIN,VAL,TEST"),
    data_seed: int = typer.Option(1, help="dataset seed"),
    device: str = typer.Option(None, help="cpu | cuda | cuda:K (default: cuda if available)"),
    fast: bool = typer.Option(None, "--fast/--reference", help="spectral path (default: fastest on the device)"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: $REPRO_TRACKING_URI or ./.repro/mlflow.db)"),
    data_dir: str = typer.Option(None, help="dataset cache (default: $REPRO_DATA_DIR or ./.repro/data)"),
) -> None:
    """Train (or evaluate) one FNO run and record it in MLflow.

    Examples:

      repro train --pde poisson --range 1,5 --resolution 32 --sizes 512,64,64 --model xs --epochs 50

      repro train --pde poisson --range 5,10 --arm transfer --from 3f2a9c0d1e4b5a67 --n-train 64 --model m --lr 1e-3

      repro train --pde poisson --range 5,10 --arm zero_shot --from path/to/model.pt
    """
    from pathlib import Path

    from repro.config import DatasetSpec, RunSpec, SpecError
    from repro.train import tracking

    uri = tracking_uri or tracking.default_tracking_uri()
    try:
        n_tr, n_va, n_te = (int(x) for x in sizes.split(","))
    except ValueError:
        fail(f"--sizes {sizes!r} is invalid: expected three integers TRAIN,VAL,TEST such as 512,64,64")
    low, high = parse_range(range_) if range_ else (None, None)
    checkpoint = None
    if arm != "scratch":
        if not from_:
            fail(f"--from is required for --arm {arm}: a pre-trained run_key or checkpoint path")
        from repro.models.checkpoint import CheckpointError, load_checkpoint

        try:
            tracking.init_store(uri)
            checkpoint = load_checkpoint(tracking.resolve_checkpoint(from_, uri))
        except (tracking.CheckpointNotFound, CheckpointError) as err:
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
    from repro.train.engine import execute

    (outcome,) = execute([spec], tracking_uri=uri, data_dir=Path(data_dir) if data_dir else None,
                         device=device or autodetect_device(), fast=fast, progress=True)
    if outcome.status != "FINISHED":
        fail(f"run {outcome.run_key} FAILED: {outcome.failure_reason}", code=1)
    typer.echo(f"run_key {outcome.run_key}  mlflow run {outcome.run_id}  test rel L2 {outcome.test_rel_l2:.4g}"
               f"  ({outcome.wall_seconds:.1f} s)")


# --- run-grid / status / ui (grid launcher) -------------------------------------------------


# --- fit-laws / report (analysis) -----------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    app()
