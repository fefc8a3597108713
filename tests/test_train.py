"""Training engine: optimiser, loop, arms, MLflow records, failures, batched == sequential."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from repro import schema
from repro.config import DatasetSpec, RunSpec
from repro.data import ensure_split, load_split
from repro.data.normalise import build_inputs
from repro.data.subsets import nested_subset
from repro.models import FNO, load_members
from repro.models.checkpoint import load_checkpoint
from repro import tracking
from repro.ensembles import batch_key, ensemble_cap, group_specs
from repro.train import pretrained
from repro.train.engine import execute
from repro.execution import RunContext
from repro.train.loop import EnsembleData, Schedule, evaluate, train_ensemble
from repro.train.optim import EnsembleAdam, cosine_factor

UP = DatasetSpec(pde="poisson", low=1, high=5, resolution=16, n_train=96, n_val=16, n_test=16, seed=3)
DOWN = DatasetSpec(pde="poisson", low=5, high=10, resolution=16, n_train=64, n_val=16, n_test=16, seed=3)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("engine")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data_dir = root / "data"
    pretrain = RunSpec(arm="scratch", data=UP, model="xxs", n_train=96, lr=3e-3, epochs=6, seed=0)
    (outcome,) = execute([pretrain], RunContext(tracking_uri=uri, data_dir=data_dir), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason
    return {"uri": uri, "data_dir": data_dir, "pretrain": pretrain, "outcome": outcome}


def _split_tensors(spec: DatasetSpec, split: str, data_dir: Path, normaliser=None):
    ensure_split(spec, split, data_dir)
    data = load_split(spec, split, data_dir)
    norm = normaliser or load_split(spec, "train", data_dir).normaliser
    x = build_inputs(torch.from_numpy(data.source), torch.from_numpy(data.tensor), norm).float()
    return x, torch.from_numpy(data.solution).float()


def test_one_member_adam_matches_torch_adam() -> None:
    torch.manual_seed(0)
    p_ours = torch.randn(1, 5, 3, requires_grad=True)
    p_ref = p_ours.detach().clone().requires_grad_(True)
    ours = EnsembleAdam([p_ours], [1e-2])
    ref = torch.optim.Adam([p_ref], lr=1e-2)
    for step in range(20):
        target = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(step))
        for p, opt in ((p_ours, ours), (p_ref, ref)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
        ours.step()
        ref.step()
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-6, atol=1e-7)


def test_the_eager_update_is_the_per_parameter_arithmetic_bit_for_bit() -> None:
    """The update written once for the eager and the compiled path (optim.adam_update) is, eagerly,
    the per-parameter loop the study's runs were trained with: equal to the last bit."""
    torch.manual_seed(0)
    lrs, shapes = [1e-3, 3e-3, 1e-2], [(3, 5, 4), (3, 7), (3, 2, 2, 3)]
    ours = [torch.randn(s, requires_grad=True) for s in shapes]
    ref = [p.detach().clone() for p in ours]
    m_ref, v_ref = [torch.zeros_like(p) for p in ref], [torch.zeros_like(p) for p in ref]
    opt = EnsembleAdam(ours, lrs)
    base = torch.tensor(lrs)
    for t in range(1, 31):
        factor = cosine_factor(t - 1, 30)
        opt.zero_grad()
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(t * 7 + i)) for i, s in enumerate(shapes)]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step(factor)
        step_size, bias2_sqrt = base * (factor / (1 - 0.9 ** t)), math.sqrt(1 - 0.999 ** t)
        for p, g, m, v in zip(ref, grads, m_ref, v_ref):  # the loop as it was
            m.lerp_(g, 1.0 - 0.9)
            v.mul_(0.999).addcmul_(g, g, value=1.0 - 0.999)
            denom = (v.sqrt() / bias2_sqrt).add_(1e-8)
            p.addcdiv_(m * step_size.view(-1, *([1] * (p.dim() - 1))), denom, value=-1.0)
    assert all(torch.equal(a.detach(), b) for a, b in zip(ours, ref))


def test_members_get_their_own_learning_rate() -> None:
    p = torch.zeros(3, 4, requires_grad=True)
    opt = EnsembleAdam([p], [1e-3, 1e-2, 0.1])
    p.sum().backward()
    opt.step()
    # Adam's first step moves every coordinate by exactly lr (sign of the gradient).
    np.testing.assert_allclose(p.detach()[:, 0].numpy(), [-1e-3, -1e-2, -0.1], rtol=1e-5)


