"""The cost estimate's machinery: the unit cost model, calibration, rescaling by finished runs."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

from repro.config import DatasetSpec, RunSpec
from repro.grid import estimate
from repro.grid.estimate import Throughput, unit_seconds
from repro.grid.plan import PlannedRun, Unit

DATA = DatasetSpec(pde="poisson", low=5, high=10, resolution=16, n_train=64, n_val=16, n_test=32)


def spec(**kw) -> RunSpec:
    args = dict(arm="scratch", data=DATA, model="xxs", n_train=64, lr=1e-3, epochs=10, batch_size=16)
    args.update(kw)
    return RunSpec(**args)


def unit(s: RunSpec) -> Unit:
    return Unit((PlannedRun(spec=s, role="downstream"),))


def test_unit_cost_model():
    tp = Throughput(latency=0.01, per_sample=1e-3, eval_per_sample=2e-4)
    one = unit_seconds([spec()], tp)
    steps = 10 * math.ceil(64 / 16)
    expect = (estimate.UNIT_OVERHEAD_S + estimate.RUN_OVERHEAD_S + steps * (0.01 + 16 * 1e-3)
              + 10 * 16 * 2e-4 + 32 * 2e-4)
    assert one == pytest.approx(expect)
    four = unit_seconds([spec(lr=lr) for lr in (1e-3, 2e-3, 3e-3, 4e-3)], tp)
    # members share the step latency and the unit overhead
    assert one < four < 4 * one
    zs = unit_seconds([spec(arm="zero_shot", n_train=0, epochs=0, lr=0, init_from="0" * 16)], tp)
    assert zs == pytest.approx(estimate.UNIT_OVERHEAD_S + estimate.RUN_OVERHEAD_S + 48 * 2e-4 + 2 * 0.01)
    assert unit_seconds([spec(epochs=20)], tp) > one


def test_calibration_measures_positive_throughput():
    tp = estimate.calibrate(spec(), device="cpu", batch=8, repeats=1)
    assert tp.per_sample > 0 and tp.latency >= 0 and tp.eval_per_sample > 0
    assert tp.per_sample < 1.0  # a 16x16 xxs step takes well under a second per sample


def test_estimate_rescaled_by_finished_runs():
    tp = Throughput(latency=0.01, per_sample=1e-3, eval_per_sample=2e-4)
    units = [unit(spec(seed=s)) for s in range(3)]
    cache = {estimate._tp_key(units[0].specs[0]): tp}
    est = estimate.estimate_units(units[1:], cache=cache)
    base = unit_seconds(list(units[1].specs), tp)
    assert est.scale == 1.0 and est.device_seconds == pytest.approx(2 * base)
    assert est.device_hours == pytest.approx(2 * base / 3600)
    # the finished unit took twice the prediction -> the rest is predicted twice as long
    est2 = estimate.estimate_units(units[1:], cache=cache, finished={units[0].keys[0]: 2 * base},
                                   finished_units=units[:1])
    assert est2.scale == pytest.approx(2.0) and est2.device_seconds == pytest.approx(4 * base)
    assert "finished runs" in est2.source
    # two independent units on four workers: start-up, then both at once
    assert est2.wall_seconds(4) == pytest.approx(estimate.STARTUP_S + 2 * base)
    assert est2.wall_seconds(1) == pytest.approx(estimate.STARTUP_S + 4 * base)


def test_wall_time_follows_the_launchers_schedule_and_its_critical_path():
    """Two workers; pre-training P (8 s) holds back the transfer units T1, T2 (2 s each) while
    the scratch units S1..S3 (2 s each) fill the other worker.  Dividing the work (16 s) by the
    slots says 8 s; the launcher runs S1, S2, S3 beside P, then T1 and T2 once P ends: 10 s."""
    seconds = {"P": 8.0, "S1": 2.0, "T1": 2.0, "S2": 2.0, "T2": 2.0, "S3": 2.0}
    deps = {"T1": {"P"}, "T2": {"P"}}
    order = ["P", "S1", "T1", "S2", "T2", "S3"]
    assert estimate.schedule_seconds(order, seconds, deps, 2) == pytest.approx(10.0)
    assert estimate.schedule_seconds(order, seconds, deps, 1) == pytest.approx(18.0)
    assert estimate.schedule_seconds(order, seconds, deps, 6) == pytest.approx(10.0)  # P then T1 || T2
    # a dependency not in the plan's to-do list (finished before) does not wait
    assert estimate.schedule_seconds(["T1", "T2"], seconds, deps, 2) == pytest.approx(2.0)


def test_finished_walls_reads_mlflow_times():
    run = SimpleNamespace(info=SimpleNamespace(start_time=1000, end_time=4500))
    states = {"a": SimpleNamespace(finished=run), "b": SimpleNamespace(finished=None)}
    assert estimate.finished_walls(states) == {"a": 3.5}


def test_estimate_from_finished_runs_alone_recovers_their_throughput():
    """A login node cannot time the GPU: the finished runs' walls give the throughput instead."""
    tp = Throughput(latency=0.0, per_sample=2e-3, eval_per_sample=estimate.EVAL_FRACTION * 2e-3)
    done = [unit(spec(seed=s, n_train=n)) for s, n in ((0, 16), (1, 64))]
    walls = {u.keys[0]: unit_seconds(list(u.specs), tp) for u in done}
    todo = [unit(spec(seed=2, epochs=30)), unit(spec(seed=0, model="xs"))]
    est = estimate.estimate_units(todo, device="cuda", finished=walls, finished_units=done, calibrate_here=False)
    (measured,) = est.throughput.values()
    assert measured.per_sample == pytest.approx(2e-3)
    assert est.device_seconds == pytest.approx(unit_seconds(list(todo[0].specs), tp))
    assert len(est.not_estimated) == 1  # no xs run finished: nothing to measure it by
    assert "finished runs" in est.source


