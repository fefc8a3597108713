"""SLURM executor without a cluster: the generated sbatch script, and a grid through submitit's debug executor."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import write_grid

from repro import schema
from repro.grid.plan import expand
from repro.grid.slurm import SlurmOptions, sbatch_script
from repro.grid.plan import load_grid


def test_sbatch_script_has_the_options(tmp_path):
    opts = SlurmOptions(partition="gpu", time_min=90, gpus_per_task=2, array_parallelism=3, folder=tmp_path,
                        setup=("source /opt/venv/bin/activate",))
    text = sbatch_script(opts, 10, name="quick-downstream")
    assert "#SBATCH --partition=gpu" in text
    assert "#SBATCH --time=90" in text
    assert "#SBATCH --gpus-per-task=2" in text
    assert "#SBATCH --array=0-9%3" in text
    assert "#SBATCH --job-name=quick-downstream" in text
    assert "source /opt/venv/bin/activate" in text
    assert "submitit.core._submit" in text  # each array task runs repro.grid.slurm.array_task via submitit
    assert str(tmp_path) in text


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_grid_through_submitit_debug_executor(tmp_path):
    from repro.grid import store
    from repro.grid.launcher import Options, run_grid
    from repro.execution import RunContext

    grid = write_grid(tmp_path / "g.toml", "slurm-debug", n_train="[8]", up="32", pre_epochs=2, ft_epochs=2)
    plan = expand(load_grid(grid))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = Options(RunContext(tracking_uri=uri, data_dir=tmp_path / "data"), executor="slurm",
                   slurm=SlurmOptions(cluster="debug", folder=tmp_path / "slurm"))
    out = run_grid(plan, opts, live=False)
    assert out.ok and len(out.finished) == len(plan) == 4, out
    states = store.key_states(uri, plan.keys)
    assert Counter(s.status for s in states.values()) == {schema.FINISHED: 4}
    parent = {r.data.tags[schema.T_PARENT_RUN_ID] for s in states.values() for r in s.runs}
    assert parent == {out.parent_run_id}
    # resubmitting pulls nothing: everything is finished
    again = run_grid(plan, opts, live=False)
    assert again.finished == [] and again.finished_before == 4 and again.parent_run_id is None


def test_slurm_from_a_login_node_without_gpus_targets_the_compute_nodes(tmp_path, monkeypatch):
    """--executor slurm on a machine without CUDA: runs go to the nodes' GPUs, not to this CPU."""
    from typer.testing import CliRunner

    import repro.grid.launcher as launcher
    from repro.cli import app

    monkeypatch.setattr("repro.grid.local.gpu_count", lambda: 0)  # a login node, also on a GPU test machine
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen = {}

    def fake_run_grid(plan, opts, costs=None):
        seen.update(device=opts.context.device, workers=opts.workers, slurm=opts.slurm)
        raise KeyboardInterrupt  # stop before submitting anything

    monkeypatch.setattr(launcher, "run_grid", fake_run_grid)
    res = CliRunner().invoke(app, ["run-grid", "--grid", "quick", "--executor", "slurm", "--array-parallelism", "8",
                                   "--tracking-uri", uri, "--slurm-folder", str(tmp_path / "slurm")])
    assert res.exit_code == 130, res.output
    assert seen["device"] == "cuda" and seen["workers"] == 8 and seen["slurm"].gpus_per_task == 1
    res = CliRunner().invoke(app, ["run-grid", "--grid", "quick", "--executor", "slurm", "--gpus-per-task", "0",
                                   "--tracking-uri", uri, "--slurm-folder", str(tmp_path / "slurm")])
    assert seen["device"] == "cpu"
    res = CliRunner().invoke(app, ["run-grid", "--grid", "quick", "--executor", "slurm", "--dry-run",
                                   "--tracking-uri", uri])
    assert res.exit_code == 0 and "to do 42" in res.output and "no CUDA device here to calibrate" in res.output
    res = CliRunner().invoke(app, ["run-grid", "--grid", "quick", "--device", "cuda", "--tracking-uri", uri])
    assert res.exit_code != 0 and "--device cuda but no CUDA device is visible" in res.output  # local needs one
    for args, message in ((["--device", "cuda", "--gpus-per-task", "0"], "the array tasks would have no GPU"),
                          (["--device", "cpu", "--gpus-per-task", "2"], "the GPUs would sit idle"),
                          (["--workers", "4"], "--array-parallelism sets the parallel tasks")):
        res = CliRunner().invoke(app, ["run-grid", "--grid", "quick", "--executor", "slurm", *args, "--tracking-uri", uri])
        assert res.exit_code == 2 and message in res.output, (args, res.output)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_array_task_with_several_devices_runs_a_worker_per_device(tmp_path, monkeypatch):
    """--gpus-per-task 2: an array task spreads its share over a local pool, one worker per GPU.
    Here two CPU slots stand in for the two GPUs (the same pool code, no GPU needed)."""
    import repro.grid.slurm as slurm_mod
    from repro.grid import store
    from repro.grid.launcher import Options, run_grid
    from repro.execution import RunContext
    from repro.grid.local import make_slots

    pools = []

    def two_slots(settings):
        pools.append(settings.context.device)
        return make_slots(device="cpu", workers=2)

    monkeypatch.setattr(slurm_mod, "_allocation_slots", two_slots)
    grid = write_grid(tmp_path / "g.toml", "slurm-pool", n_train="[8, 16]", up="32", pre_epochs=2, ft_epochs=2)
    plan = expand(load_grid(grid))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = Options(RunContext(tracking_uri=uri, data_dir=tmp_path / "data"), executor="slurm",
                   slurm=SlurmOptions(cluster="debug", folder=tmp_path / "slurm", tasks=1))
    out = run_grid(plan, opts, live=False)
    assert out.ok and len(out.finished) == len(plan), out
    assert pools  # every phase's single array task went through the pool
    assert Counter(s.status for s in store.key_states(uri, plan.keys).values()) == {schema.FINISHED: len(plan)}