def test_cosine_schedule_decays_from_one_to_zero() -> None:
    assert cosine_factor(0, 100) == 1.0
    assert math.isclose(cosine_factor(50, 100), 0.5, abs_tol=1e-12)
    assert math.isclose(cosine_factor(100, 100), 0.0, abs_tol=1e-12)


def test_tiny_fno_lowers_validation_error_five_fold(tmp_path: Path) -> None:
    spec = DatasetSpec(pde="poisson", low=1, high=2, resolution=16, n_train=128, n_val=32, n_test=8, seed=5)
    x, y = _split_tensors(spec, "train", tmp_path)
    xv, yv = _split_tensors(spec, "val", tmp_path)
    model = FNO(RunSpec(arm="scratch", data=spec, model="xs", n_train=128, lr=1e-3, epochs=1).model_spec,
                seeds=[0])
    before = evaluate(model, xv, yv).mean().item()
    data = EnsembleData(inputs=x, targets=y, subsets=torch.arange(128).unsqueeze(0))
    result = train_ensemble(model, data, xv, yv, Schedule(epochs=40, batch_size=16, lrs=(5e-3,)), seeds=[0])
    after = evaluate(model, xv, yv).mean().item()
    assert result.failure == [None]
    assert after == pytest.approx(result.best_val[0], rel=1e-5)
    assert after * 5 <= before, (before, after)


def test_ensemble_training_equals_one_by_one(tmp_path: Path) -> None:
    spec = DatasetSpec(pde="poisson", low=1, high=2, resolution=16, n_train=32, n_val=8, n_test=8, seed=2)
    x, y = _split_tensors(spec, "train", tmp_path)
    xv, yv = _split_tensors(spec, "val", tmp_path)
    model_spec = RunSpec(arm="scratch", data=spec, model="xxs", n_train=16, lr=1e-3, epochs=1).model_spec
    seeds, lrs = [0, 1, 2], (1e-3, 3e-3, 1e-2)
    subsets = torch.from_numpy(np.stack([nested_subset(32, 16, s) for s in seeds])).long()
    together = FNO(model_spec, members=3, seeds=seeds)
    res = train_ensemble(together, EnsembleData(x, y, subsets), xv, yv, Schedule(epochs=4, batch_size=8, lrs=lrs),
                         seeds=seeds)
    for m, (seed, lr) in enumerate(zip(seeds, lrs)):
        alone = FNO(model_spec, members=1, seeds=[seed])
        res1 = train_ensemble(alone, EnsembleData(x, y, subsets[m:m + 1]), xv, yv,
                              Schedule(epochs=4, batch_size=8, lrs=(lr,)), seeds=[seed])
        assert res1.best_epoch[0] == res.best_epoch[m]
        assert res1.best_val[0] == pytest.approx(res.best_val[m], rel=1e-4)
        for (name, p_all), p_one in zip(together.named_parameters(), alone.parameters()):
            torch.testing.assert_close(p_all[m:m + 1], p_one, rtol=1e-4, atol=1e-6, msg=name)


def test_nested_subsets_are_nested_and_shared_across_arms() -> None:
    small, large = nested_subset(1024, 8, seed=4), nested_subset(1024, 16, seed=4)
    assert list(large[:8]) == list(small)
    scratch = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1, seed=4)
    transfer = RunSpec(arm="transfer", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1, seed=4,
                       init_from="0123456789abcdef")
    # The engine draws subsets from (split size, N, seed) only, never from the arm.
    assert (scratch.data.n_train, scratch.n_train, scratch.seed) == (transfer.data.n_train, transfer.n_train,
                                                                     transfer.seed)


