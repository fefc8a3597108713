"""FNO ensembles (repro.models): gradients, parameter counts, fast == reference, ensembles,
resolution handling, member states and checkpoints.  Tiny sizes: the file runs in seconds on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from repro.config import MODEL_LADDER, ModelSpec
from repro.models import (FNO, SPECTRAL_PATHS, CheckpointError, build_dft_basis, build_model,
                          count_parameters, default_spectral, load_checkpoint, load_members,
                          member_state, resolve_spectral, save_checkpoint, spectral_fast, spectral_reference)
from repro.models.fno import check_precision

TINY = ModelSpec(in_channels=3, width=6, n_modes=3)


def _input(spec: ModelSpec, members: int, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(members, batch, spec.in_channels, n, n, generator=generator)  # (M, B, C, n, n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _loss_and_grads(model: FNO, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    target = torch.sin(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)
    ((out - target) ** 2).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), grads, x.grad


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("spectral", SPECTRAL_PATHS)
def test_every_parameter_of_every_member_gets_a_gradient(spectral: str) -> None:
    model = FNO(TINY, members=2, spectral=spectral)
    _, grads, _ = _loss_and_grads(model, _input(TINY, 2, 2, 12))
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, grad in grads.items():
        for i in range(2):
            assert grad[i].abs().sum() > 0, f"{name} member {i} got no gradient ({spectral})"


@pytest.mark.parametrize("spectral", SPECTRAL_PATHS)
def test_members_are_independent(spectral: str) -> None:
    model = FNO(TINY, members=2, spectral=spectral)
    out = model(_input(TINY, 2, 2, 12))
    (out[0] ** 2).sum().backward()  # member 0's loss only
    for name, p in model.named_parameters():
        assert p.grad[0].abs().sum() > 0, name
        assert torch.count_nonzero(p.grad[1]) == 0, f"member 0's loss reached member 1 through {name}"


# --------------------------------------------------------------------------- parameter count


def test_parameter_count_matches_protocol_default() -> None:
    # docs/protocol.md §2.3: w = 64, m = 32, C_in = 4 -> 67,134,273 parameters.
    spec = ModelSpec.from_ladder("l", 4)
    assert count_parameters(spec) == 67_134_273
    assert FNO(spec, device="meta").n_params_per_member == 67_134_273


@pytest.mark.parametrize("in_channels", [4, 7])
@pytest.mark.parametrize("size", list(MODEL_LADDER))
def test_parameter_count_formula_equals_real_count(size: str, in_channels: int) -> None:
    spec = ModelSpec.from_ladder(size, in_channels)
    model = FNO(spec, members=3, device="meta")  # shapes only: xl has 269M parameters per member
    real = sum(p.numel() for p in model.parameters())
    assert real == 3 * count_parameters(spec)
    assert model.n_params_per_member == count_parameters(spec)
    assert all(p.shape[0] == 3 for p in model.parameters())


def test_spectral_weights_dominate_as_protocol_says() -> None:
    spec = ModelSpec.from_ladder("xl", 4)
    w, m = spec.width, spec.n_modes
    assert math.isclose(count_parameters(spec), 16 * w * w * m * m, rel_tol=1e-3)


# --------------------------------------------------------------------------- fast == reference


@pytest.mark.parametrize(("n", "n_modes", "members"), [
    (8, 4, 1),    # n = 2m: the kept row blocks tile every row, Nyquist row included
    (12, 3, 3),
    (16, 4, 2),
    (20, 5, 1),   # not a power of two
    (32, 4, 2),
])
@pytest.mark.parametrize("path", ["fast", "fused"])
def test_fast_paths_equal_reference_outputs_and_gradients(n: int, n_modes: int, members: int, path: str) -> None:
    # Width 5 != modes and 3 != batch: a transposed or mislabelled axis cannot cancel out.
    spec = ModelSpec(in_channels=4, width=5, n_modes=n_modes)
    reference = FNO(spec, members=members, spectral="reference", seeds=range(7, 7 + members))
    fast = FNO(spec, members=members, spectral=path)
    fast.load_state_dict(reference.state_dict())
    x = _input(spec, members, 3, n, seed=n)
    out_r, grads_r, gx_r = _loss_and_grads(reference, x)
    out_f, grads_f, gx_f = _loss_and_grads(fast, x)
    assert _rel(out_f, out_r) <= 1e-5
    assert _rel(gx_f, gx_r) <= 1e-5
    for name in grads_r:
        assert _rel(grads_f[name], grads_r[name]) <= 1e-5, name


@pytest.mark.parametrize(("n_in", "n_out", "rows", "packs"), [
    (8, 8, 64, 2), (4, 8, 64, 2), (8, 5, 30, 3), (8, 4, 64, 4),   # packed
    (4, 8, 63, 1), (16, 16, 32, 1), (16, 1, 32, 1),               # rows not divisible, wide, 1 channel
])
def test_packed_narrow_pointwise_equals_one_plain_gemm(n_in: int, n_out: int, rows: int, packs: int) -> None:
    """The fused path's 1x1 maps pack rows when the output is narrow (CPU); outputs and gradients
    are those of the plain ``bias + h @ W^T``, and the rule packs exactly where it should."""
    from repro.models.fno import MemberLinear, _rows_pointwise, row_packing

    assert row_packing(n_out, rows, torch.device("cpu")) == packs
    assert row_packing(n_out, rows, torch.device("cuda")) == 1  # measured on CPU BLAS only
    linear = MemberLinear(2, n_in, n_out)
    gen = torch.Generator().manual_seed(n_out)
    for i in range(2):
        linear.reset_member(i, gen)
    h = torch.randn(2, rows, n_in, generator=gen, requires_grad=True)
    g_out = torch.randn(2, rows, n_out, generator=gen)
    results = []
    for fn in (_rows_pointwise, lambda h, lin: torch.baddbmm(lin.bias.unsqueeze(1), h, lin.weight.transpose(1, 2))):
        out = fn(h, linear)
        grads = torch.autograd.grad(out, (h, linear.weight, linear.bias), g_out)
        results.append((out, *grads))
    for packed, plain in zip(*results):
        assert packed.shape == plain.shape and _rel(packed, plain) <= 1e-6


def test_fused_path_rectangular_grid_and_no_grad_evaluation() -> None:
    """ny != nx exercises the fused bases' y and x orderings separately; eval runs under no_grad."""
    spec = ModelSpec(in_channels=3, width=6, n_modes=3)
    reference = FNO(spec, members=2, spectral="reference", seeds=[3, 4])
    fused = FNO(spec, members=2, spectral="fused")
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 3, 8, 14, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _rel(fused(x), reference(x)) <= 1e-5
    assert not fused.state_dict().keys() - reference.state_dict().keys()  # bases never in the state


