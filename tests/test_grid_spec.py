"""Grid specifications and expansion: strict loading, stable keys, dependencies, golden counts."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from repro.config import SpecError
from repro.grid.plan import ROLE_DOWNSTREAM, ROLE_PRETRAIN, expand
from repro.grid.plan import load_grid, parse_grid
from repro.grid.spec import Finetune, parse_label, shipped_grids

#: Runs per shipped grid (pre-training + downstream, after deduplication).  A change here is a
#: change of the science plan: update deliberately.
GOLDEN = {"quick": 42, "gpu-demo": 392, "paper-e1": 292, "paper-e2": 2920, "paper-e3": 2332, "paper-e4": 2626,
          "cpu-study": 510, "cpu-study-v2": 519}

TINY = """
label = "tiny"
resolution = 16
models = ["xxs"]
n_train = [8, 16]
lrs = [1e-3, 3e-3]
seeds = [0, 1]
[upstream]
n_train = 64
n_val = 16
n_test = 16
[downstream]
n_train = 16
n_val = 16
n_test = 16
[pretrain]
epochs = 2
lr = 1e-3
[finetune]
epochs = 3
[[shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"
[[shifts]]
upstream = "poisson(1,2.5)"
downstream = "poisson(5,10)"
"""


def _tiny(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(text))
    return path


#: sha256 (first 16 hex) of each shipped grid's sorted run_keys.  Counts alone miss a change that moves
#: keys (e.g. one block's stream rule reaching another's datasets): then committed stores, and grids
#: half-run on a cluster, would no longer match their plan.  A change here re-plans real runs.
GOLDEN_KEYS = {"quick": "4e8ed15fa3f96b92", "gpu-demo": "6fefbc7f7beadc91", "paper-e1": "eef4a89371388be3",
               "paper-e2": "7b6f6e712d75f2c2", "paper-e3": "3f50118243584a55", "paper-e4": "232fc89cc96522c3",
               "cpu-study": "cd351771fdde2626", "cpu-study-v2": "29ac8ff2a8826220"}


def test_shipped_grids_keep_their_run_keys():
    import hashlib

    for name, digest in GOLDEN_KEYS.items():
        keys = sorted(expand(load_grid(name)).keys)
        assert hashlib.sha256(",".join(keys).encode()).hexdigest()[:16] == digest, name


def test_shipped_grids_load_with_golden_counts():
    assert set(GOLDEN) <= set(shipped_grids())
    for name, count in GOLDEN.items():
        plan = expand(load_grid(name))
        assert len(plan) == count, name
        assert len(set(plan.keys)) == len(plan)
        assert plan.grid.label == name


def test_paper_grids_follow_protocol():
    from repro.config import PAPER_LRS

    for e in (1, 2, 3, 4):
        g = load_grid(f"paper-e{e}")
        assert g.resolution == 128
        assert (g.upstream.n_train, g.upstream.n_val, g.upstream.n_test) == (2**15, 2**12, 2**12)
        assert g.lrs == PAPER_LRS
        assert g.n_train == tuple(2**k for k in range(3, 16))
        assert g.finetune.epochs == 500 and g.pretrain.epochs == 500
        assert set(g.arms) == {"scratch", "transfer", "zero_shot"}
    assert load_grid("paper-e2").models == ("xs", "s", "m", "l", "xl")
    assert any(s.upstream == "mixed" for s in load_grid("paper-e4").shifts)
    e3 = {s.label for s in load_grid("paper-e3").shifts}
    assert "poisson(1,5) -> poisson(10,20)" in e3 and "helmholtz(1,10) -> helmholtz(10,20)" in e3


def test_gpu_demo_meets_its_brief():
    g = load_grid("gpu-demo")
    assert len(g.models) >= 2 and len(g.n_train) >= 8 and len(g.shifts) == 2
    assert set(g.arms) == {"scratch", "transfer", "zero_shot"} and len(g.lrs) == 3 and len(g.seeds) == 2
    assert g.resolution in (64, 128)


def test_expansion_is_deterministic_across_processes(tmp_path):
    path = _tiny(tmp_path)
    keys = expand(load_grid(path)).keys
    assert keys == expand(load_grid(path)).keys
    code = f"from repro.grid.plan import expand, load_grid; print(','.join(expand(load_grid({str(path)!r})).keys))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other.split(",") == list(keys)
    quick = subprocess.run([sys.executable, "-c", code.replace(repr(str(path)), "'quick'")], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert quick.split(",") == list(expand(load_grid("quick")).keys)


def test_plan_structure(tmp_path):
    plan = expand(load_grid(_tiny(tmp_path)))
    roles = [r.role for r in plan]
    # pre-training first, one per (upstream, model)
    assert roles == sorted(roles, key=lambda r: r != ROLE_PRETRAIN)
    pre = plan.pretrain
    assert len(pre) == 2 and {r.spec.data.label for r in pre} == {"poisson(1,5)", "poisson(1,2.5)"}
    assert all(r.spec.arm == "scratch" and r.spec.n_train == 64 and r.spec.epochs == 2 for r in pre)
    arms = Counter(r.spec.arm for r in plan.downstream)
    # scratch is shared by the two shifts that end at poisson(5,10): 2 N x 2 lr x 2 seeds
    assert arms == {"scratch": 8, "transfer": 16, "zero_shot": 2}
    scratch = [r for r in plan.downstream if r.spec.arm == "scratch"]
    assert all(len(r.shifts) == 2 for r in scratch)
    pre_keys = {r.run_key for r in pre}
    for r in plan.downstream:
        if r.spec.arm in ("transfer", "zero_shot"):
            assert r.depends_on in pre_keys and len(r.shifts) == 1
            assert plan[r.depends_on].spec.data.label == r.shifts[0].split(" -> ")[0]
        else:
            assert r.depends_on is None
    zs = [r for r in plan.downstream if r.spec.arm == "zero_shot"]
    assert all((r.spec.n_train, r.spec.epochs, r.spec.lr) == (0, 0, 0.0) for r in zs)
    assert plan.dependants(pre[0].run_key)
    assert all(r.role == ROLE_DOWNSTREAM for r in plan.downstream)


def test_units_group_by_batch_key(tmp_path):
    plan = expand(load_grid(_tiny(tmp_path)))
    units = plan.units()
    assert sorted(k for u in units for k in u.keys) == sorted(plan.keys)
    for u in units:
        heads = {(s.arm, s.n_train, s.init_from, s.model, s.epochs) for s in u.specs}
        assert len(heads) == 1
    # scratch N=8: 2 lr x 2 seeds in one unit; max_members=1 splits them
    assert max(len(u.runs) for u in units) == 4
    assert all(len(u.runs) == 1 for u in plan.units(max_members=1))
    assert len(plan.units(max_members=1)) == len(plan)
    assert units[0].role == ROLE_PRETRAIN


def test_units_on_a_device_are_the_engines_ensembles() -> None:
    """On a CPU the engine caps ensembles by activation size; the plan's units follow it."""
    from repro.ensembles import ensemble_cap, group_specs

    plan = expand(load_grid("gpu-demo"))
    cpu = plan.units(device="cpu")
    assert sorted(k for u in cpu for k in u.keys) == sorted(plan.keys)
    assert all(len(u.runs) <= ensemble_cap(u.specs[0], "cpu") for u in cpu)
    assert len(cpu) > len(plan.units())  # gpu-demo (64x64) has ensembles the CPU cap splits
    assert [u.keys for u in cpu] == [tuple(s.run_key for s in g) for g in group_specs([r.spec for r in plan], 16, "cpu")]
    assert [u.keys for u in plan.units(device="cuda")] == [u.keys for u in plan.units()]


def test_mixed_upstream_uses_mixed_layout_and_shared_native_scratch():
    plan = expand(load_grid("paper-e4"))
    for r in plan.downstream:
        up = r.shifts[0].split(" -> ")[0] if r.spec.arm != "scratch" else None
        if r.spec.arm == "scratch":
            assert r.spec.layout == "native"
        else:
            assert r.spec.layout == ("mixed" if up == "mixed" else "native")
    mixed_pre = [r for r in plan.pretrain if r.spec.data.pde == "mixed"]
    assert len(mixed_pre) == 1 and mixed_pre[0].spec.layout == "mixed"


def test_steps_rule_and_seed_rule():
    ft = Finetune(steps=100, min_epochs=5, max_epochs=60)
    assert ft.epochs_for(8, 32) == 60  # 1 batch per epoch -> 100 epochs, capped at 60
    assert ft.epochs_for(64, 32) == 50  # 2 batches per epoch
    assert ft.epochs_for(4096, 32) == 5  # floor
    assert Finetune(epochs=7).epochs_for(8, 32) == 7
    g = load_grid("paper-e1")
    assert g.seeds_for(8) == (0, 1, 2) and g.seeds_for(32768) == (0,)


@pytest.mark.parametrize("edit, needle", [
    ("models = [\"xxs\"]\nbogus = 1\n", "unknown key(s) bogus"),
    ("models = \"xxs\"\n", "models: expected a list"),
    ("models = []\n", "models = [] is invalid"),
    ("models = [\"huge\"]\n", "allowed sizes"),
    ("models = [\"l\"]\n", "Fourier modes"),
    ("models = [\"xxs\"]\nn_train = [8, 999]\n", "downstream.n_train (16)"),
    ("models = [\"xxs\"]\nlrs = [-1.0]\n", "lrs"),
    ("models = [\"xxs\"]\narms = [\"finetune\"]\n", "allowed: scratch, transfer, zero_shot"),
    ("models = [\"xxs\"]\nseeds = [0, 0]\n", "distinct"),
    ("models = [\"xxs\"]\nresolution = \"16\"\n", "resolution: expected an integer"),
])
def test_bad_grids_name_file_key_and_allowed(tmp_path, edit, needle):
    text = textwrap.dedent(TINY).replace('models = ["xxs"]\n', edit)
    if "n_train = [8, 999]" in edit:
        text = text.replace("n_train = [8, 16]\n", "", 1)
    if "lrs = [-1.0]" in edit:
        text = text.replace("lrs = [1e-3, 3e-3]\n", "", 1)
    if "seeds = [0, 0]" in edit:
        text = text.replace("seeds = [0, 1]\n", "", 1)
    if "resolution = \"16\"" in edit:
        text = text.replace("resolution = 16\n", "", 1)
    path = _tiny(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_grid(path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_bad_shift_and_sections(tmp_path):
    bad_range = TINY.replace('downstream = "poisson(5,10)"\n[[shifts]]', 'downstream = "poisson(10,5)"\n[[shifts]]')
    with pytest.raises(SpecError, match=r"shifts\[0\]\.downstream.*low < high"):
        load_grid(_tiny(tmp_path, bad_range))
    with pytest.raises(SpecError, match=r"downstream = 'mixed' is invalid"):
        load_grid(_tiny(tmp_path, TINY.replace('downstream = "poisson(5,10)"', 'downstream = "mixed"', 1)))
    with pytest.raises(SpecError, match=r"finetune.*exactly one of epochs"):
        load_grid(_tiny(tmp_path, TINY.replace("epochs = 3", "epochs = 3\nsteps = 10")))
    with pytest.raises(SpecError, match=r"missing required key\(s\) pretrain"):
        load_grid(_tiny(tmp_path, TINY.replace("[pretrain]\nepochs = 2\nlr = 1e-3\n", "")))
    with pytest.raises(SpecError, match="not valid TOML"):
        load_grid(_tiny(tmp_path, "label = \n"))
    with pytest.raises(SpecError, match="shipped grids: .*quick"):
        load_grid("no-such-grid")


def test_parse_label():
    assert parse_label("poisson(1,5)", allow_mixed=False) == ("poisson", 1.0, 5.0)
    assert parse_label(" advdiff(0.2, 1) ", allow_mixed=False) == ("advdiff", 0.2, 1.0)
    assert parse_label("mixed", allow_mixed=True) == ("mixed", None, None)
    with pytest.raises(SpecError):
        parse_label("stokes(1,2)", allow_mixed=True)


def test_parse_grid_from_mapping():
    import tomllib

    data = tomllib.loads(textwrap.dedent(TINY))
    g = parse_grid(data, where="inline")
    assert g.label == "tiny" and len(g.shifts) == 2
    data["pretrain"]["lr"] = "fast"
    with pytest.raises(SpecError, match=r"inline\.pretrain\.lr: expected a number"):
        parse_grid(data, where="inline")


def test_pretrain_seeds_plan_one_pretraining_run_per_seed(tmp_path):
    """``[pretrain] seeds``: pre-training per (upstream, model, seed); transfer and zero-shot from each."""
    plan = expand(load_grid(_tiny(tmp_path, TINY.replace("[pretrain]\n", "[pretrain]\nseeds = [0, 1]\n"))))
    one = expand(load_grid(_tiny(tmp_path)))
    assert len(plan.pretrain) == 2 * len(one.pretrain)
    assert Counter((r.spec.data.label, r.spec.seed) for r in plan.pretrain) == \
        {("poisson(1,5)", 0): 1, ("poisson(1,5)", 1): 1, ("poisson(1,2.5)", 0): 1, ("poisson(1,2.5)", 1): 1}
    arms = Counter(r.spec.arm for r in plan.downstream)
    assert arms == {"scratch": 8, "transfer": 32, "zero_shot": 4}  # scratch does not depend on pre-training
    by_seed = {r.run_key: r.spec.seed for r in plan.pretrain}
    for r in plan.downstream:
        if r.spec.arm == "scratch":
            assert r.pretrain_seed is None and r.axis_values()["pretrain_seed"] == "-"
        else:
            assert r.pretrain_seed == by_seed[r.depends_on]
    # Runs from the two pre-training seeds differ in init_from only.
    from dataclasses import replace

    transfer = {(r.spec.data.label, r.shifts, r.spec.n_train, r.spec.lr, r.spec.seed, r.pretrain_seed): r
                for r in plan.downstream if r.spec.arm == "transfer"}
    for (label, shifts, n, lr, seed, pseed), r in transfer.items():
        if pseed == 1:
            twin = transfer[(label, shifts, n, lr, seed, 0)]
            assert replace(r.spec, init_from=twin.spec.init_from) == twin.spec
    assert plan.axis_counts()["pretrain_seed"] == {"-": 8, 0: 20, 1: 20}
    # Seed 0's runs are exactly the one-seed grid's runs: keys of old grids do not move.
    assert {r.run_key for r in plan if r.pretrain_seed in (0, None)} == set(one.keys)


def test_pretrain_seed_spellings(tmp_path):
    old = expand(load_grid(_tiny(tmp_path, TINY.replace("[pretrain]\n", "[pretrain]\nseed = 3\n"))))
    new = expand(load_grid(_tiny(tmp_path, TINY.replace("[pretrain]\n", "[pretrain]\nseeds = [3]\n"))))
    assert old.keys == new.keys and {r.spec.seed for r in old.pretrain} == {3}
    assert expand(load_grid(_tiny(tmp_path, TINY.replace("[pretrain]\n", "[pretrain]\nseed = 0\n")))).keys == \
        expand(load_grid(_tiny(tmp_path))).keys
    for edit, needle in [("seed = 0\nseeds = [0, 1]\n", "not both"), ("seeds = []\n", "at least one"),
                         ("seeds = [1, 1]\n", "distinct"), ("seeds = [0, -1]\n", r"seeds = \[0, -1\] is invalid"),
                         ("seed = -1\n", "seed = -1 is invalid"), ("seeds = 1\n", "expected a list")]:
        path = _tiny(tmp_path, TINY.replace("[pretrain]\n", "[pretrain]\n" + edit))
        with pytest.raises(SpecError, match=needle) as err:
            load_grid(path)
        assert str(path) in str(err.value) and "pretrain" in str(err.value)


IN_DISTRIBUTION = """
label = "in-dist"
resolution = 16
models = ["xxs"]
n_train = [8]
lrs = [1e-3]
[upstream]
n_train = 200
n_val = 24
n_test = 24
[downstream]
n_train = 32
n_val = 16
n_test = 16
[pretrain]
epochs = 1
lr = 1e-3
[finetune]
epochs = 1
[[shifts]]
upstream = "mixed"
downstream = "poisson(1,5)"
[[shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(1,5)"
[[shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"
"""


def test_in_distribution_downstream_tasks_have_their_own_samples(tmp_path):
    """E4 in distribution: the downstream poisson(1,5) shares no source with any pre-training split.

    With the range's own stream it was a prefix of the poisson(1,5) pre-training set (train, val and
    test alike); the OOD task poisson(5,10) keeps the range's stream and so its content.
    """
    import numpy as np

    from repro.data import ensure_split, load_split

    plan = expand(load_grid(_tiny(tmp_path, IN_DISTRIBUTION)))
    ups = {r.spec.data for r in plan.pretrain}
    downs = {r.spec.data for r in plan.downstream}
    assert {(d.label, d.stream) for d in ups} == {("mixed", "default"), ("poisson(1,5)", "default")}
    assert {(d.label, d.stream) for d in downs} == {("poisson(1,5)", "downstream"), ("poisson(5,10)", "default")}
    # Every run on poisson(1,5) downstream (scratch, and transfer / zero-shot from both upstreams) uses it.
    assert {r.spec.data.stream for r in plan.downstream if r.spec.data.label == "poisson(1,5)"} == {"downstream"}

    def sources(spec, split):
        ensure_split(spec, split, tmp_path / "data")
        return load_split(spec, split, tmp_path / "data").source.reshape(spec.split_size(split), -1)

    upstream = np.concatenate([sources(d, s) for d in ups for s in ("train", "val", "test")])
    (down,) = (d for d in downs if d.stream == "downstream")
    for split in ("train", "val", "test"):
        own = sources(down, split)
        # (own rows) x (pre-training rows): no downstream source equals any pre-training source
        same = (own[:, None, :] == upstream[None, :, :]).all(axis=-1)
        assert not same.any(), split
    # What the range's stream would have given: a prefix of the pre-training split.
    from dataclasses import replace

    (pre_p,) = (d for d in ups if d.pde == "poisson")
    assert np.array_equal(sources(replace(down, stream="default"), "train"), sources(pre_p, "train")[:32])


#: run_keys of a few quick-grid runs (pre-training, zero-shot, transfer, scratch).  They identify
#: finished MLflow runs: a change here orphans every stored run of the grid, so change it deliberately.
#: (Changed deliberately in issue 9: the quick grid became 16x16, xs, converged budgets.)
QUICK_KEYS = {"71638e445a1bed74": ("scratch", "poisson(1,5)"), "16bbbc43b09560c9": ("zero_shot", "poisson(5,10)"),
              "b894890e176e7594": ("transfer", "poisson(5,10)"), "8eb0ef22eff3d471": ("scratch", "poisson(5,10)")}


def test_quick_grid_run_keys_are_stable():
    plan = expand(load_grid("quick"))
    for key, (arm, task) in QUICK_KEYS.items():
        assert key in plan and (plan[key].spec.arm, plan[key].spec.data.label) == (arm, task)
    assert {r.spec.data.stream for r in plan} == {"default"}


def test_grid_psi_targeting_applies_to_sys2_datasets_only(tmp_path):
    text = TINY.replace('downstream = "poisson(5,10)"\n[[shifts]]', 'downstream = "poisson(5,10)"\n[[shifts]]\n'
                        'upstream = "mixed"\ndownstream = "advdiff(1,2)"\n[[shifts]]')
    default = expand(load_grid(_tiny(tmp_path, text)))
    authors = expand(load_grid(_tiny(tmp_path, 'psi_targeting = "authors"\n' + text)))
    got = {(r.spec.data.label, r.spec.data.psi_targeting) for r in authors}
    assert got == {("poisson(1,5)", "exact"), ("poisson(1,2.5)", "exact"), ("poisson(5,10)", "exact"),
                   ("mixed", "authors"), ("advdiff(1,2)", "authors")}
    assert {r.spec.data.psi_targeting for r in default} == {"exact"}
    poisson_only = {r.run_key for r in default if r.spec.data.pde == "poisson" and r.spec.init_from is None}
    assert poisson_only <= set(authors.keys)  # runs that never see SYS-2 data keep their keys
    assert not {r.run_key for r in default if r.spec.data.pde != "poisson"} & set(authors.keys)
    with pytest.raises(SpecError, match="psi_targeting = 'table' is invalid: allowed: exact, authors"):
        load_grid(_tiny(tmp_path, 'psi_targeting = "table"\n' + TINY))


COMPOSITE = TINY.split("[[shifts]]")[0] + """
[[experiments]]
name = "E1"
pretrain_seeds = [0, 1]
[[experiments.shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"

[[experiments]]
name = "E2"
models = ["xxs", "xs"]
n_train = [16]
seeds = [0]
[[experiments.shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"

[[experiments]]
name = "E4"
n_train = [8]
[[experiments.shifts]]
upstream = "mixed"
downstream = "poisson(1,5)"
"""


def test_composite_grid_is_the_union_of_its_blocks_with_shared_runs_once(tmp_path):
    grid = load_grid(_tiny(tmp_path, COMPOSITE))
    blocks = grid.blocks()
    assert [len(b.models) for b in blocks] == [1, 2, 1] and blocks[1].n_train == (16,)
    plan = expand(grid)
    union = {}
    for block in blocks:
        union.update({r.run_key: r for r in expand(block).runs})
    assert set(plan.keys) == set(union) and len(plan.keys) == len(set(plan.keys))
    # E2's xxs runs at N = 16, seed 0 on the headline shift are E1's: trained once, not twice.
    e1 = set(expand(blocks[0]).keys)
    e2 = set(expand(blocks[1]).keys)
    shared = e1 & e2
    assert shared and all(plan[k].spec.model == "xxs" for k in shared)
    assert len(plan) == len(e1 | e2 | set(expand(blocks[2]).keys))
    # Pre-training seeds are a per-block axis: two for E1's (poisson(1,5), xxs), one for E2's xs.
    pre = Counter((r.spec.data.label, r.spec.model) for r in plan.pretrain)
    assert pre == {("poisson(1,5)", "xxs"): 2, ("poisson(1,5)", "xs"): 1, ("mixed", "xxs"): 1}
    # The stream rule sees the whole grid: E4's in-distribution poisson(1,5) task draws its own
    # samples because E1 pre-trains on poisson(1,5), though E4's own block has no such upstream.
    e4 = [r for r in plan.downstream if r.spec.data.label == "poisson(1,5)"]
    assert e4 and {r.spec.data.stream for r in e4} == {"downstream"}
    assert {r.spec.data.stream for r in plan.pretrain if r.spec.data.label == "poisson(1,5)"} == {"default"}


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda t: t.replace('name = "E2"', 'name = "E1"'), "each block needs its own name"),
    (lambda t: t.replace('models = ["xxs", "xs"]', 'models = ["xxl"]'), "experiments[1] (E2): models"),
    (lambda t: t.replace("n_train = [16]\nseeds", "n_train = [999]\nseeds"), "experiments[1] (E2): n_train"),
    (lambda t: t.replace('name = "E4"', 'name = "E 4"'), "name = 'E 4' is invalid"),
    (lambda t: t + '\n[[experiments]]\nname = "E5"\nwidth = 3\n', "unknown key(s) width"),
    (lambda t: t.split("[[experiments]]")[0], "shifts = [] is invalid"),
])
def test_bad_composite_grids_name_the_block_and_key(tmp_path, edit, needle):
    with pytest.raises(SpecError, match=re.escape(needle)):
        load_grid(_tiny(tmp_path, edit(COMPOSITE)))


def test_budget_audit_block_retrains_its_cells_with_a_multiple_of_the_budget(tmp_path):
    text = COMPOSITE.replace("[finetune]\nepochs = 3", "[finetune]\nsteps = 10\nmin_epochs = 2\nmax_epochs = 8") + """
[[experiments]]
name = "audit"
budget_audit = 2
n_train = [8, 16]
seeds = [0]
pretrain_seeds = [0]
[[experiments.shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"
"""
    grid = load_grid(_tiny(tmp_path, text))
    plan = expand(grid)
    audit = plan.audit
    # scratch + transfer from the one pre-training seed, 2 N x 2 LRs x 1 seed; no zero-shot (no budget)
    assert Counter(r.spec.arm for r in audit) == {"scratch": 4, "transfer": 4}
    base = {(r.spec.arm, r.spec.n_train, r.spec.lr, r.spec.seed, r.spec.init_from): r.spec.epochs
            for r in plan.downstream if r.spec.arm != "zero_shot"}
    for r in audit:
        assert r.spec.epochs == 2 * base[(r.spec.arm, r.spec.n_train, r.spec.lr, r.spec.seed, r.spec.init_from)]
    assert {r.role for r in audit} == {"audit"} and not set(plan.audit) & set(plan.downstream)
    # the audit adds runs only: every other run (and its run_key) is unchanged
    without = expand(load_grid(_tiny(tmp_path, COMPOSITE.replace("[finetune]\nepochs = 3",
                                                                  "[finetune]\nsteps = 10\nmin_epochs = 2\nmax_epochs = 8"))))
    assert set(without.keys) | {r.run_key for r in audit} == set(plan.keys)
    with pytest.raises(SpecError, match="budget_audit = 1 is invalid"):
        load_grid(_tiny(tmp_path, text.replace("budget_audit = 2", "budget_audit = 1")))
    with pytest.raises(SpecError, match="budget_audit = 50 is invalid: expected an integer in 2..10"):
        load_grid(_tiny(tmp_path, text.replace("budget_audit = 2", "budget_audit = 50")))
    orphan = text.replace("budget_audit = 2\nn_train = [8, 16]", "budget_audit = 2\nn_train = [8, 16]\nlrs = [5e-4]")
    with pytest.raises(SpecError, match=re.escape("experiments[3] (audit): budget_audit cell scratch poisson(5,10) xxs N=8 "
                                                  "lr=0.0005 seed=0 has no grid run to audit")):
        load_grid(_tiny(tmp_path, orphan))
    with pytest.raises(SpecError, match="unknown key.*budget_audit"):
        load_grid(_tiny(tmp_path, "budget_audit = 2\n" + TINY))


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda t: t.replace("resolution = 16", "resolution = 4096"), "resolution = 4096 is invalid: expected an even grid size in 8..1024"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 9000000000000000000]"), "seeds must be in 0..2147483647"),
    (lambda t: t.replace("label = \"tiny\"", "label = \"tiny\"\ndata_seed = -1"), "data_seed = -1 is invalid"),
    (lambda t: t.replace("[pretrain]\nepochs = 2", "[pretrain]\nepochs = 100000000000000000"), "expected an integer in 1..100,000"),
    (lambda t: t.replace("[finetune]\nepochs = 3", "[finetune]\nsteps = 100000000000000000"), "expected an integer in 1..100,000,000"),
    (lambda t: t + '[[shifts]]\nupstream = "poisson(1.0, 5.0)"\ndownstream = "poisson(5,10.0)"\n', "values must be distinct"),
])
def test_typo_guards_name_the_key_and_the_allowed_range(tmp_path, edit, needle):
    """Values that used to pass and then fail late (an allocation traceback in the dry-run, an
    overflow in a run, a 1e11-hour estimate, the same shift counted twice) are refused up front."""
    with pytest.raises(SpecError, match=re.escape(needle)):
        load_grid(_tiny(tmp_path, edit(TINY)))