def test_the_calibration_proxy_of_every_shipped_size_is_a_valid_run() -> None:
    """When not even the cheapest size fits the budget, a lower resolution stands in for it: never
    below what the model's modes allow (resolution >= 2 m), and with a shorter timing at that
    floor -- paper-e1's l (m = 32) at 128² is timed at 64², batch 4."""
    from repro.grid.plan import load_plan
    from repro.grid.spec import shipped_grids

    seen = set()
    for name in shipped_grids():
        for unit in load_plan(name).units(device="cpu"):
            head = unit.specs[0]
            if estimate._tp_key(head) in seen:
                continue
            seen.add(estimate._tp_key(head))
            proxy, batch, repeats, _ = estimate._proxy(head, None, "cpu", rate=1e9, budget_s=1e-3)
            assert proxy.data.resolution >= max(16, 2 * proxy.model_spec.n_modes)
            assert proxy.model == head.model and (batch, repeats) == (4, 1)
    assert any(model == "l" for model, _, _ in seen)


def test_proxy_resolutions_stay_even_and_above_the_modes() -> None:
    """Any even resolution (not only powers of two) halves to a valid proxy: 66 -> 32 for m = 16,
    34 -> 16 for xxs, 100 -> 50 -> 24 for s (m = 8)."""
    for model, res, want in (("m", 66, 32), ("xxs", 34, 16), ("s", 100, 24)):
        data = dataclasses.replace(DATA, resolution=res)
        proxy, _, _, cost = estimate._proxy(spec(model=model, data=data), None, "cpu", rate=1e9, budget_s=1e-3)
        assert proxy.data.resolution == want and cost > 0


def test_sizes_too_costly_to_time_are_listed_not_estimated() -> None:
    """With no budget at all nothing is timed, not even a proxy: the estimate says so and lists the
    units as not estimated instead of guessing."""
    units = [unit(spec(model="xs", data=dataclasses.replace(DATA, resolution=64)))]
    est = estimate.estimate_units(units, budget_s=0.0)
    assert est.not_estimated == [units[0].task_id] and est.device_seconds == 0
    assert "none of the sizes" in est.source


def test_eta_weights_rank_the_quick_grids_units_by_their_work_without_timing_anything() -> None:
    """The live ETA's weights come from FLOPs at the prior rate (only their ratios matter): the
    quick grid's pre-training outweighs each fine-tuning unit, a zero-shot unit weighs least,
    and nothing is timed (no torch import: the grid's workers start at once)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom repro.grid.plan import load_plan\nfrom repro.grid.estimate import eta_weights\n"
             "units = load_plan('quick').units(device='cpu')\nw = eta_weights(units)\n"
             "roles = {u.task_id: u.runs[0].role for u in units}\narms = {u.task_id: u.specs[0].arm for u in units}\n"
             "pre = max(w[t] for t in w if roles[t] == 'pretrain')\n"
             "tune = [w[t] for t in w if roles[t] != 'pretrain' and arms[t] != 'zero_shot']\n"
             "zero = [w[t] for t in w if arms[t] == 'zero_shot']\n"
             "print(len(w) == len(units), pre > max(tune), max(zero) < min(tune), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True", "False"], out.stdout + out.stderr


def test_the_schedule_takes_in_simultaneous_ends_together_and_slurm_waits_for_every_pretraining():
    """Units ending at the same moment free their workers together (the launcher reads every
    result before it hands out the next unit), and SLURM's phases start no downstream unit before
    all pre-training has ended."""
    seconds = {"A": 1.0, "B": 1.0, "C": 1.0, "Y": 5.0, "X": 1.0}
    deps = {"C": {"B"}, "Y": {"B"}}
    # A and B end together at 1; C and Y then start on both workers; X after C: max(1+5, 1+1+1) = 6
    assert estimate.schedule_seconds(["A", "B", "C", "Y", "X"], seconds, deps, 2) == pytest.approx(6.0)
    est = estimate.Estimate(unit_seconds={"P1": 4.0, "P2": 1.0, "T1": 1.0, "S1": 1.0},
                            deps={"P1": frozenset(), "P2": frozenset(), "T1": frozenset({"P2"})},
                            pretraining=frozenset({"P1", "P2"}))
    # the local launcher runs T1, then S1 (no deps entry: still scheduled) beside P1; SLURM waits for P1
    assert est.wall_seconds(2) == pytest.approx(estimate.STARTUP_S + 4.0)
    assert est.wall_seconds(2, phased=True) == pytest.approx(5.0)
    from repro.grid.plan import load_plan

    quick = load_plan("quick").units(device="cpu")  # one upstream, one pre-training seed
    assert len(estimate.pretraining_units(quick)) == 1


def test_the_dry_runs_throughput_line_agrees_with_itself() -> None:
    """samples/s and the step time describe one step of the grid's batch (a marginal rate beside the
    fixed per-step latency read as two contradicting speeds: gpu-demo's 48 vs 96 samples/s)."""
    from repro.grid.console import throughput_text

    tp = Throughput(latency=4.2e-3, per_sample=1 / 3121)  # 14.45 ms for a batch-32 step
    assert throughput_text(tp, 32) == "2,214 samples/s in steps of 32 (14.5 ms a step: 4.2 ms fixed + 320 us per sample)"
