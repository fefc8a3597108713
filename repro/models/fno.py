"""The Fourier Neural Operator of docs/protocol.md §2, as an ensemble of ``M`` independent members.

Every model is an ensemble of ``M`` FNOs that share data and architecture but not weights
(several learning-rate / seed runs trained together in one process; one run is ``M = 1``).
Every parameter therefore has a leading member dimension ``M`` and every activation has shape
``(M, B, C, ny, nx)``.  Members never interact: member ``i``'s output and gradients depend only
on member ``i``'s weights and inputs.

Architecture (authors' code, github.com/ShashankSubramanian/neuraloperators-TL-scaling):
pointwise lift ``C_in -> w``; ``n_layers`` Fourier layers ``x <- SpectralConv(x) + Conv1x1(x)``
with GELU after all but the last; projection ``w -> 2w -> GELU -> 1``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.config import ModelSpec
from repro.models.spectral import (DFTBasis, FusedBasis, build_dft_basis, build_fused_basis, check_resolution,
                                   fourier_layer_fused, spectral_fast, spectral_reference)

__all__ = ["FNO", "PRECISIONS", "SPECTRAL_PATHS", "check_precision", "count_parameters", "default_spectral",
           "load_members", "member_state", "resolve_spectral"]

#: The implementations of the FNO's Fourier layers (same function, see repro.models.spectral):
#: "reference" (rfft2), "fast" (truncated-DFT GEMMs in the (M, B, C, ny, nx) layout) and "fused"
#: (the same truncated DFT in a spatial-major (M, ny, nx, B, C) layout where every transform is
#: one GEMM on data where it lies, the 1x1 skip and the biases are accumulated inside GEMMs, and
#: no activation-sized permute copy is made).
SPECTRAL_PATHS: tuple[str, ...] = ("reference", "fast", "fused")

#: Forward precisions.  "fp32" is the default everywhere.  "bf16" autocasts the forward's GEMMs
#: to bf16 (parameters, optimiser state and the returned prediction stay fp32) for tensor-core
#: throughput on CUDA, but the bf16 forward of the same weights deviates from fp32 by 5-6e-3 of
#: ||u|| (measured by a reviewer on trained weights) -- an error floor at the paper's 1e-2
#: regime -- so it is only ever used when asked for; benchmarks/bench_train.py --sections bf16
#: trains both to convergence and compares (issue 9 §5, issue 10 §4).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

#: What :func:`default_spectral` returns on CPU.  Measured with benchmarks/bench_train.py on the
#: 2-core CPU machine (torch 2.13, fp32, training-step samples/s, fast / reference, best of 3-4
#: interleaved steps on a shared, loaded box): 128² batch 8: xxs 2.5x, xs 1.8x, s 1.9x, m 1.8x
#: (l 3.8x, xl 6.6x in a noisier run); 64² batch 16: xxs 2.5x, xs 2.4x, s 1.9x, m 1.3x.
#: Computing only the kept modes wins at every ladder size, so it replaced the reference.
#: The fused path then beat it (benchmarks/bench_train.py --sections ladder, one thread, fp32,
#: training-step samples/s, interleaved; the table in README "Benchmarks": 1.13-1.43x over fast at
#: 32², batch 32, xxs..s); it is the CPU default.  On CUDA the fast path stays the default until
#: the fused one is measured there.
_CPU_DEFAULT = "fused"


def count_parameters(spec: ModelSpec) -> int:
    """Number of real parameters of one member: :attr:`repro.config.ModelSpec.n_params`, which
    the tests check against the network's own ``numel`` count."""
    return spec.n_params


def default_spectral(device: torch.device | str) -> str:
    """The faster spectral path on ``device``: ``"fast"`` on CUDA and (measured) on CPU.

    Parameters
    ----------
    device : torch.device or str
        Where the model will run.

    Returns
    -------
    str
        One of :data:`SPECTRAL_PATHS`.
    """
    return "fast" if torch.device(device).type == "cuda" else _CPU_DEFAULT


def resolve_spectral(fast: bool | None, device: torch.device | str) -> str:
    """The spectral path of a run from its ``--fast/--reference`` switch.

    ``None`` (no switch) and ``True`` both pick the fastest path on ``device``
    (:func:`default_spectral`); ``False`` picks the rfft2 reference.
    """
    return "reference" if fast is False else default_spectral(device)