def test_mlflow_round_trip_params_metrics_artifacts(store) -> None:
    client = MlflowClient(store["uri"])
    run = client.get_run(store["outcome"].run_id)
    spec: RunSpec = store["pretrain"]
    assert run.info.status == schema.FINISHED
    assert run.data.tags[schema.T_RUN_KEY] == spec.run_key
    assert run.data.params[schema.P_DATA_PDE] == "poisson"
    assert float(run.data.params[schema.P_LR]) == spec.lr
    assert run.data.params[schema.P_MODEL] == "xxs"
    assert int(run.data.params[schema.P_WIDTH]) == 8
    for tag in (schema.T_GIT_SHA, schema.T_GIT_DIRTY, schema.T_DEVICE, "version.torch",
                f"{schema.T_DATA_HASH_PREFIX}train"):
        assert run.data.tags.get(tag), tag
    history = client.get_metric_history(run.info.run_id, schema.M_VAL_REL_L2)
    assert [m.step for m in history] == list(range(1, 7))
    assert len(client.get_metric_history(run.info.run_id, schema.M_TRAIN_LOSS)) == 6
    assert run.data.metrics[schema.M_TEST_REL_L2] == pytest.approx(store["outcome"].test_rel_l2)
    assert run.data.metrics[schema.M_N_PARAMS] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert schema.A_PREDICTIONS in artifacts
    local = pretrained.resolve_checkpoint(spec.run_key, store["uri"])
    raw = torch.load(local, weights_only=True)  # plain tensors and primitives only
    assert isinstance(raw, dict)
    checkpoint = load_checkpoint(local)
    assert checkpoint.data_spec["pde"] == "poisson" and checkpoint.model_spec.width == 8


