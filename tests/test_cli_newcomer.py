"""What a newcomer meets first: honest durations, a clear word about an empty store, the phase."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from repro import schema
from repro.cli import app
from repro.grid.console import Progress, hms, task_phase
from repro.grid.worker import DataTask, UnitTask


def test_long_durations_read_in_days_and_years() -> None:
    assert hms(75) == "1:15"
    assert hms(3 * 3600 + 5) == "3:00:05"
    assert hms(47 * 3600) == "47:00:00"
    assert hms(3 * 86400) == "3.0 days"
    assert hms(39375 * 3600) == "4.5 years"  # the paper grid's CPU estimate, once "39375:03:37"


def test_status_export_and_analysis_refuse_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    uri = f"sqlite:///{missing}"
    for args in (["status", "--grid", "quick"], ["export", "--grid", "quick", "--to", str(tmp_path / "x.db")],
                 ["fit-laws"], ["report"]):
        res = CliRunner().invoke(app, [*args, "--tracking-uri", uri])
        assert res.exit_code == 2, (args, res.output)
        assert f"no MLflow store at {missing}" in res.output, res.output
        assert "Traceback" not in res.output
    assert not missing.exists() and not missing.parent.exists()  # nothing was created


def test_progress_names_the_phase_and_waits_for_a_stable_eta() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    prog = Progress("g", total=10, finished_before=0, todo=10, console=console, live=False,
                    costs={f"t{i}": 1.0 for i in range(10)})
    pre = UnitTask("t0", specs=(), roles={"k": schema.ROLE_PRETRAIN})
    prog.start("t0", 1, task_phase(pre))
    prog.start("t1", 4, task_phase(UnitTask("t1", specs=(), roles={"j": schema.ROLE_DOWNSTREAM})))
    assert prog.phase() == "pre-training + fine-tuning"
    assert prog.eta() is None and "after 5% of the work" in prog.eta_text()
    prog.finish("t0", 1, 0)
    assert prog.eta() is None  # one unit done: too early to extrapolate
    prog.finish("t1", 4, 0)
    assert prog.eta() is not None
    console.print(prog.render())
    assert "running 0 runs in 0 units" in console.export_text()
    assert task_phase(DataTask(dataset=None)) == "datasets"  # type: ignore[arg-type]


def test_train_defaults_fit_a_cpu_and_the_cost_is_said_first() -> None:
    from repro.cli import _TRAIN_DEFAULTS, _cost_line
    from repro.config import DatasetSpec, RunSpec

    cpu = _TRAIN_DEFAULTS["cpu"]
    n = int(cpu["sizes"].split(",")[0])
    spec = RunSpec(arm="scratch", data=DatasetSpec(pde="poisson", low=1, high=5, resolution=cpu["resolution"],
                                                 n_train=n, n_val=128, n_test=128),
                   model=cpu["model"], n_train=n, lr=1e-3, epochs=cpu["epochs"], batch_size=cpu["batch_size"])
    line = _cost_line(spec, "cpu")
    assert "100 epochs x 32 steps = 3,200 steps" in line and "on one CPU core" in line, line
    hours = line.rsplit("about ", 1)[1].split(" on one")[0]
    assert ":" in hours and len(hours.split(":")) == 2, line  # minutes, not hours, for the CPU default
    paper = _TRAIN_DEFAULTS["cuda"]
    big = RunSpec(arm="scratch", data=DatasetSpec(pde="poisson", low=1, high=5, resolution=paper["resolution"],
                                                n_train=32768, n_val=4096, n_test=4096),
                  model=paper["model"], n_train=32768, lr=1e-3, epochs=paper["epochs"], batch_size=128)
    assert "days" in _cost_line(big, "cpu") or "years" in _cost_line(big, "cpu")


def test_dry_run_warns_when_a_grid_is_too_big_for_the_machine() -> None:
    from repro.grid import console
    from repro.grid.estimate import Estimate

    # two independent units on two slots run side by side: wall = start-up + one unit
    small = console.cost_text(Estimate(unit_seconds={"u": 3600.0, "v": 3600.0}), slots=2, batch=32)
    big = console.cost_text(Estimate(unit_seconds={"u": 39375 * 3600.0, "v": 39375 * 3600.0}), slots=2, batch=32)
    assert "warning" not in small and "wall time about 1:00:10" in small, small
    assert "warning: about 4.5 years of wall time here" in big, big


def test_paper_grid_dry_run_prints_its_plan_without_torch_and_bounds_its_calibration(tmp_path: Path) -> None:
    """The paper-e2 plan (2,920 runs at 128², sizes up to 67M parameters) prints without torch
    being imported; its cost comes from a calibration bounded in time, the sizes it could not
    afford to time extrapolated by FLOPs and labelled so."""
    import os
    import subprocess
    import sys

    probe = ("import sys\nfrom repro.cli import main\nsys.argv = ['repro', 'run-grid', '--grid', 'paper-e2', '--dry-run', "
             "'--device', 'cpu', '--no-calibrate']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    env = {**os.environ, "REPRO_HOME": str(tmp_path)}
    env.pop("REPRO_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert "grid paper-e2: 2920 runs" in out.stdout, out.stdout + out.stderr
    assert "torch imported: False" in out.stdout
    assert not (tmp_path / "mlflow.db").exists()  # a dry run on a new home writes no store

    from repro.grid import estimate
    from repro.grid.plan import expand
    from repro.grid.plan import load_grid

    plan = expand(load_grid("paper-e2"))
    units = plan.units(device="cpu")
    # 8 s: the probe alone took over 3 s while another suite ran; xl (67M parameters at 128²) is
    # never affordable within it, so it is extrapolated either way
    est = estimate.estimate_units([u for u in units if u.specs[0].model in ("xs", "xl")][:50], budget_s=8.0)
    assert "extrapolated by FLOPs" in est.source and "xl at 128²" in est.source, est.source
    origins = {key[0]: tp.origin for key, tp in est.throughput.items()}
    assert origins["xl"] == "extrapolated by FLOPs"
    per_sample = {key[0]: tp.per_sample for key, tp in est.throughput.items()}
    assert per_sample["xl"] > 10 * per_sample["xs"]  # 67M vs 0.3M parameters: far costlier per sample


def test_analysis_output_goes_beside_the_store_never_beside_a_grid_file(tmp_path: Path, monkeypatch) -> None:
    """`fit-laws --grid /abs/path/g.toml` without --out once wrote into the TOML's own path
    (a FileExistsError traceback): the default folder is $REPRO_HOME/reports/<grid stem>."""
    from analysis.commands import default_out_dir

    monkeypatch.setenv(schema.ENV_HOME, str(tmp_path / "home"))
    grid = tmp_path / "grids" / "my-study.toml"
    assert default_out_dir(str(grid)) == tmp_path / "home" / "reports" / "my-study"
    assert default_out_dir("quick") == tmp_path / "home" / "reports" / "quick"
    assert default_out_dir(None) == tmp_path / "home" / "reports" / "all"