def check_precision(precision: str, device: torch.device | str | None = None,
                    spectral: str | None = None) -> None:
    """Refuse a precision that is unknown or that a run on ``device`` / ``spectral`` cannot use.

    Parameters
    ----------
    precision : {"fp32", "bf16"}
        Requested forward precision.
    device : torch.device or str, optional
        Where the *runs* execute.  bf16 runs need CUDA: on a CPU bf16 autocast is no faster
        (measured on the 2-core box at 32², one training step, best of 5: xs batch 16 47 ms fp32
        vs 61 ms bf16, s batch 32 259 vs 369 ms; an earlier, quieter sample gave 28 vs 26 ms for
        xs) but adds the bf16 error floor, and its accuracy is benchmarked on GPUs only.
        (:class:`FNO` itself autocasts on any device, so benchmarks/bench_train.py can rehearse
        the bf16 path on a CPU.)
    spectral : {"reference", "fast", "fused"}, optional
        Spectral path; bf16 needs "fast" (``torch.fft`` has no bf16 kernels, the fused path is fp32).

    Raises
    ------
    ValueError
        One line naming the value and what is allowed.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} is invalid: allowed: {', '.join(PRECISIONS)}")
    if precision != "bf16":
        return
    # The device first: on a CPU the default path is the fp32-only fused one, and "use the fast
    # path" would be advice a CPU user cannot follow.
    if device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"precision = 'bf16' needs a CUDA device, not {str(device)!r}: runs on a CPU are fp32 "
                         "(bf16 is no faster there and its accuracy is benchmarked on GPUs only)")
    if spectral is not None and spectral != "fast":
        raise ValueError(f"precision = 'bf16' needs the fast spectral path, not {spectral!r} (torch.fft has no bf16 "
                         "kernels; the fused path is fp32 only): use the fast path or fp32")


def _pointwise(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-member 1x1 convolution: ``(M,B,C,ny,nx)`` with ``(M,O,C)``, ``(M,O)`` -> ``(M,B,O,ny,nx)``."""
    n_members, batch, c, ny, nx = x.shape
    flat = x.reshape(n_members, batch, c, ny * nx)           # (M, B, C, P)
    # (M,1,O,C) @ (M,B,C,P) -> (M,B,O,P): channel mixing as GEMMs, one weight per member.
    out = torch.matmul(weight.unsqueeze(1), flat) + bias[:, None, :, None]
    return out.view(n_members, batch, -1, ny, nx)            # (M, B, O, ny, nx)


class MemberLinear(nn.Module):
    """Pointwise (1x1) channel map with one ``(out, in)`` weight and bias per member."""

    def __init__(self, members: int, in_channels: int, out_channels: int, *,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, out_channels, in_channels, device=device))
        self.bias = nn.Parameter(torch.empty(members, out_channels, device=device))

    def reset_member(self, i: int, generator: torch.Generator) -> None:
        """Draw member ``i`` like ``torch.nn.Linear`` does: U(-1/sqrt(in), 1/sqrt(in))."""
        bound = 1.0 / math.sqrt(self.weight.shape[-1])
        for p in (self.weight, self.bias):
            p.data[i] = (torch.rand(p.shape[1:], generator=generator) * 2 - 1) * bound

    def forward(self, x: Tensor) -> Tensor:
        return _pointwise(x, self.weight, self.bias)


#: On a CPU a GEMM whose output has fewer columns than this runs far below its peak (the BLAS's narrow
#: kernels): the width-8 rungs' 1x1 skip with its bias, ``(rows, 8) @ (8, 8)`` for 8 members of
#: 8,192 rows, took 0.66-1.1 ms; the same numbers as ``(rows / 2, 16) @ (16, 16)`` 0.30 ms (one
#: thread).  See :func:`_rows_pointwise`.
CPU_NARROW_GEMM_COLUMNS = 16


def row_packing(n_out: int, rows: int, device: torch.device) -> int:
    """How many consecutive rows :func:`_rows_pointwise` packs into one for an ``n_out``-channel output
    (1: none).  CPU only, 2 to 8 channels (``g = 16 // n_out >= 2``), and ``g`` must divide ``rows``."""
    if device.type != "cpu" or not 2 <= n_out < CPU_NARROW_GEMM_COLUMNS:
        return 1
    g = CPU_NARROW_GEMM_COLUMNS // n_out
    return g if rows % g == 0 else 1


