"""torch.compile of the training step (repro.compilation, repro.train.compiled): the rule that
decides it, the engine run it gives (same result as eager, recorded as such), the eager fallback
when the compiler fails, and the cost model's view of a compiled unit."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from repro import schema
from repro.compilation import (
    COMPILE_SECONDS,
    COMPILED_STEP_FACTOR,
    MIN_COMPILED_TRAIN_FLOPS,
    compiles,
)
from repro.config import DatasetSpec, RunSpec
from repro.execution import RunContext
from repro.flops import forward_flops, unit_training_flops
from repro.grid.estimate import Throughput, unit_seconds
from repro.train.engine import execute

DATA = DatasetSpec(pde="poisson", low=1, high=5, resolution=16, n_train=32, n_val=16, n_test=16, seed=5)
SPEC = RunSpec(arm="scratch", data=DATA, model="xxs", n_train=32, lr=3e-3, epochs=4, seed=0, batch_size=16)


def test_auto_compiles_long_cpu_units_only() -> None:
    fused = {"spectral": "fused"}
    assert compiles("auto", "cpu", MIN_COMPILED_TRAIN_FLOPS, **fused)
    assert not compiles("auto", "cpu", MIN_COMPILED_TRAIN_FLOPS / 2, **fused)
    assert not compiles("auto", "cuda:0", 1e18, **fused)  # not measured on a GPU yet: eager there
    assert not compiles("auto", "cpu", 1e18, spectral="reference")  # the plain path stays plain
    assert compiles("on", "cuda", 0.0, **fused) and not compiles("off", "cpu", 1e18, **fused)
    with pytest.raises(ValueError, match="compile = 'yes' is invalid: allowed: auto, on, off"):
        compiles("yes", "cpu", 0.0, **fused)
    # The unit's work: 3 forwards per sample, every member and epoch; zero-shot trains nothing.
    two = [SPEC, dataclasses.replace(SPEC, lr=1e-3)]
    per_run = 3 * forward_flops(SPEC.model_spec, 16, "fused") * SPEC.epochs * SPEC.n_train
    assert unit_training_flops(two, "fused") == pytest.approx(2 * per_run)
    zero = dataclasses.replace(SPEC, arm="zero_shot", n_train=0, epochs=0, lr=0.0, init_from="0" * 16)
    assert unit_training_flops([zero], "fused") == 0.0


def test_the_cost_model_prices_a_compiled_unit_as_one_compilation_plus_faster_steps() -> None:
    tp = Throughput(latency=1e-3, per_sample=1e-4, eval_per_sample=3e-5)
    eager, compiled = unit_seconds([SPEC], tp), unit_seconds([SPEC], tp, compiled=True)
    steps = SPEC.epochs * 2  # N = 32 at batch 16
    train = steps * tp.step(16)
    assert compiled - eager == pytest.approx(COMPILE_SECONDS - (1 - COMPILED_STEP_FACTOR) * train)


def _run(tmp_path: Path, name: str, compile_mode: str) -> tuple[float, dict[str, float]]:
    uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    (out,) = execute([SPEC], RunContext(tracking_uri=uri, data_dir=tmp_path / "data", compile_mode=compile_mode),
                     progress=False)
    assert out.status == schema.FINISHED, out.failure_reason
    return out.test_rel_l2, MlflowClient(tracking_uri=uri).get_run(out.run_id).data.metrics


#: Inductor's CPU backend builds C++ kernels; without a compiler runs train eagerly (tested below).
HAVE_CXX = any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler for inductor's CPU kernels")
def test_a_compiled_run_trains_like_the_eager_one_and_says_it_compiled(tmp_path: Path) -> None:
    eager, eager_metrics = _run(tmp_path, "eager", "off")
    torch._dynamo.utils.counters.clear()
    compiled, metrics = _run(tmp_path, "compiled", "on")
    assert eager_metrics[schema.M_COMPILED] == 0.0 and metrics[schema.M_COMPILED] == 1.0
    # Dynamo captured two graphs, the batch loss (forward and loss) and the optimiser update, each once for all 8 steps
    # (the update's per-step values reach it as tensors, not as constants that recompile).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    # Same seeds, data order and steps; only floating-point reassociation differs (measured ~1e-6).
    assert compiled == pytest.approx(eager, rel=1e-3)
    assert metrics[schema.M_BEST_EPOCH] == eager_metrics[schema.M_BEST_EPOCH]


def test_a_compiler_that_fails_leaves_the_unit_training_eagerly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A real compiler failure: inductor's C++ compiler set to a path that does not exist, and no
    cached kernels to skip it."""
    from torch._inductor import config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with inductor.patch({"cpp.cxx": (str(tmp_path / "no-such-c++"),), "fx_graph_cache": False}), \
            caplog.at_level(logging.WARNING, logger="repro.train.compiled"):
        test_err, metrics = _run(tmp_path, "fallback", "on")
    assert metrics[schema.M_COMPILED] == 0.0
    failed = [r.getMessage() for r in caplog.records if "torch.compile of the training" in r.getMessage()]
    assert any("forward and loss failed" in m for m in failed) and any("optimiser update failed" in m for m in failed), failed
    eager, _ = _run(tmp_path, "eager", "off")
    assert test_err == pytest.approx(eager, rel=1e-5)  # the failed step was redone eagerly, nothing applied twice
    torch._dynamo.reset()


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler for inductor's CPU kernels")
def test_the_compiled_batch_loss_masks_a_non_finite_member_as_the_eager_one_does() -> None:
    """The loss and its non-finite mask are inside the compiled graph: a member whose loss is not
    finite adds nothing to the differentiated total, and the other member's loss and gradients are
    the eager ones."""
    from repro.config import ModelSpec
    from repro.models import FNO
    from repro.train.compiled import compile_batch_loss
    from repro.train.loop import batch_loss

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    y[1, 0, 0, 0] = float("inf")  # member 1's target is broken: its loss is inf
    results = []
    for compiled in (False, True):
        model = FNO(ModelSpec.from_ladder("xxs", 4), members=2, spectral="fused", seeds=[0, 1])
        loss_of = compile_batch_loss(batch_loss(model)) if compiled else batch_loss(model)
        loss, total = loss_of(x, y)
        total.backward()
        grads = [p.grad[0].clone() for p in model.parameters()]  # member 0's gradient of every tensor
        results.append((loss.detach(), total.detach(), grads))
    torch._dynamo.reset()
    (eager_loss, eager_total, eager_grads), (loss, total, grads) = results
    assert torch.isinf(loss[1]) and torch.isfinite(total)
    assert torch.allclose(total, eager_loss[0], rtol=1e-5) and torch.allclose(loss[0], eager_loss[0], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, eager_grads))