def test_spectral_layer_matches_rfft2_in_float64() -> None:
    # Oracle for the truncated DFT alone: agreement to round-off, rectangular grid included.
    generator = torch.Generator().manual_seed(1)
    m = 3
    for ny, nx in [(6, 6), (10, 8), (9, 12)]:
        x = torch.randn(2, 2, 3, ny, nx, generator=generator, dtype=torch.float64)
        w = torch.randn(2, 2, m, m, 3, 4, 2, generator=generator, dtype=torch.float64)
        basis = build_dft_basis(ny, nx, m, dtype=torch.float64)
        assert _rel(spectral_fast(x, w, basis), spectral_reference(x, w)) < 1e-12


def test_single_fourier_mode_closed_form() -> None:
    # u = cos(2 pi (kx x + ky y)) with one real weight a on that mode -> a u (unit ortho scaling);
    # a mode outside the kept block is removed.
    n, m, a = 16, 4, 0.7
    coords = torch.arange(n, dtype=torch.float64) / n
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    w = torch.zeros(1, 2, m, m, 1, 1, 2, dtype=torch.float64)
    w[0, 0, 2, 1, 0, 0, 0] = a          # block [:m], ky = 2, kx = 1
    w[0, 1, m - 2, 1, 0, 0, 0] = a      # block [-m:], row n-2 (ky = -2), kx = 1: the conjugate partner
    kept = torch.cos(2 * math.pi * (xx + 2 * yy))[None, None, None]
    dropped = torch.cos(2 * math.pi * (5 * xx + yy))[None, None, None]
    basis = build_dft_basis(n, n, m, dtype=torch.float64)
    for fn in (lambda u: spectral_reference(u, w), lambda u: spectral_fast(u, w, basis)):
        torch.testing.assert_close(fn(kept), a * kept)
        torch.testing.assert_close(fn(dropped), torch.zeros_like(dropped))


# --------------------------------------------------------------------------- ensembles and seeds


@pytest.mark.parametrize("spectral", SPECTRAL_PATHS)
def test_ensemble_member_equals_single_model_with_its_seed(spectral: str) -> None:
    seeds = (11, 22, 33)
    ensemble = FNO(TINY, members=3, spectral=spectral, seeds=seeds)
    x = _input(TINY, 3, 2, 12)
    out = ensemble(x)
    for i, seed in enumerate(seeds):
        single = FNO(TINY, members=1, spectral=spectral, seeds=[seed])
        for name, value in single.state_dict().items():
            assert torch.equal(member_state(ensemble, i)[name], value), name
        torch.testing.assert_close(out[i:i + 1], single(x[i:i + 1]), rtol=1e-6, atol=1e-7)
    assert not torch.equal(ensemble.lift.weight[0], ensemble.lift.weight[1])


