"""Grid launcher: TOML grids -> plans of RunSpecs -> runs in MLflow, resumably (local pool or SLURM).

Public API::

    load_plan(name_or_path) -> Plan          # runs/<name>.toml or a path, validated and expanded (SpecError)
    load_grid(name_or_path) -> GridSpec      # the same, the GridSpec only
    expand(grid) -> Plan                     # pure, deterministic; stable run_keys
    run_grid(plan, Options(RunContext(tracking_uri), workers=...)) -> GridOutcome
    grid_status(plan, tracking_uri) -> StatusReport
"""

from repro.execution import RunContext
from repro.grid.launcher import GridOutcome, Options, StatusReport, grid_status, run_grid, survey
from repro.grid.plan import Plan, PlannedRun, Unit, expand, load_grid, load_plan, parse_grid
from repro.grid.spec import GridSpec, shipped_grids

__all__ = ["GridOutcome", "GridSpec", "Options", "Plan", "PlannedRun", "RunContext", "StatusReport", "Unit", "expand",
           "grid_status", "load_grid", "load_plan", "parse_grid", "run_grid", "shipped_grids", "survey"]