def test_zero_shot_equals_evaluating_the_loaded_model(store) -> None:
    spec = RunSpec(arm="zero_shot", data=DOWN, model="xxs", n_train=0, lr=0.0, epochs=0,
                   init_from=store["pretrain"].run_key)
    (outcome,) = execute([spec], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason
    checkpoint = load_checkpoint(pretrained.resolve_checkpoint(store["pretrain"].run_key, store["uri"]))
    from repro.data.normalise import Normaliser

    x, y = _split_tensors(DOWN, "test", store["data_dir"], Normaliser.from_dict(checkpoint.normaliser))
    model = FNO(checkpoint.model_spec, seeds=[99])
    load_members(model, checkpoint.state)
    assert outcome.test_rel_l2 == pytest.approx(evaluate(model, x, y).mean().item(), rel=1e-5)
    run = MlflowClient(store["uri"]).get_run(outcome.run_id)
    assert run.data.tags[schema.T_SHIFT] == "poisson(1,5) -> poisson(5,10)"
    assert run.data.params[schema.P_UPSTREAM_LOW] == "1.0"


def test_transfer_starts_from_the_checkpoint_predictions(store) -> None:
    checkpoint = load_checkpoint(pretrained.resolve_checkpoint(store["pretrain"].run_key, store["uri"]))
    single = FNO(checkpoint.model_spec, seeds=[0])
    load_members(single, checkpoint.state)
    ensemble = FNO(checkpoint.model_spec, members=3, seeds=[5, 6, 7])
    load_members(ensemble, checkpoint.state)
    x = torch.randn(2, checkpoint.model_spec.in_channels, 16, 16)
    with torch.no_grad():
        ref = single(x.unsqueeze(0))[0]
        out = ensemble(x.unsqueeze(0).expand(3, *x.shape))
    for m in range(3):
        torch.testing.assert_close(out[m], ref)


def test_transfer_beats_scratch_and_batched_runs_are_recorded_separately(store) -> None:
    common = dict(data=DOWN, model="xxs", n_train=8, epochs=8)
    transfer = [RunSpec(arm="transfer", lr=lr, seed=0, init_from=store["pretrain"].run_key, **common)
                for lr in (1e-3, 3e-3)]
    outcomes = execute(transfer, RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert [o.status for o in outcomes] == [schema.FINISHED] * 2
    assert len({o.run_id for o in outcomes}) == 2
    assert len(group_specs(transfer)) == 1 and batch_key(transfer[0]) == batch_key(transfer[1])


def test_diverging_run_fails_with_reason_and_others_finish(store) -> None:
    good = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=3, seed=1)
    bad = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e12, epochs=3, seed=1)
    out_good, out_bad = execute([good, bad], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert out_good.status == schema.FINISHED
    assert out_bad.status == schema.FAILED and "diverged" in out_bad.failure_reason
    run = MlflowClient(store["uri"]).get_run(out_bad.run_id)
    assert run.info.status == schema.FAILED
    assert "diverged" in run.data.tags[schema.T_FAILURE_REASON]


def test_finite_blow_up_fails_as_diverged_with_the_number(store) -> None:
    """lr = 10 stays finite but goes far beyond the zero predictor (issue 11 #9): FAILED as
    diverged with the number; the ensemble's sane member finishes as before."""
    from repro.train.loop import DIVERGENCE_FACTOR, divergence_limit

    assert DIVERGENCE_FACTOR == 10 and divergence_limit(0.3) == 10 and divergence_limit(2.5) == 25
    assert divergence_limit(math.nan) == 10
    good = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=3, seed=2)
    bad = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=10.0, epochs=3, seed=2)
    out_good, out_bad = execute([good, bad], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert out_good.status == schema.FINISHED and out_good.failure_reason is None
    assert math.isfinite(out_good.test_rel_l2) and out_good.test_rel_l2 < DIVERGENCE_FACTOR
    assert out_bad.status == schema.FAILED
    reason = out_bad.failure_reason
    assert reason.startswith("diverged: validation rel-L2 ") and "exceeds 10x max(initial validation rel-L2" in reason
    value = float(reason.removeprefix("diverged: validation rel-L2 ").split()[0])
    assert math.isfinite(value) and value > 10, reason  # the number, finite: not the non-finite rule
    assert "(lr=10)" in reason
    run = MlflowClient(store["uri"]).get_run(out_bad.run_id)
    assert run.info.status == schema.FAILED and run.data.tags[schema.T_FAILURE_REASON] == reason
    history = MlflowClient(store["uri"]).get_metric_history(out_bad.run_id, schema.M_VAL_REL_L2)
    assert history and all(math.isfinite(m.value) for m in history)  # finite all along


def _fresh_pretrain(tmp_path: Path, store) -> tuple[str, RunSpec, str]:
    """A pre-training run of its own (this test damages its checkpoint): uri, spec, run id."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = RunSpec(arm="scratch", data=UP, model="xxs", n_train=16, lr=3e-3, epochs=1, seed=5)
    (outcome,) = execute([spec], RunContext(tracking_uri=uri, data_dir=store["data_dir"], grid="ckpt-heal"), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason
    return uri, spec, outcome.run_id


def test_a_damaged_cached_checkpoint_is_fetched_again(store, tmp_path: Path, caplog) -> None:
    """Issue 11 #3: a cached checkpoint that fails to load is replaced from the intact artifact."""
    import logging
    import zipfile

    uri, pre, _ = _fresh_pretrain(tmp_path, store)
    cached = pretrained.resolve_checkpoint(pre.run_key, uri)
    whole = cached.read_bytes()
    transfer = dict(arm="transfer", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1, init_from=pre.run_key)

    cached.write_bytes(whole[: len(whole) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="repro.train"):
        (outcome,) = execute([RunSpec(seed=0, **transfer)], RunContext(tracking_uri=uri, data_dir=store["data_dir"]), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason
    assert cached.read_bytes() == whole
    assert any(str(cached) in r.getMessage() and "fetched again" in r.getMessage() for r in caplog.records)

    with zipfile.ZipFile(cached, "w") as z:  # a whole archive that is no checkpoint: only loading tells
        z.writestr("junk", b"x")
    checkpoint = pretrained.load_pretrained(pre.run_key, uri)
    assert checkpoint.model_spec == pre.model_spec and cached.read_bytes() == whole
    (outcome,) = execute([RunSpec(seed=1, **transfer)], RunContext(tracking_uri=uri, data_dir=store["data_dir"]), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason


def test_a_lost_checkpoint_says_how_to_recreate_it(store, tmp_path: Path) -> None:
    """Artifact and cache both gone: the reason names the run_key and the commands that
    re-create the pre-training run; doing what it says makes the dependant finish."""
    import shlex

    uri, pre, run_id = _fresh_pretrain(tmp_path, store)
    cached = pretrained.resolve_checkpoint(pre.run_key, uri)
    artifact = Path(MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://")) / schema.A_CHECKPOINT
    artifact.unlink()
    cached.unlink()
    spec = RunSpec(arm="transfer", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1, init_from=pre.run_key)
    (outcome,) = execute([spec], RunContext(tracking_uri=uri, data_dir=store["data_dir"], grid="down"), progress=False)
    assert outcome.status == schema.FAILED
    reason = outcome.failure_reason
    assert pre.run_key in reason and run_id in reason and "\n" not in reason
    delete = f"`MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {run_id}`"
    assert delete in reason and f"`repro run-grid --grid down --tracking-uri {uri}`" in reason, reason
    # Without a grid of its own the hint falls back to the pre-training run's grid tag.
    with pytest.raises(pretrained.CheckpointNotFound, match="run-grid --grid ckpt-heal "):
        pretrained.load_pretrained(pre.run_key, uri, cache_dir=tmp_path / "other-cache")
    # Doing what it says: delete the run (as `mlflow runs delete` does), train it again.
    env_uri, command = delete.strip("`").split(" ", 1)
    assert env_uri == f"MLFLOW_TRACKING_URI={uri}" and shlex.split(command)[:3] == ["mlflow", "runs", "delete"]
    MlflowClient(uri).delete_run(run_id)
    with pytest.raises(pretrained.CheckpointNotFound, match=f"{pre.run_key}: no FINISHED run.*repro run-grid --grid"):
        pretrained.resolve_checkpoint(pre.run_key, uri)
    (again,) = execute([pre], RunContext(tracking_uri=uri, data_dir=store["data_dir"], grid="ckpt-heal"), progress=False)
    assert again.status == schema.FINISHED
    (outcome,) = execute([spec], RunContext(tracking_uri=uri, data_dir=store["data_dir"], grid="down"), progress=False)
    assert outcome.status == schema.FINISHED, outcome.failure_reason


def test_missing_checkpoint_fails_the_run_naming_it(store) -> None:
    spec = RunSpec(arm="transfer", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1,
                   init_from="ffffffffffffffff")
    (outcome,) = execute([spec], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert outcome.status == schema.FAILED
    assert "ffffffffffffffff" in outcome.failure_reason


def _cli(*args: str) -> object:
    from repro.cli import app

    return CliRunner().invoke(app, ["train", *args])


def test_cli_errors_are_one_line_and_name_the_problem(store, tmp_path: Path) -> None:
    base = ["--tracking-uri", store["uri"], "--data-dir", str(store["data_dir"]), "--resolution", "16",
            "--sizes", "64,16,16", "--data-seed", "3", "--device", "cpu"]
    missing = _cli("--pde", "poisson", "--range", "5,10", "--arm", "transfer", "--from", str(tmp_path / "no.pt"),
                   "--model", "xxs", *base)
    assert missing.exit_code == 2 and "no.pt" in missing.output
    too_many = _cli("--pde", "poisson", "--range", "5,10", "--n-train", "1000", "--model", "xxs", *base)
    assert too_many.exit_code == 2 and "n_train" in too_many.output
    unknown = _cli("--pde", "poisson", "--range", "5,10", "--model", "huge", *base)
    assert unknown.exit_code == 2 and "model" in unknown.output and "xs" in unknown.output
    mismatch = _cli("--pde", "advdiff", "--range", "1,2", "--arm", "transfer", "--from", store["pretrain"].run_key,
                    "--model", "xxs", *base)
    assert mismatch.exit_code == 2 and "channels" in mismatch.output
    bf16 = _cli("--pde", "poisson", "--range", "5,10", "--model", "xxs", "--precision", "bf16", *base)
    assert bf16.exit_code == 2 and "precision = 'bf16' needs a CUDA device, not 'cpu'" in bf16.output
    typo = _cli("--pde", "poisson", "--range", "5,10", "--model", "xxs", "--precision", "fp16", *base)
    assert typo.exit_code == 2 and "allowed: fp32, bf16" in typo.output
    compile_typo = _cli("--pde", "poisson", "--range", "5,10", "--model", "xxs", "--compile", "yes", *base)
    assert compile_typo.exit_code == 2 and "--compile: compile = 'yes' is invalid: allowed: auto, on, off" in compile_typo.output
    for result in (missing, too_many, unknown, mismatch, bf16, typo, compile_typo):
        assert "Traceback" not in result.output
    spec = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1)
    with pytest.raises(ValueError, match="needs a CUDA device"):  # before any run is recorded
        execute([spec], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"], precision="bf16"), progress=False)
    with pytest.raises(ValueError, match="compile = 'always' is invalid"):
        execute([spec], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"], compile_mode="always"), progress=False)


def test_cli_trains_a_scratch_run(store) -> None:
    result = _cli("--pde", "poisson", "--range", "5,10", "--n-train", "8", "--model", "xxs", "--epochs", "2",
                  "--tracking-uri", store["uri"], "--data-dir", str(store["data_dir"]), "--resolution", "16",
                  "--sizes", "64,16,16", "--data-seed", "3", "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "test rel L2" in result.output
    run_id = result.output.split("mlflow run ")[1].split()[0]
    params = MlflowClient(store["uri"]).get_run(run_id).data.params
    # precision is an execution option like fast: logged on every run, not part of the run_key
    assert params[schema.P_PRECISION] == "fp32" and params[schema.P_FAST] == "True"
    assert params[schema.P_SPECTRAL] == "fused"  # the CPU default


def test_cpu_ensembles_stay_cache_sized() -> None:
    small = RunSpec(arm="scratch", data=DOWN, model="xxs", n_train=8, lr=1e-3, epochs=1)
    assert ensemble_cap(small, "cpu") == 16  # 8 x 8 x 16^2 floats per member: far below the cliff
    big_data = DatasetSpec(pde="poisson", low=1, high=5, resolution=128, n_train=256, n_val=8, n_test=8)
    big = RunSpec(arm="scratch", data=big_data, model="l", n_train=256, lr=1e-3, epochs=1)
    assert ensemble_cap(big, "cpu") == 1 and ensemble_cap(big, "cuda") == 16
    specs = [dataclasses.replace(big, seed=s) for s in range(3)]
    assert [len(g) for g in group_specs(specs, device="cpu")] == [1, 1, 1]
    assert [len(g) for g in group_specs(specs)] == [3]


OOM_SCRIPT = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2500 * 2**20, resource.RLIM_INFINITY))
from repro.config import DatasetSpec, RunSpec
from repro import ensembles
from repro.train.engine import execute
from repro.execution import RunContext
ensembles.CPU_ENSEMBLE_FLOATS = 2**24  # let the two xl runs form one ensemble on this CPU
big = DatasetSpec(pde="poisson", low=1, high=5, resolution=64, n_train=8, n_val=4, n_test=4, seed=1)
small = DatasetSpec(pde="poisson", low=1, high=5, resolution=16, n_train=8, n_val=4, n_test=4, seed=1)
specs = [RunSpec(arm="scratch", data=big, model="xl", n_train=2, lr=lr, epochs=1) for lr in (1e-3, 2e-3)]
specs.append(RunSpec(arm="scratch", data=small, model="xxs", n_train=8, lr=1e-3, epochs=1))
out = execute(specs, RunContext(tracking_uri=sys.argv[1], data_dir=sys.argv[2], device="cpu"), progress=False)
print(json.dumps([[o.status, o.failure_reason] for o in out]))
"""


def test_out_of_memory_fails_the_runs_with_reason_and_others_finish(tmp_path: Path) -> None:
    """A real allocation failure (address space capped at 2.5 GB; the xl model needs more)."""
    import json
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.init_store(uri)  # outside the capped process
    res = subprocess.run([sys.executable, "-c", OOM_SCRIPT, uri, str(tmp_path / "data")], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (xl_a, reason_a), (xl_b, reason_b), (small, _) = json.loads(res.stdout.strip().splitlines()[-1])
    assert (xl_a, xl_b, small) == (schema.FAILED, schema.FAILED, schema.FINISHED)
    assert reason_a.startswith("out of memory") and reason_b.startswith("out of memory")
    runs = MlflowClient(uri).search_runs([tracking.experiment_id(uri)])
    reasons = [r.data.tags.get(schema.T_FAILURE_REASON, "") for r in runs if r.info.status == schema.FAILED]
    # First as a 2-run ensemble, then each run alone: every attempt is recorded with its reason.
    assert sum("retried in smaller ensembles" in r for r in reasons) == 2
    assert sum(r.startswith("out of memory: ") for r in reasons) == 2


def test_a_corrupt_split_is_read_once_then_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The engine hashes a bad file once, rewrites it, and verifies only the new one."""
    import logging

    from repro.data import store as data_store
    from repro.train.engine import _read_split

    spec = dataclasses.replace(DOWN, n_train=8, seed=11)
    path = ensure_split(spec, "val", tmp_path)
    good = load_split(spec, "val", tmp_path).content_hash
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated by a crash
    reads = []
    real = data_store._read
    monkeypatch.setattr(data_store, "_read", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="repro.train"):
        split = _read_split(spec, "val", tmp_path)
    assert split.content_hash == good and reads == [path, path]
    assert any(str(path) in r.getMessage() and "regenerating" in r.getMessage() for r in caplog.records)


def test_convergence_diagnostic_on_hand_made_histories() -> None:
    from repro.train.loop import CONVERGENCE_THRESHOLD, convergence, late_cutoff

    epochs = 50  # cut-off ceil(0.8 * 50) = 40: the last fifth is epochs 41..50
    assert late_cutoff(50) == 40 and late_cutoff(35) == 28 and late_cutoff(4) == 4 and late_cutoff(5) == 4
    plateau = [(e, 0.1 + 0.5 * math.exp(-e / 3)) for e in range(5, 51, 5)]  # flat long before epoch 40
    verdict = convergence(plateau, epochs)
    assert verdict.converged and 0 <= verdict.late_improvement < 1e-4 and verdict.reason is None
    falling = [(e, 1.0 / e) for e in range(5, 51, 5)]  # best up to epoch 40: 1/40, overall 1/50
    verdict = convergence(falling, epochs)
    assert verdict.late_improvement == pytest.approx((1 / 40 - 1 / 50) / (1 / 40)) and not verdict.converged
    # The best came before the last fifth (a later bump does not count against the run): exactly 0.
    assert convergence([(10, 0.2), (40, 0.1), (50, 0.3)], epochs).late_improvement == 0.0
    # Below / above the threshold.
    assert convergence([(40, 1.0), (50, 1.0 - CONVERGENCE_THRESHOLD / 2)], epochs).converged
    assert not convergence([(40, 1.0), (50, 1.0 - 2 * CONVERGENCE_THRESHOLD)], epochs).converged
    # No evaluation after the cut-off (eval_every too coarse for a short run): NaN, with a reason.
    for history, n in (([(3, 0.5)], 3), ([(5, 0.5), (10, 0.4)], 12), ([], 10)):
        verdict = convergence(history, n)
        assert math.isnan(verdict.late_improvement) and not verdict.converged and "not measurable" in verdict.reason


class _MatmulFlops(torch.overrides.TorchFunctionMode):
    """Counts 2 FLOPs per multiply-add of every torch.matmul / bmm executed inside it (torch's
    own FlopCounterMode agrees, but its first use costs ~10 s of imports)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.flops += 2 * out.numel() * args[0].shape[-1]  # (..., M, K) @ (..., K, N) -> (..., M, N)
        elif func in (torch.baddbmm, torch.Tensor.baddbmm_):  # C + A @ B: the fused path's GEMMs
            self.flops += 2 * out.numel() * args[1].shape[-1]
        return out


def _packed_zero_flops(spec, rows: int) -> int:
    """The products the fused path's packed 1x1 maps spend on the zeros of their block-diagonal
    weights (``(g - 1)`` times each map's useful work), which forward_flops leaves out."""
    from repro.models.fno import row_packing

    w = spec.width
    maps = [(spec.in_channels, w)] + [(w, w)] * spec.n_layers + [(w, 2 * w), (2 * w, 1)]
    return sum((row_packing(n_out, rows, torch.device("cpu")) - 1) * 2 * n_in * n_out * rows for n_in, n_out in maps)


def test_forward_flops_match_a_hand_count_and_the_executed_matmuls() -> None:
    from repro.config import ModelSpec
    from repro.flops import forward_flops

    spec = ModelSpec(in_channels=2, width=3, n_modes=2, n_layers=2)  # C=2, w=3, m=2, L=2 on an 8x8 grid
    pointwise = (2 * 2 * 3 * 64  # lift 2 -> 3 at 64 pixels, 2 FLOPs per multiply-add: 768
                 + 2 * (2 * 3 * 3 * 64)  # two 1x1 convs 3 -> 3: 2304
                 + 2 * 3 * 6 * 64 + 2 * 6 * 1 * 64)  # projection 3 -> 6 -> 1: 3072
    mixing = 16 * 3 * 3 * 2 * 2  # 2 m² = 8 modes x 9 complex multiply-adds x 8 FLOPs = 576
    # Fast path per layer and channel: x-DFT (8x8)@(8x4) = 512, y-DFT (2x16)@(16x8) = 512; 3 in + 3 out.
    assert forward_flops(spec, 8, "fast") == pointwise + 2 * (6 * (512 + 512) + mixing) == 19584
    # Reference: rfft2 / irfft2 at 2.5 N log2 N per channel, N = 64: 960.
    assert forward_flops(spec, 8, "reference") == pointwise + 2 * (6 * 960 + mixing) == 18816
    # The fast paths are nothing but matmuls: a count of the executed GEMMs agrees exactly.
    assert forward_flops(spec, 8, "fused") == forward_flops(spec, 8, "fast")
    for model_spec, n in ((spec, 8), (ModelSpec(in_channels=4, width=16, n_modes=4), 16)):
        for path in ("fast", "fused"):
            model = FNO(model_spec, spectral=path)
            with torch.no_grad(), _MatmulFlops() as counter:
                model(torch.randn(1, 3, model_spec.in_channels, n, n))  # one member, 3 samples
            packed = _packed_zero_flops(model_spec, rows=3 * n * n) if path == "fused" else 0
            assert counter.flops == 3 * forward_flops(model_spec, n, path) + packed, path
    # the tiny spec's 3 -> 6 projection is computed on row pairs: half its executed products are zeros
    assert _packed_zero_flops(spec, rows=3 * 64) == 3 * (2 * 3 * 6 * 64)
    with pytest.raises(ValueError, match="spectral"):
        forward_flops(spec, 8, "fft")


def test_runs_record_convergence_and_compute_and_collect_reads_them(store) -> None:
    from analysis.collect import collect_runs
    from repro.flops import forward_flops
    from repro.train.engine import compute_metrics
    from repro.train.loop import CONVERGENCE_THRESHOLD, EnsembleResult

    pre: RunSpec = store["pretrain"]
    common = dict(data=DOWN, model="xxs", lr=3e-3, seed=0, init_from=pre.run_key)
    short = RunSpec(arm="transfer", n_train=8, epochs=3, **common)  # ceil(0.8 * 3) = 3: nothing after it
    zero = RunSpec(arm="zero_shot", n_train=0, epochs=0, **{**common, "lr": 0.0})
    outcomes = execute([short, zero], RunContext(tracking_uri=store["uri"], data_dir=store["data_dir"]), progress=False)
    assert [o.status for o in outcomes] == [schema.FINISHED] * 2, [o.failure_reason for o in outcomes]
    df = collect_runs(store["uri"]).set_index(schema.C_RUN_ID)
    row_pre, row_short, row_zero = (df.loc[o.run_id] for o in (store["outcome"], *outcomes))
    per_sample = forward_flops(pre.model_spec, 16, "fused")  # the CPU default path
    # Pre-training: 6 epochs x 96 samples, x3 for forward + backward, and 6 validation passes of 16.
    assert row_pre[schema.M_SAMPLE_STEPS] == 6 * 96
    assert row_pre[schema.M_FLOPS] == pytest.approx(3 * per_sample * 6 * 96 + per_sample * 16 * 6)
    assert math.isnan(row_pre[schema.M_PRETRAIN_FLOPS])  # scratch: nothing inherited
    # Evaluated every epoch of 6: the last fifth (epoch 6) is measurable.
    assert row_pre[schema.M_LATE_IMPROVEMENT] >= 0 and row_pre[schema.C_CONVERGENCE_REASON] is None
    assert row_pre[schema.M_CONVERGED] == float(row_pre[schema.M_LATE_IMPROVEMENT] <= CONVERGENCE_THRESHOLD)
    assert row_short[schema.M_FLOPS] == pytest.approx(3 * per_sample * 3 * 8 + per_sample * 16 * 3)
    assert row_short[schema.M_PRETRAIN_FLOPS] == pytest.approx(row_pre[schema.M_FLOPS])  # from the checkpoint meta
    assert math.isnan(row_short[schema.M_LATE_IMPROVEMENT]) and row_short[schema.M_CONVERGED] == 0.0
    assert "not measurable" in row_short[schema.C_CONVERGENCE_REASON]
    # Zero-shot: nothing trained, so no convergence; compute is one validation pass.
    assert math.isnan(row_zero[schema.M_LATE_IMPROVEMENT]) and math.isnan(row_zero[schema.M_CONVERGED])
    assert row_zero[schema.M_SAMPLE_STEPS] == 0 and row_zero[schema.M_FLOPS] == pytest.approx(per_sample * 16)
    assert row_zero[schema.M_PRETRAIN_FLOPS] == pytest.approx(row_pre[schema.M_FLOPS])
    # A checkpoint written before compute was recorded: NaN, not a failure.
    old = load_checkpoint(pretrained.resolve_checkpoint(pre.run_key, store["uri"]))
    assert old.meta[schema.M_FLOPS] == pytest.approx(row_pre[schema.M_FLOPS])
    result = EnsembleResult(best_val=[0.1], best_epoch=[1], failure=[None], train_seconds=1.0, samples_seen=8)
    metrics = compute_metrics(short, result, "fast", dataclasses.replace(old, meta={}))
    assert math.isnan(metrics[schema.M_PRETRAIN_FLOPS])