def test_default_seeds_and_bad_arguments() -> None:
    a, b = FNO(TINY, members=2), FNO(TINY, members=2, seeds=[0, 1])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="one seed per member"):
        FNO(TINY, members=2, seeds=[1])
    with pytest.raises(ValueError, match="spectral"):
        FNO(TINY, spectral="cufft")
    with pytest.raises(ValueError, match="members"):
        FNO(TINY, members=0)
    with pytest.raises(ValueError, match="in_channels=3"):
        FNO(TINY)(torch.zeros(1, 1, 4, 12, 12))


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("spectral", SPECTRAL_PATHS)
def test_same_weights_run_at_any_resolution(spectral: str) -> None:
    model = FNO(TINY, members=2, spectral=spectral)
    reference = FNO(TINY, members=2, spectral="reference")
    reference.load_state_dict(model.state_dict())
    for n in (16, 32, 6):  # 6 = 2 m, the coarsest allowed grid
        x = _input(TINY, 2, 2, n, seed=n)
        out = model(x)
        assert out.shape == (2, 2, n, n)
        assert _rel(out, reference(x)) <= 1e-5
    if spectral == "fast":  # one cached basis per grid, never in the state dict
        assert {k for k in dict(model.named_buffers())} >= {"dft_16x16_float32_fx", "dft_32x32_float32_fx"}
        assert not any(k.startswith("dft_") for k in model.state_dict())


@pytest.mark.parametrize("spectral", SPECTRAL_PATHS)
def test_spectral_layer_is_discretisation_invariant(spectral: str) -> None:
    # A band-limited field sampled on 16² and on 32² gives the same output field: the layer is
    # a function of the continuous input, not of the grid (ortho scaling).
    m = 3
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(1, 2, m, m, 2, 2, 2, generator=generator, dtype=torch.float64)
    coeff = torch.randn(2, 2 * m - 1, m, generator=generator, dtype=torch.float64)

    def field(n: int) -> torch.Tensor:
        coords = torch.arange(n, dtype=torch.float64) / n
        u = torch.zeros(2, n, n, dtype=torch.float64)
        for a, ky in enumerate(range(-m + 1, m)):
            for kx in range(m):
                phase = 2 * math.pi * (ky * coords[:, None] + kx * coords[None, :])
                u += coeff[:, a, kx, None, None] * torch.cos(phase + a + kx)
        return u[None, None]  # (M=1, B=1, I=2, n, n)

    def apply(u: torch.Tensor) -> torch.Tensor:
        if spectral == "reference":
            return spectral_reference(u, w)
        return spectral_fast(u, w, build_dft_basis(u.shape[-2], u.shape[-1], m, dtype=u.dtype))

    torch.testing.assert_close(apply(field(32))[..., ::2, ::2], apply(field(16)))


def test_too_coarse_resolution_is_a_clear_error() -> None:
    for spectral in SPECTRAL_PATHS:
        with pytest.raises(ValueError, match=r"resolution 4x4 is too coarse .* n_modes = 3: .* at least 2 \* n_modes = 6"):
            FNO(TINY, spectral=spectral)(torch.zeros(1, 1, 3, 4, 4))


# --------------------------------------------------------------------------- member states


def test_member_state_and_load_members() -> None:
    source = FNO(TINY, members=3, seeds=[1, 2, 3])
    state = member_state(source, 2)
    assert all(t.shape[0] == 1 and t.device.type == "cpu" for t in state.values())
    state["lift.bias"][0, 0] += 1.0  # a clone: the model is untouched
    assert not torch.equal(state["lift.bias"], source.lift.bias[2:3])

    target = FNO(TINY, members=3, seeds=[7, 8, 9])
    before = member_state(target, 0)
    load_members(target, member_state(source, 1), members=[1, 2])
    for name, value in member_state(target, 0).items():
        assert torch.equal(value, before[name])
    for i in (1, 2):
        for name, value in member_state(target, i).items():
            assert torch.equal(value, member_state(source, 1)[name])
    load_members(target, member_state(source, 1))
    x = _input(TINY, 1, 2, 12).expand(3, -1, -1, -1, -1)
    out = target(x)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)


def test_load_members_shape_mismatch_names_parameter_and_shapes() -> None:
    four = FNO(ModelSpec(in_channels=4, width=6, n_modes=3))
    seven = FNO(ModelSpec(in_channels=7, width=6, n_modes=3), members=2)
    with pytest.raises(ValueError, match=r"'lift\.weight'.*\(1, 6, 4\).*\(1, 6, 7\)"):
        load_members(seven, member_state(four, 0))
    with pytest.raises(ValueError, match="missing"):
        load_members(seven, {})


# --------------------------------------------------------------------------- checkpoints


