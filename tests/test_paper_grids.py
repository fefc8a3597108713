"""The paper grids (E1–E4) in miniature, trained end to end on CPU.

Each shipped ``runs/paper-e*.toml`` is read as it is, its shifts, arms and physics kept, and only
its scale shrunk (16², model xxs, one N, one LR, one seed, a few epochs).  So every kind of run the
paper grids plan — mixed-PDE pre-training with the six-channel layout, transfer from the mixture to
each system, Helmholtz and advection-diffusion shifts, single-system pre-training on in-distribution
tasks — is trained at least once, long before anyone books GPU-hours on the full grids.
"""

from __future__ import annotations

import tomllib
from collections import Counter

import pytest

from repro import schema
from repro.grid.launcher import Options, run_grid
from repro.execution import RunContext
from repro.grid.plan import expand
from repro.grid.plan import parse_grid
from repro.grid.spec import grid_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PAPER_GRIDS = ("paper-e1", "paper-e2", "paper-e3", "paper-e4")

#: What is shrunk; everything else (shifts, arms, the schedules' form) is the shipped grid's.
MINIATURE = dict(resolution=16, models=["xxs"], n_train=[8], lrs=[3e-3], seeds=[0], batch_size=8)
SPLITS = dict(n_train=16, n_val=8, n_test=8)


def miniature(name: str) -> dict:
    data = tomllib.loads(grid_path(name).read_text())
    data.update(MINIATURE, label=f"{name}-mini")
    data.pop("multi_seed_max_n", None)
    data["upstream"] = dict(SPLITS)
    data["downstream"] = dict(SPLITS)
    data["pretrain"] = {**data["pretrain"], "epochs": 2, "eval_every": 1}
    data["finetune"] = {"epochs": 2, "eval_every": 1}
    return data


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("paper-mini")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    plans = {}
    for name in PAPER_GRIDS:
        plan = expand(parse_grid(miniature(name), where=f"{name} (miniature)"))
        out = run_grid(plan, Options(RunContext(tracking_uri=uri, data_dir=root / "data"), workers=2), live=False)
        assert out.ok, (name, out.failed)
        plans[name] = plan
    return uri, plans


def test_every_paper_grid_trains_in_miniature(mini_store) -> None:
    from repro.grid import store

    uri, plans = mini_store
    for name, plan in plans.items():
        states = store.key_states(uri, plan.keys)
        assert Counter(s.status for s in states.values()) == {schema.FINISHED: len(plan)}, name
    e4 = plans["paper-e4"]
    mixed = [r for r in e4.pretrain if r.spec.data.pde == "mixed"]
    assert len(mixed) == 1 and mixed[0].spec.layout == "mixed"
    from_mixture = [r for r in e4.downstream if r.depends_on == mixed[0].run_key]
    assert {r.spec.data.pde for r in from_mixture} == {"poisson", "advdiff", "helmholtz"}
    assert all(r.spec.layout == "mixed" for r in from_mixture)  # fine-tunes keep the mixture's channels


def test_mixed_pretraining_is_analysed_against_single_system_and_scratch(mini_store) -> None:
    from analysis.analyze import analyze
    from analysis.collect import collect_runs

    uri, plans = mini_store
    result = analyze(collect_runs(uri, "paper-e4-mini", keys=plans["paper-e4"].keys), n_boot=10, workers=1)
    mixed = result.mixed
    # in distribution and out of it, for each system
    assert set(mixed["task"]) == {"poisson(1,5)", "advdiff(0.2,1)", "helmholtz(1,10)", "poisson(5,10)",
                                  "advdiff(1,2)", "helmholtz(10,20)"}
    # at the grid's N all three arms are there (the in-distribution pre-training runs also give a
    # scratch point at the upstream size, where no transfer was planned)
    at_n = mixed[mixed["n_train"] == 8]
    assert len(at_n) == 6 and at_n[["scratch", "transfer_mixed", "transfer_single"]].notna().all().all()
    # Finding 5 is decided on fitted curves with seed intervals; the miniature has too few N per curve
    # to fit a law, so it must say so rather than decide from single points
    claim5 = next(c for c in result.claims if c.id == 5)
    assert claim5.verdict == "NOT ENOUGH DATA" and "fitted curves" in claim5.summary, claim5.summary
    assert any("mixed ->" in s and "skipped" in s for s in result.skipped)
