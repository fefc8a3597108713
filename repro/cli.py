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


# --- run-grid / status / ui (grid launcher) -------------------------------------------------


# --- fit-laws / report (analysis) -----------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    app()