def _save(path: Path, model: FNO, member: int = 0) -> None:
    save_checkpoint(path, model_spec=model.spec, state=member_state(model, member),
                    normaliser={"s_f": 0.25, "s_t": torch.tensor([1.0, 2.0, 3.0]), "channels": ["f", "K11"]},
                    data_spec={"pde": "poisson", "low": 1.0, "high": 5.0, "resolution": 12},
                    meta={"run_key": "0123456789abcdef", "epoch": 3, "val/rel_l2": 0.1, "note": None})


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = FNO(TINY, members=2, seeds=[5, 6])
    path = tmp_path / "sub" / "model.pt"
    _save(path, model, member=1)
    raw = torch.load(path, weights_only=True)  # plain data only: the safe loader accepts it
    assert raw["format"] == "repro.fno/1"
    ckpt = load_checkpoint(path)
    assert ckpt.model_spec == TINY
    assert ckpt.normaliser["s_f"] == 0.25 and torch.equal(ckpt.normaliser["s_t"], torch.tensor([1.0, 2.0, 3.0]))
    assert ckpt.data_spec["pde"] == "poisson" and ckpt.meta["epoch"] == 3
    for name, value in member_state(model, 1).items():
        assert torch.equal(ckpt.state[name], value)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind

    rebuilt = build_model(ckpt, members=2, spectral="fast")
    x = _input(TINY, 1, 2, 12)
    expected = model(torch.cat([torch.zeros_like(x), x]))[1]
    out = rebuilt(x.expand(2, -1, -1, -1, -1))
    assert _rel(out[0], expected) <= 1e-5 and torch.equal(out[0], out[1])


def test_checkpoint_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        load_checkpoint(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt: unreadable or corrupt") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)

    truncated = tmp_path / "truncated.pt"
    _save(truncated, FNO(TINY))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a repro.fno/1 checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_refuses_unsafe_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"meta\.when"):
        save_checkpoint(tmp_path / "x.pt", model_spec=TINY, state=member_state(FNO(TINY), 0),
                        normaliser={}, data_spec={}, meta={"when": object()})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- devices


def test_default_spectral_and_cpu_precision() -> None:
    assert default_spectral("cuda") == "fast"
    assert default_spectral(torch.device("cuda", 0)) == "fast"
    assert default_spectral("cpu") == "fused"  # measured: benchmarks/bench_train.py --sections ladder
    assert resolve_spectral(None, "cpu") == resolve_spectral(True, "cpu") == "fused"
    assert resolve_spectral(False, "cpu") == "reference" and resolve_spectral(True, "cuda") == "fast"
    model = FNO(TINY, spectral="fast")
    assert model.precision == "fp32"  # the default on every device: bf16 only when asked for
    seen = []
    hook = model.lift.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    out = model(_input(TINY, 1, 1, 12))
    hook.remove()
    assert out.dtype == torch.float32 and seen == [False]  # no autocast by default


def test_bf16_is_explicit_and_refused_where_runs_cannot_use_it() -> None:
    x = _input(TINY, 1, 2, 12)
    fp32 = FNO(TINY, spectral="fast")
    bf16 = FNO(TINY, spectral="fast", precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    out = bf16(x)  # the model autocasts on any device (the benchmark's CPU rehearsal) ...
    assert out.dtype == torch.float32 and 0 < _rel(out, fp32(x)) <= 3e-2
    check_precision("fp32", "cpu", "reference")
    check_precision("bf16", "cuda", "fast")
    with pytest.raises(ValueError, match="precision = 'bf16' needs a CUDA device, not 'cpu'"):
        check_precision("bf16", "cpu")  # ... but runs refuse bf16 on a CPU
    with pytest.raises(ValueError, match="needs the fast spectral path"):
        FNO(TINY, spectral="reference", precision="bf16")
    with pytest.raises(ValueError, match="needs the fast spectral path, not 'fused'"):
        FNO(TINY, spectral="fused", precision="bf16")
    with pytest.raises(ValueError, match="precision = 'fp16' is invalid: allowed: fp32, bf16"):
        FNO(TINY, precision="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_path_fp32_and_bf16() -> None:
    spec = ModelSpec(in_channels=4, width=16, n_modes=8)
    reference = FNO(spec, members=2, spectral="reference").cuda()
    fp32 = FNO(spec, members=2, spectral="fast").cuda()  # fp32 by default on CUDA too
    bf16 = FNO(spec, members=2, spectral="fast", precision="bf16").cuda()
    fp32.load_state_dict(reference.state_dict())
    bf16.load_state_dict(reference.state_dict())
    x = _input(spec, 2, 4, 32).cuda()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        expected = reference(x)
        assert _rel(fp32(x), expected) <= 1e-5
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    out = bf16(x)
    assert out.dtype == torch.float32 and _rel(out, expected) <= 3e-2
