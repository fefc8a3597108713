"""Spectral convolution of the FNO: a plain rfft2 reference and a truncated-DFT fast path.

Both functions compute the same map (docs/protocol.md §2.3): keep the two ``m x m`` low-frequency
corner blocks ``[:m, :m]`` and ``[-m:, :m]`` of ``rfft2(x, norm='ortho')``, multiply each kept
mode by its own complex ``in x out`` matrix, and transform back with ``irfft2(norm='ortho')``.

Every tensor carries a leading *member* dimension ``M``: an ensemble of ``M`` independent FNOs is
trained in one process, so a mode-mixing weight has shape ``(M, 2, m, m, I, O, 2)`` =
(member, corner block, ky, kx, in channel, out channel, real/imag).  Complex weights are stored as
real tensors so that every parameter is real (the training engine's Adam is elementwise on reals).
Modes before channels (unlike the authors' ``(I, O, m, m)``) makes each mode's weights a
contiguous ``(I, 2O)`` matrix, so the fast path's batched GEMM reads them without a copy.

Why a fast path: with ``m << n`` almost all of an FFT's work produces modes that are thrown away.
The fast path evaluates only the kept modes as dense matrix products against precomputed cos/sin
matrices (a truncated DFT), which maps onto GEMMs and tensor cores; it equals the reference to
~1e-7 in fp32 (docs/design.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DFTBasis", "FusedBasis", "build_dft_basis", "build_fused_basis", "check_resolution",
           "fourier_layer_fused", "spectral_fast",
           "spectral_reference"]


def check_resolution(ny: int, nx: int, n_modes: int) -> None:
    """Raise ``ValueError`` unless an ``ny x nx`` grid can hold ``n_modes`` Fourier modes.

    The two kept row blocks ``[:m]`` and ``[-m:]`` must not overlap (``ny >= 2m``) and the kept
    rfft columns ``0..m-1`` must stay below the Nyquist column (``nx >= 2m``), otherwise the
    layer is not the same function at every resolution.
    """
    if ny < 2 * n_modes or nx < 2 * n_modes:
        raise ValueError(
            f"input resolution {ny}x{nx} is too coarse for an FNO keeping n_modes = {n_modes}: "
            f"every side must be at least 2 * n_modes = {2 * n_modes}"
        )


def spectral_reference(x: Tensor, weight: Tensor) -> Tensor:
    """Spectral convolution with ``torch.fft.rfft2`` / ``irfft2`` (norm='ortho'), fp32.

    Parameters
    ----------
    x : Tensor
        Input of shape ``(M, B, I, ny, nx)``, real.
    weight : Tensor
        Real view of the complex mode weights, shape ``(M, 2, m, m, I, O, 2)``.

    Returns
    -------
    Tensor
        Output of shape ``(M, B, O, ny, nx)``, same dtype as ``x``.
    """
    n_members, batch, _, ny, nx = x.shape
    m, out_channels = weight.shape[2], weight.shape[5]
    check_resolution(ny, nx, m)
    w = torch.view_as_complex(weight)                       # (M, 2, m, m, I, O) complex
    x_ft = torch.fft.rfft2(x, norm="ortho")                 # (M, B, I, ny, nx//2+1)
    out_ft = x_ft.new_zeros(n_members, batch, out_channels, ny, nx // 2 + 1)
    # Mode mixing per member and per kept mode: (B, I) x (I, O) -> (B, O).
    out_ft[..., :m, :m] = torch.einsum("mbiyx,myxio->mboyx", x_ft[..., :m, :m], w[:, 0])
    out_ft[..., -m:, :m] = torch.einsum("mbiyx,myxio->mboyx", x_ft[..., -m:, :m], w[:, 1])
    return torch.fft.irfft2(out_ft, s=(ny, nx), norm="ortho")  # (M, B, O, ny, nx)


@dataclass(frozen=True)
class DFTBasis:
    """Truncated-DFT matrices for one grid (each axis scaled 1/sqrt(n), as norm='ortho').

    C and S below are ``cos`` and ``sin`` of ``2 pi ky y / ny`` for the kept rows
    ky in [0..m-1] U [ny-m..ny-1] (``(2m, ny)``); complex products are written as real block
    matrices so each transform is one plain GEMM.

    Attributes
    ----------
    fx : Tensor
        ``(nx, 2m)`` forward along x: columns ``[cos | -sin](2 pi kx x / nx)``, kx = 0..m-1, so
        ``x @ fx = [Re | Im]`` of the rfft along x.
    fy : Tensor
        ``(2ny, 4m)`` forward along y: ``[Xr | Xi] @ [[C^T, -S^T], [S^T, C^T]] = [Yr | Yi]``,
        i.e. ``Y = (C - iS) X``.
    iy : Tensor
        ``(4m, 2ny)`` inverse along y: ``[Zr | Zi] @ [[C, S], [-S, C]] = [Re | Im]`` of
        ``(C + iS)^T Z``.
    ix : Tensor
        ``(2m, nx)`` real inverse along x: rows ``[c cos ; -c sin](2 pi kx x / nx)`` with
        ``c = 1`` for kx = 0 and 2 otherwise (Hermitian half spectrum, as irfft; the imaginary
        part of kx = 0 meets sin(0) = 0 and is thus discarded, and m <= nx/2 keeps no Nyquist column).
    """

    fx: Tensor
    fy: Tensor
    iy: Tensor
    ix: Tensor


def _phase(k: Tensor, x: Tensor, n: int) -> Tensor:
    """``2 pi k x / n`` in float64 with ``k x`` reduced mod ``n`` first (exact integer phase)."""
    return (2.0 * math.pi / n) * torch.remainder(torch.outer(k, x), n).to(torch.float64)


def build_dft_basis(ny: int, nx: int, n_modes: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> DFTBasis:
    """Precompute the truncated-DFT matrices of :func:`spectral_fast` for an ``ny x nx`` grid.

    Built in float64 and rounded once to ``dtype`` so the fast path stays within ~1e-7 of rfft2.
    """
    check_resolution(ny, nx, n_modes)
    m = n_modes
    kx = torch.arange(m, dtype=torch.int64)
    ky = torch.cat([torch.arange(m), torch.arange(ny - m, ny)]).to(torch.int64)  # kept rows, 2m
    xs = torch.arange(nx, dtype=torch.int64)
    ys = torch.arange(ny, dtype=torch.int64)
    sx, sy = 1.0 / math.sqrt(nx), 1.0 / math.sqrt(ny)

    px = _phase(xs, kx, nx)                                  # (nx, m)
    fx = torch.cat([torch.cos(px), -torch.sin(px)], dim=1) * sx   # (nx, 2m)
    py = _phase(ky, ys, ny)                                  # (2m, ny)
    c, s = torch.cos(py) * sy, torch.sin(py) * sy            # (2m, ny) each
    fy = torch.cat([torch.cat([c.T, -s.T], dim=1), torch.cat([s.T, c.T], dim=1)], dim=0)  # (2ny, 4m)
    iy = torch.cat([torch.cat([c, s], dim=1), torch.cat([-s, c], dim=1)], dim=0)          # (4m, 2ny)
    hermitian = torch.full((m, 1), 2.0, dtype=torch.float64)
    hermitian[0] = 1.0                                       # kx = 0 appears once in the full spectrum
    ix = torch.cat([hermitian * torch.cos(px.T), -hermitian * torch.sin(px.T)], dim=0) * sx  # (2m, nx)
    return DFTBasis(*(t.to(device=device, dtype=dtype).contiguous() for t in (fx, fy, iy, ix)))


def spectral_fast(x: Tensor, weight: Tensor, basis: DFTBasis) -> Tensor:
    """Spectral convolution evaluating only the kept modes, as real matrix products.

    Same function as :func:`spectral_reference` (rel. difference ~1e-7 in fp32).  Under CUDA
    autocast the GEMMs run in bf16; the caller decides (see :class:`repro.models.FNO`).

    Parameters
    ----------
    x : Tensor
        Input of shape ``(M, B, I, ny, nx)``, real.
    weight : Tensor
        Real view of the complex mode weights, shape ``(M, 2, m, m, I, O, 2)``.
    basis : DFTBasis
        Matrices from :func:`build_dft_basis` for this grid, device and dtype.

    Returns
    -------
    Tensor
        Output of shape ``(M, B, O, ny, nx)``.
    """
    n_members, batch, in_channels, ny, nx = x.shape
    m, out_channels = weight.shape[2], weight.shape[5]
    if basis.fx.shape != (nx, 2 * m) or basis.fy.shape != (2 * ny, 4 * m):
        raise ValueError(f"DFT basis was built for another grid or n_modes than input {ny}x{nx}, m = {m}")
    lead = (n_members, batch)

    # Forward along x (the rfft axis): (M,B,I,ny,nx) @ (nx,2m) -> (M,B,I,ny,2m) = [Re | Im], kx < m.
    h = torch.matmul(x, basis.fx)
    # Bring y next to re/im so the complex y-DFT is one real GEMM over (re/im, y):
    # (M,B,I,ny,2,m) -> (M,B,I,m,2,ny) -> (M,B,I,m,2ny) @ (2ny,4m) -> (M,B,I,m kx,[Yr ky | Yi ky]).
    h = h.view(*lead, in_channels, ny, 2, m).permute(0, 1, 2, 5, 4, 3).reshape(*lead, in_channels, m, 2 * ny)
    y = torch.matmul(h, basis.fy)

    # Mode mixing as one batched GEMM over (member, ky, kx) with Yr and Yi stacked as rows:
    # (M,B,I,m,2,2m) -> (M,2m ky,m kx,2,B,I) -> (M*2m*m, 2B, I).
    y = y.view(*lead, in_channels, m, 2, 2 * m).permute(0, 5, 3, 4, 1, 2)
    y = y.reshape(n_members * 2 * m * m, 2 * batch, in_channels)
    # The weights are already (I, 2O) matrices with re/im interleaved: (M,2,m,m,I,O,2) -> (M*2m*m, I, 2O),
    # a view, so no weight copy per step.
    w = weight.reshape(n_members * 2 * m * m, in_channels, 2 * out_channels)
    p = torch.bmm(y, w).view(-1, 2, batch, out_channels, 2)  # (M*2m*m, [Yr;Yi], B, O, [Wr,Wi])
    p_re, p_im = torch.unbind(p, dim=1)                      # Yr W, Yi W: (M*2m*m, B, O, 2) each
    # (Yr + iYi)(Wr + iWi): Re = YrWr - YiWi, Im = YrWi + YiWr; flip swaps [YiWr, YiWi] -> [YiWi, YiWr].
    sign = torch.tensor([-1.0, 1.0], dtype=p.dtype, device=p.device)
    z = p_re + p_im.flip(-1) * sign                          # (M*2m*m, B, O, [Re, Im])

    # Inverse along y as one real GEMM over (re/im, ky):
    # (M,2m ky,m kx,B,O,2) -> (M,B,O,m kx,2,2m ky) -> (M,B,O,m,4m) @ (4m,2ny) -> (M,B,O,m,[Re y | Im y]).
    z = z.view(n_members, 2 * m, m, batch, out_channels, 2).permute(0, 3, 4, 2, 5, 1)
    z = torch.matmul(z.reshape(*lead, out_channels, m, 4 * m), basis.iy)
    # Real inverse along x over (re/im, kx): (M,B,O,m,2,ny) -> (M,B,O,ny,2,m) -> (M,B,O,ny,2m) @ (2m,nx).
    z = z.view(*lead, out_channels, m, 2, ny).permute(0, 1, 2, 5, 4, 3).reshape(*lead, out_channels, ny, 2 * m)
    return torch.matmul(z, basis.ix)                         # (M, B, O, ny, nx)


# --- the fused path: spatial-major layout, every transform one GEMM ------------------------------

@dataclass(frozen=True)
class FusedBasis:
    """Truncated-DFT matrices of :func:`fourier_layer_fused`, laid out for a spatial-major layout.

    Activations of the fused path have shape ``(M, ny, nx, B, C)`` (flattened as needed), so every
    transform contracts a *leading* axis against a trailing block that is ``B * C`` (or more)
    wide: each one is a plain GEMM that reads its operand where it lies, and none of the
    permute copies of :func:`spectral_fast` is needed.  The matrices are those of
    :class:`DFTBasis` with their rows and columns ordered to match (re/im and wavenumber axes
    interleaved in the order the next step reads them).  Same function as
    :func:`spectral_reference`.

    Attributes
    ----------
    fx : Tensor
        ``(2m, nx)`` forward along x; rows ``(re/im, kx)``: ``[cos ; -sin](2 pi kx x / nx)``.
    fy : Tensor
        ``(4m, 2ny)`` forward along y, complex ``Y = (C - iS) H`` as a real block matrix; rows
        ``(re/im out, ky)``, columns ``(y, re/im in)`` -- the order the x step leaves them in.
    iy : Tensor
        ``(2ny, 4m)`` inverse along y, ``X = (C + iS)^T Z``; rows ``(y, re/im out)`` so that
        the x inverse finds ``(re/im, kx)`` adjacent, columns ``(re/im in, ky)``.
    ix : Tensor
        ``(nx, 2m)`` real inverse along x (Hermitian weights as :class:`DFTBasis`); columns
        ``(re/im, kx)``.
    """

    fx: Tensor
    fy: Tensor
    iy: Tensor
    ix: Tensor


def build_fused_basis(ny: int, nx: int, n_modes: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> FusedBasis:
    """Precompute the matrices of :func:`fourier_layer_fused` (float64, rounded once to ``dtype``)."""
    check_resolution(ny, nx, n_modes)
    m = n_modes
    kx = torch.arange(m, dtype=torch.int64)
    ky = torch.cat([torch.arange(m), torch.arange(ny - m, ny)]).to(torch.int64)
    sx, sy = 1.0 / math.sqrt(nx), 1.0 / math.sqrt(ny)
    px = _phase(kx, torch.arange(nx, dtype=torch.int64), nx)      # (m, nx)
    py = _phase(ky, torch.arange(ny, dtype=torch.int64), ny)      # (2m, ny)
    c, s = torch.cos(py) * sy, torch.sin(py) * sy                 # (2m ky, ny) each

    fx = torch.cat([torch.cos(px), -torch.sin(px)], dim=0) * sx   # (2m, nx)
    # Yr = C Hr + S Hi, Yi = -S Hr + C Hi: indices (out re/im, ky, y, in re/im).
    fy = torch.zeros(2, 2 * m, ny, 2, dtype=torch.float64)
    fy[0, :, :, 0], fy[0, :, :, 1] = c, s
    fy[1, :, :, 0], fy[1, :, :, 1] = -s, c
    # Xr = C^T Zr - S^T Zi, Xi = S^T Zr + C^T Zi: indices (y, out re/im, in re/im, ky).
    iy = torch.zeros(ny, 2, 2, 2 * m, dtype=torch.float64)
    iy[:, 0, 0], iy[:, 0, 1] = c.T, -s.T
    iy[:, 1, 0], iy[:, 1, 1] = s.T, c.T
    hermitian = torch.full((m, 1), 2.0, dtype=torch.float64)
    hermitian[0] = 1.0                                            # kx = 0 appears once
    ix = torch.cat([hermitian * torch.cos(px), -hermitian * torch.sin(px)], dim=0).T * sx  # (nx, 2m)
    mats = (fx, fy.reshape(4 * m, 2 * ny), iy.reshape(2 * ny, 4 * m), ix)
    return FusedBasis(*(t.to(device=device, dtype=dtype).contiguous() for t in mats))


def fourier_layer_fused(h: Tensor, weight: Tensor, skip: Tensor, basis: FusedBasis, ny: int, nx: int) -> Tensor:
    """One Fourier layer ``SpectralConv(h) + skip`` in the spatial-major layout of the fused path.

    Parameters
    ----------
    h : Tensor
        Layer input ``(M, ny * nx * B, I)`` (row index ``(y, x, b)``), contiguous.
    weight : Tensor
        Mode weights ``(M, 2, m, m, I, O, 2)`` as :func:`spectral_fast`.
    skip : Tensor
        The 1x1-convolution branch ``(M, ny * nx * B, O)``, freshly computed: the inverse x
        transform accumulates into it in place (one GEMM with beta = 1 instead of a GEMM plus an
        add over the whole activation); autograd allows it because no backward needs ``skip``.
    basis : FusedBasis
        From :func:`build_fused_basis` for this grid, device and dtype.
    ny, nx : int
        Grid shape.

    Returns
    -------
    Tensor
        ``skip + SpectralConv(h)``, ``(M, ny * nx * B, O)`` (the same storage as ``skip``).
    """
    n_members, rows, in_channels = h.shape
    m, out_channels = weight.shape[2], weight.shape[5]
    if basis.fx.shape != (2 * m, nx) or basis.fy.shape != (4 * m, 2 * ny):
        raise ValueError(f"fused DFT basis was built for another grid or n_modes than {ny}x{nx}, m = {m}")
    batch, modes = rows // (ny * nx), 2 * m * m
    bi, bo = batch * in_channels, batch * out_channels
    # Along x: per (member, y) row, (2m, nx) @ (nx, B I) -> (M, ny, [re/im, kx], B, I).
    t = torch.matmul(basis.fx, h.view(n_members * ny, nx, bi))
    # Along y: per member, (4m, 2ny) @ (2ny, m B I) -> (M, [re/im, ky], kx, B, I) = (M, 2, modes, B, I).
    t = torch.matmul(basis.fy, t.view(n_members, 2 * ny, m * bi)).view(n_members, 2, modes, batch, in_channels)
    # Mode mixing: per (member, mode), (B, I) @ (I, [O, re/im of W]); weight (M, 2, m, m, I, O, 2) is
    # already (M, modes, I, 2O) with the mode order (corner, ky, kx) of fy's rows.
    w = weight.reshape(n_members, modes, in_channels, 2 * out_channels)
    p_re = torch.matmul(t[:, 0], w).view(n_members, modes, batch, out_channels, 2)   # [Yr Wr, Yr Wi]
    p_im = torch.matmul(t[:, 1], w).view(n_members, modes, batch, out_channels, 2)   # [Yi Wr, Yi Wi]
    z = torch.stack([p_re[..., 0] - p_im[..., 1], p_re[..., 1] + p_im[..., 0]], dim=1)  # (M, 2, modes, B, O)
    # Inverse along y: (2ny, 4m) @ (4m, m B O) -> (M, [y, re/im], kx, B, O).
    z = torch.matmul(basis.iy, z.view(n_members, 4 * m, m * bo))
    # Inverse along x, accumulated into the skip branch: skip[(y), x, (b, o)] += ix @ z[(y), (re/im, kx), (b, o)].
    out = skip.view(n_members * ny, nx, bo)
    out.baddbmm_(basis.ix.expand(n_members * ny, nx, 2 * m), z.view(n_members * ny, 2 * m, bo))
    return skip
