"""Throughput of the batched generators vs a one-sample-at-a-time reference (same math).

    python benchmarks/bench_generate.py                  # CPU, 128^2, all three systems
    python benchmarks/bench_generate.py --device cuda    # batched path on torch tensors (GPU)
    python benchmarks/bench_generate.py --device cpu     # batched path on torch CPU tensors

The reference below is written the way the authors' scripts work (utils/gen_data_*.py): per
sample, 144 Gaussians evaluated one by one on the full grid, a per-bump activity draw, one complex
FFT solve per sample, and for SYS-2 a scalar root find per sample (same Parseval formula as the
batched code; the authors used a lookup table instead).  Both paths run in the same process and
print samples/s and their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import math
import time

import numpy as np
from scipy.optimize import brentq

from repro.config import KAPPA
from repro.pdes import generate
from repro.pdes.sources import AMP_HIGH, AMP_LOW, SIGMA, bump_centres, void_fractions

RANGES = {"poisson": (1.0, 5.0), "advdiff": (0.2, 1.0), "helmholtz": (1.0, 10.0)}


# --- the straightforward reference -----------------------------------------------------------


def _ref_source(rng: np.random.Generator, vf: float, n: int, remove_mean: bool) -> np.ndarray:
    x = np.arange(n) / n
    xg, yg = np.meshgrid(x, x)  # axis 1 = x, axis 0 = y
    cx, cy = np.meshgrid(bump_centres(), bump_centres())
    amps = np.zeros(144)
    for i in range(144):
        if rng.random() > vf:
            amps[i] = rng.uniform(AMP_LOW, AMP_HIGH)
    if not amps.any():
        amps[rng.integers(144)] = rng.uniform(AMP_LOW, AMP_HIGH)
    f = np.zeros((n, n))
    for a, px, py in zip(amps, cx.ravel(), cy.ravel()):
        dx = (xg - px + 0.5) % 1.0 - 0.5
        dy = (yg - py + 0.5) % 1.0 - 0.5
        f += a * np.exp(-(dx**2 + dy**2) / (2 * SIGMA**2))
    f /= f.max()
    return f - f.mean() if remove_mean else f


def _ref_symbols(n: int, K: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.fft.fftfreq(n, 1.0 / n)
    k1 = np.where(np.abs(k) == n // 2, 0.0, k)
    kx, ky = np.meshgrid(k, k)
    kx1, ky1 = np.meshgrid(k1, k1)
    a = 4 * math.pi**2 * KAPPA * (K[0, 0] * kx**2 + K[1, 1] * ky**2 + 2 * K[0, 1] * kx1 * ky1)
    b = 2 * math.pi * (v[0] * kx1 + v[1] * ky1)
    return a, b


def _ref_K(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    e, th = rng.uniform(low, high), rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    return rot.T @ np.diag([1.0, e]) @ rot


def reference(pde: str, count: int, n: int, seed: int = 0) -> None:
    """Generate ``count`` samples one at a time (results discarded: only the time matters)."""
    rng = np.random.default_rng(seed)
    low, high = RANGES[pde]
    for i in range(count):
        vf = float(void_fractions(np.array([i]))[0])
        if pde == "poisson":
            f = _ref_source(rng, vf, n, True)
            a, _ = _ref_symbols(n, _ref_K(rng, low, high), np.zeros(2))
            u = np.fft.ifft2(np.fft.fft2(f) / np.where(a == 0, np.inf, a)).real
        elif pde == "advdiff":
            f = _ref_source(rng, vf, n, True)
            a, b = _ref_symbols(n, _ref_K(rng, 1.0, 5.0), np.array([math.cos(p := rng.uniform(0, 6.3)), math.sin(p)]))
            target = rng.uniform(low, high)
            fh = np.fft.fft2(f)
            w = np.abs(fh) ** 2
            a2 = np.where(a == 0, 1.0, a * a)

            def g(s: float) -> float:
                d = a2 + math.exp(2 * s) * b * b
                return s + 0.5 * math.log(np.sum(w * b * b / d) / np.sum(w * a * a / d)) - math.log(target)

            t = math.exp(brentq(g, -40.0, 30.0, xtol=1e-12))
            sym = (a + 1j * t * b) / (1 + t)
            u = np.fft.ifft2(fh / np.where(sym == 0, np.inf, sym)).real
        else:
            umax = np.inf
            while umax > 2:
                f = _ref_source(rng, vf, n, False)
                omega = rng.integers(int(low), int(high) + 1)
                a, _ = _ref_symbols(n, np.eye(2), np.zeros(2))
                sym = a - omega
                u = np.fft.ifft2(np.fft.fft2(f) / np.where(sym == 0, np.inf, sym)).real
                umax = np.abs(u).max()
        del u


# --- the batched generator -------------------------------------------------------------------


def batched(pde: str, count: int, n: int, batch: int, like=None, sync=lambda: None) -> None:
    low, high = RANGES[pde]
    for start in range(0, count, batch):
        idx = np.arange(start, min(start + batch, count))
        stream = (lambda r, s=start: np.random.default_rng([s, r]))
        generate(pde, stream, void_fractions(idx), n, low, high, draw_size=batch, like=like)
    sync()


# --- the authors' generators, from a fetched copy (never committed) --------------------------------

#: The settings of the authors' run_gen_data.sh (144 sparse Gaussian sources; their ranges, here
#: the same as RANGES) and the void fractions their scripts cycle through.
_PEER_PARAMS = dict(Lx=1, Ly=1, diff_coef_scale=0.01, adv_coef_scale=1, diff_coef_freq=0, dc=0, ng=144,
                    sparse=True, e1=1.0, e2=5.0, ad1=0.2, ad2=1.0, o1=1, o2=10)
_PEER_VFS = (0.2, 0.4, 0.6, 0.8)


def peer(path: str, pde: str, count: int, n: int) -> None:
    """``count`` samples from the authors' own ``utils/gen_data_<pde>.py`` sample function, one at a
    time as their scripts draw them (their advdiff reads utils/*.npy relative to the working
    directory, hence the chdir)."""
    import importlib
    import os
    import sys
    from types import SimpleNamespace

    root = str(Path(path).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"utils.gen_data_{pde}")
    sample = getattr(module, pde)
    params = SimpleNamespace(**_PEER_PARAMS)
    x = np.arange(0, 1, 1 / n)
    std = 1 / 32
    here = os.getcwd()
    os.chdir(root)
    try:
        for i in range(count):
            sample(x, x, std, 2 * std, _PEER_VFS[i % len(_PEER_VFS)], params)
    finally:
        os.chdir(here)


def _rate(fn, count: int) -> float:
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--device", default="numpy",
                   help="numpy (default, CPU) or a torch device (cuda, cpu) for the batched path on torch tensors")
    p.add_argument("--n-ref", type=int, default=48, help="samples for the one-at-a-time reference")
    p.add_argument("--n-batched", type=int, default=3072, help="samples for the batched generator")
    p.add_argument("--batch", type=int, default=None, help="batch size [192 on cpu, 4096 on cuda]")
    p.add_argument("--peer", default=None, metavar="PATH",
                   help="a fetched copy of the authors' repository (ShashankSubramanian/neuraloperators-TL-scaling; "
                        "never committed): time their utils/gen_data_<system>.py sample functions beside ours")
    p.add_argument("--n-peer", type=int, default=16, help="samples for the authors' generator")
    args = p.parse_args()
    n = args.resolution
    like, sync = None, (lambda: None)
    if args.device != "numpy":
        import torch  # only the benchmark imports torch; repro.pdes never does

        like = torch.zeros((), dtype=torch.float64, device=args.device)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else sync
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    else:
        name = "numpy/scipy.fft"
    on_gpu = args.device.startswith("cuda")
    batch = args.batch or (4096 if on_gpu else 192)
    n_batched = max(args.n_batched, 8 * batch) if on_gpu else args.n_batched
    print(f"resolution {n}x{n}, batched on {name} (batch {batch}), reference on CPU one sample at a time")
    head = f"{'system':10s} {'reference':>14s} {'batched':>14s} {'ratio':>8s}"
    print(head + (f" {'authors':>14s} {'ours/authors':>13s}" if args.peer else ""))
    for pde in RANGES:
        batched(pde, min(batch, 64), n, batch, like, sync)  # warm-up (FFT plans, CUDA context)
        ref = _rate(lambda: reference(pde, args.n_ref, n), args.n_ref)
        fast = _rate(lambda: batched(pde, n_batched, n, batch, like, sync), n_batched)
        line = f"{pde:10s} {ref:10.1f} /s {fast:10.0f} /s {fast / ref:7.0f}x"
        if args.peer:
            peer(args.peer, pde, 1, n)  # warm-up: their module imports torch and matplotlib
            theirs = _rate(lambda: peer(args.peer, pde, args.n_peer, n), args.n_peer)
            line += f" {theirs:10.1f} /s {fast / theirs:12.0f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