def _rows_pointwise(h: Tensor, linear: MemberLinear) -> Tensor:
    """``bias + h @ W^T`` per member for the fused path's ``(M, rows, in)`` activations, one GEMM with beta = 1.

    On a CPU, an output of 2 to 8 channels is computed with ``g = 16 // n_out`` consecutive rows
    packed into one (:func:`row_packing`): ``(rows / g, g in) @ blockdiag(W^T x g)`` is the same
    numbers in the same memory, ``g`` times the FLOPs, but a GEMM shape the BLAS runs well.
    Measured (one thread, 16^2, batch 32, the compiled step, both versions interleaved in one
    process): xxs-m8 with 8 members 5,144 -> 6,005 samples/s, xxs 7,434 -> 9,413 (README,
    Benchmarks, has the ladder's numbers).  Packing 16 -> 32 columns measured 0.97x for xs-m8, and
    the 1-channel projection is left alone (16x the FLOPs of a mat-vec).  A non-finite input row can
    spread to the other rows of its pack (``0 * inf``), never to another member: the training
    loop's non-finite mask is per member.
    """
    n_members, rows, n_in = h.shape
    n_out = linear.weight.shape[1]
    g = row_packing(n_out, rows, h.device)
    if g == 1:
        return torch.baddbmm(linear.bias.unsqueeze(1), h, linear.weight.transpose(1, 2))
    eye = torch.eye(g, dtype=h.dtype, device=h.device)
    # packed[m, (a, i), (b, o)] = [a == b] W[m, o, i]: row q of the packed input holds rows g q + a of h.
    packed = torch.einsum("ab,moi->maibo", eye, linear.weight).reshape(n_members, g * n_in, g * n_out)
    bias = linear.bias.repeat(1, g).unsqueeze(1)                                  # (M, 1, g out)
    return torch.baddbmm(bias, h.reshape(n_members, rows // g, g * n_in), packed).view(n_members, rows, n_out)


class SpectralConv(nn.Module):
    """Mode mixing on the two kept corner blocks; weights ``(M, 2, m, m, I, O, 2)`` (real/imag last)."""

    def __init__(self, members: int, in_channels: int, out_channels: int, n_modes: int, *,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.n_modes = n_modes
        # (member, corner block [:m] / [-m:], ky, kx, in, out, re/im): see repro.models.spectral.
        self.weight = nn.Parameter(torch.empty(members, 2, n_modes, n_modes, in_channels,
                                               out_channels, 2, device=device))

    def reset_member(self, i: int, generator: torch.Generator) -> None:
        """Draw member ``i`` as the authors' code: ``U(0, 1) / (in * out)`` for real and imag."""
        c_in, c_out = self.weight.shape[4:6]
        self.weight.data[i] = torch.rand(self.weight.shape[1:], generator=generator) / (c_in * c_out)

    def forward(self, x: Tensor, basis: DFTBasis | None) -> Tensor:
        # basis None selects the reference path (rfft2); the FNO owns and caches the bases.
        if basis is None:
            return spectral_reference(x, self.weight)
        return spectral_fast(x, self.weight, basis)


class FourierLayer(nn.Module):
    """``x <- SpectralConv(x) + Conv1x1(x)`` (activation applied by the caller)."""

    def __init__(self, members: int, width: int, n_modes: int, *,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.spectral = SpectralConv(members, width, width, n_modes, device=device)
        self.skip = MemberLinear(members, width, width, device=device)

    def forward(self, x: Tensor, basis: DFTBasis | None) -> Tensor:
        return self.spectral(x, basis) + self.skip(x)


class FNO(nn.Module):
    """Ensemble of ``members`` independent FNOs (docs/protocol.md §2.3) trained together.

    Parameters
    ----------
    spec : ModelSpec
        Architecture (input channels, width ``w``, kept modes ``m``, Fourier layers).
    members : int, default 1
        Ensemble size ``M``; every parameter has leading dimension ``M``.
    spectral : {"reference", "fast", "fused"}, default "reference"
        Fourier-layer implementation: ``torch.fft``, truncated-DFT GEMMs over the kept modes
        only, or the same in a spatial-major layout (:data:`SPECTRAL_PATHS`).  Same function,
        same precision (fp32 unless ``precision="bf16"``, fast path only).
    seeds : sequence of int, optional
        One initialisation seed per member (default ``0..M-1``).  Member ``i`` of an ensemble
        built with seeds ``(s_0, ..., s_{M-1})`` equals a one-member model built with ``s_i``.
    precision : {"fp32", "bf16"}, default "fp32"
        Forward precision on every device.  ``"bf16"`` (only with ``spectral="fast"``) runs the
        forward under ``torch.autocast`` of the input's device with bf16; the prediction is
        returned in fp32.  Never on by default: see :data:`PRECISIONS`.  The model autocasts on
        CPU too (benchmark rehearsals); runs refuse bf16 on CPU (:func:`check_precision`).
    device : torch.device or str, optional
        Where to allocate parameters; ``"meta"`` skips initialisation (shape-only models).

    Notes
    -----
    Forward: ``x`` of shape ``(M, B, C_in, ny, nx)`` -> ``(M, B, ny, nx)``, at any resolution
    with ``ny, nx >= 2 m`` (the same weights serve every grid).
    """

    def __init__(self, spec: ModelSpec, *, members: int = 1, spectral: str = "reference",
                 seeds: Sequence[int] | None = None, precision: str = "fp32",
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if spectral not in SPECTRAL_PATHS:
            raise ValueError(f"spectral = {spectral!r} is invalid: allowed: {', '.join(SPECTRAL_PATHS)}")
        check_precision(precision, spectral=spectral)
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members = {members!r} is invalid: expected an integer >= 1")
        seeds = list(range(members)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != members:
            raise ValueError(f"seeds has {len(seeds)} entries but members = {members}: give one seed per member")
        self.spec = spec
        self.members = members
        self.spectral = spectral
        self.precision = precision
        w = spec.width
        self.lift = MemberLinear(members, spec.in_channels, w, device=device)
        self.layers = nn.ModuleList(FourierLayer(members, w, spec.n_modes, device=device)
                                    for _ in range(spec.n_layers))
        self.proj1 = MemberLinear(members, w, 2 * w, device=device)
        self.proj2 = MemberLinear(members, 2 * w, 1, device=device)
        if torch.device(device or "cpu").type != "meta":
            self.reset_parameters(seeds)

    @property
    def n_params_per_member(self) -> int:
        """Real parameters per member; equals :func:`count_parameters` of ``spec``."""
        return sum(p[0].numel() for p in self.parameters())

    def _init_order(self) -> Iterable[MemberLinear | SpectralConv]:
        """Modules in the fixed order in which a member's generator draws their weights."""
        yield self.lift
        for layer in self.layers:
            yield layer.spectral
            yield layer.skip
        yield self.proj1
        yield self.proj2

    @torch.no_grad()
    def reset_parameters(self, seeds: Sequence[int]) -> None:
        """Re-draw every member from its own ``torch.Generator`` seeded with ``seeds[i]``.

        Draws happen on CPU in a fixed order so a member's weights depend only on its seed,
        not on ``M``, the device or the other members.
        """
        for i, seed in enumerate(seeds):
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            for module in self._init_order():
                module.reset_member(i, generator)

    def _basis(self, ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> DFTBasis:
        """Truncated-DFT matrices for this grid, cached as non-persistent buffers.

        Keyed by (grid, dtype) in the buffer name and checked against the device, so a model
        moved with ``.to()`` carries its bases along and ``state_dict`` never contains them.
        """
        key = f"dft_{ny}x{nx}_{str(dtype).removeprefix('torch.')}"
        names = [f"{key}_{part}" for part in ("fx", "fy", "iy", "ix")]
        cached = [self._buffers.get(name) for name in names]
        if any(t is None or t.device != device for t in cached):
            basis = build_dft_basis(ny, nx, self.spec.n_modes, device=device, dtype=dtype)
            for name, t in zip(names, (basis.fx, basis.fy, basis.iy, basis.ix)):
                self.register_buffer(name, t, persistent=False)
            return basis
        return DFTBasis(*cached)

    def _fused_basis(self, ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> FusedBasis:
        """The fused path's matrices for this grid, cached in plain attributes (never in the state)."""
        key = (ny, nx, device, dtype)
        cache = self.__dict__.setdefault("_fused_bases", {})
        if key not in cache:
            cache[key] = build_fused_basis(ny, nx, self.spec.n_modes, device=device, dtype=dtype)
        return cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """Apply every member to its own batch: ``(M, B, C_in, ny, nx)`` -> ``(M, B, ny, nx)``."""
        if x.dim() != 5 or x.shape[0] != self.members or x.shape[2] != self.spec.in_channels:
            raise ValueError(
                f"FNO input has shape {tuple(x.shape)}; expected (members={self.members}, batch, "
                f"in_channels={self.spec.in_channels}, ny, nx)"
            )
        ny, nx = x.shape[-2:]
        check_resolution(ny, nx, self.spec.n_modes)
        if self.spectral == "fused":
            return self._forward_fused(x)
        if self.precision == "bf16":
            # bf16 GEMMs (tensor cores on CUDA); the prediction returns to fp32 for the loss.
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return self._forward(x).float()
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        basis = None
        if self.spectral == "fast":
            where = x.device.type
            # Under autocast the bases are built in the autocast dtype once, not cast every GEMM.
            dtype = torch.get_autocast_dtype(where) if torch.is_autocast_enabled(where) else x.dtype
            basis = self._basis(x.shape[-2], x.shape[-1], x.device, dtype)
        h = self.lift(x)                                     # (M, B, w, ny, nx)
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            h = layer(h, basis)                              # (M, B, w, ny, nx)
            if k < last:  # no activation after the last Fourier layer (authors' code)
                h = F.gelu(h)
        h = F.gelu(self.proj1(h))                            # (M, B, 2w, ny, nx)
        return self.proj2(h).squeeze(2)                      # (M, B, 1, ny, nx) -> (M, B, ny, nx)

    def _forward_fused(self, x: Tensor) -> Tensor:
        """The forward in the spatial-major layout ``(M, ny * nx * B, C)`` (see :data:`SPECTRAL_PATHS`)."""
        n_members, batch, in_channels, ny, nx = x.shape
        basis = self._fused_basis(ny, nx, x.device, x.dtype)

        h = _rows_pointwise(x.permute(0, 3, 4, 1, 2).reshape(n_members, ny * nx * batch, in_channels), self.lift)
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            h = fourier_layer_fused(h, layer.spectral.weight, _rows_pointwise(h, layer.skip), basis, ny, nx)
            if k < last:  # no activation after the last Fourier layer (authors' code)
                h = F.gelu(h)
        h = F.gelu(_rows_pointwise(h, self.proj1))           # (M, P B, 2w)
        out = _rows_pointwise(h, self.proj2)                 # (M, P B, 1)
        return out.view(n_members, ny, nx, batch).permute(0, 3, 1, 2)  # (M, B, ny, nx)


def member_state(model: FNO, i: int) -> dict[str, Tensor]:
    """Member ``i``'s weights as a one-member state dict (cloned, on CPU).

    Parameters
    ----------
    model : FNO
        An ensemble.
    i : int
        Member index, ``0 <= i < model.members``.

    Returns
    -------
    dict of str to Tensor
        Same keys as ``model.state_dict()``, every tensor with leading dimension 1; loadable
        into a one-member model with ``load_state_dict`` or into any ensemble with
        :func:`load_members`.
    """
    if not 0 <= i < model.members:
        raise IndexError(f"member {i} out of range for an ensemble of {model.members}")
    return {name: t[i:i + 1].detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


@torch.no_grad()
def load_members(model: FNO, state: Mapping[str, Tensor], members: Sequence[int] | None = None) -> None:
    """Copy a one-member state into every member (or the given members) of ``model``.

    Used to start several fine-tuning runs from one pre-trained model.

    Parameters
    ----------
    model : FNO
        Ensemble to write into (in place).
    state : mapping of str to Tensor
        One-member state (leading dimension 1), e.g. from :func:`member_state` or a checkpoint.
    members : sequence of int, optional
        Member indices to overwrite; default all.

    Raises
    ------
    ValueError
        Missing or unexpected keys, or a parameter whose shape does not match (the message
        names the parameter and both per-member shapes, e.g. a different channel count).
    """
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"state does not fit this FNO: missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    for name, target in own.items():
        source = state[name]
        if source.dim() != target.dim() or source.shape[0] != 1 or source.shape[1:] != target.shape[1:]:
            raise ValueError(
                f"parameter {name!r}: state has shape {tuple(source.shape)} but the model expects "
                f"{(1, *target.shape[1:])} per member (spec {model.spec})"
            )
    index = list(range(model.members)) if members is None else [int(i) for i in members]
    bad = [i for i in index if not 0 <= i < model.members]
    if bad:
        raise IndexError(f"members {bad} out of range for an ensemble of {model.members}")
    for name, target in own.items():
        value = state[name][0].to(device=target.device, dtype=target.dtype)
        for i in index:
            target[i].copy_(value)