def test_shift_labels_are_canonical():
    grid = parse_grid({**tomllib.loads(TINY), "shifts": [{"upstream": "poisson(1.0, 5)", "downstream": "poisson(5.0,10)"}]})
    assert grid.shifts[0].label == "poisson(1,5) -> poisson(5,10)"
    assert expand(grid).keys == expand(parse_grid({**tomllib.loads(TINY), "shifts": [
        {"upstream": "poisson(1,5)", "downstream": "poisson(5,10)"}]})).keys


def test_run_and_dataset_specs_bound_resolution_seed_and_epochs():
    from repro.config import DatasetSpec, RunSpec

    with pytest.raises(SpecError, match=re.escape("data.resolution = 4096 is invalid: expected at most 1,024")):
        DatasetSpec(pde="poisson", low=1, high=5, resolution=4096)
    with pytest.raises(SpecError, match=re.escape("data.seed = 4294967296 is invalid: expected at most 2,147,483,647")):
        DatasetSpec(pde="poisson", low=1, high=5, seed=2**32)
    data = DatasetSpec(pde="poisson", low=1, high=5, resolution=16, n_train=16)
    with pytest.raises(SpecError, match=re.escape("run.epochs = 10000000 is invalid: expected at most 100,000")):
        RunSpec(arm="scratch", data=data, model="xxs", n_train=8, lr=1e-3, epochs=10**7)
    with pytest.raises(SpecError, match="seed = 100000000000000000000 is invalid"):
        RunSpec(arm="scratch", data=data, model="xxs", n_train=8, lr=1e-3, epochs=1, seed=10**20)


def test_cpu_study_v2_retrains_only_the_large_n_cells():
    """cpu-study-v2 raises min_epochs only: every run below N = 256 keeps its run_key (reused); beyond
    cpu-study's design it adds only budget audits (at the selected LRs: 7 cells at 2x, 2 at 4x)."""
    v1, v2 = expand(load_grid("cpu-study")), expand(load_grid("cpu-study-v2"))
    changed = [run for run in v2 if run.run_key not in set(v1.keys)]
    assert changed and all(run.spec.n_train >= 256 for run in changed)
    assert len(set(v1.keys) & set(v2.keys)) == len(v2) - len(changed)
    assert len(v2) - len(v1) == len(v2.audit) - len(v1.audit) == 9
