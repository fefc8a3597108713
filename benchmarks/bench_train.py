"""Training throughput benchmarks (issue 3 §6).

Section "ladder": training samples/s (forward + backward + Adam update, data already on the
device) of the reference (rfft2, fp32) and fast (truncated-DFT GEMMs; bf16 autocast on CUDA)
spectral paths for each model-size rung, side by side, with their ratio.

Defaults: on CUDA the paper's setting (128², batch 128, every rung).  On CPU a 128² batch-128
step of the large rungs takes minutes, so the CPU defaults are a quick look (batch 8, 3 timed
steps, rungs up to ``m``); choose others with ``--sizes``/``--batch``/``--steps``.

Usage::

    python benchmarks/bench_train.py --device cuda
    python benchmarks/bench_train.py --device cpu --resolution 64 --batch 16 --sizes xxs,xs,s,m
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from repro.config import MODEL_LADDER, ModelSpec
from repro.models import FNO, SPECTRAL_PATHS, count_parameters
from repro.config import DatasetSpec, RunSpec
from repro.train.engine import ensemble_cap
from repro.train.loop import EnsembleData, Schedule, train_ensemble

#: Rungs timed by default on CPU (xl at 128² needs minutes per step on 2 cores).
CPU_DEFAULT_SIZES: tuple[str, ...] = ("xxs", "xs", "s", "m")


@dataclass(frozen=True)
class LadderResult:
    """Samples/s of both spectral paths for one ladder rung."""

    size: str
    n_params: int
    samples_per_s: dict[str, float]

    @property
    def ratio(self) -> float:
        """fast / reference throughput."""
        return self.samples_per_s["fast"] / self.samples_per_s["reference"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model: FNO, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step (forward, loss, backward, Adam update) on resident data ``x``, ``y``."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        # Loss of PROTOCOL §2: sum over pixels of the squared error, divided by the batch.
        loss = ((model(x) - y) ** 2).sum() / x.shape[1]
        loss.backward()
        optimiser.step()

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, *, repeats: int,
                     warmup: int = 1) -> dict[str, float]:
    """Best wall time (s) of one call of each function, calls interleaved round-robin.

    Interleaving and taking the best of ``repeats`` make the comparison fair on a shared
    machine whose load changes while the benchmark runs (the CPU CI box has 2 cores).
    """
    for fn in steps.values():
        for _ in range(warmup):  # bases, allocator, cuBLAS heuristics
            fn()
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_ladder(device: torch.device, *, resolution: int, batch: int, sizes: Sequence[str],
                 steps: int, in_channels: int = 4, seed: int = 0) -> list[LadderResult]:
    """Time reference vs fast training steps for each rung (one member, random data on ``device``).

    Returns samples/s = batch / best step time over ``steps`` interleaved timed steps per path.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, batch, in_channels, resolution, resolution, generator=generator).to(device)
    y = torch.randn(1, batch, resolution, resolution, generator=generator).to(device)
    results = []
    for size in sizes:
        spec = ModelSpec.from_ladder(size, in_channels)
        train_steps = {path: make_train_step(FNO(spec, spectral=path).to(device), x, y)
                       for path in SPECTRAL_PATHS}
        best = time_interleaved(train_steps, device, repeats=steps)
        del train_steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rates = {path: batch / seconds for path, seconds in best.items()}
        results.append(LadderResult(size=size, n_params=count_parameters(spec), samples_per_s=rates))
        print_ladder_row(results[-1], flush=True)
    return results


def print_ladder_header(device: torch.device, resolution: int, batch: int, steps: int) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"# ladder: training samples/s (best of {steps} interleaved steps), {resolution}x{resolution}, batch {batch}, "
          f"{name}, torch {torch.__version__}")
    print(f"{'size':>5} {'(w,m)':>9} {'params':>12} {'reference':>11} {'fast':>11} {'fast/ref':>9}")


def print_ladder_row(r: LadderResult, flush: bool = False) -> None:
    w, m = MODEL_LADDER[r.size]
    print(f"{r.size:>5} {f'({w},{m})':>9} {r.n_params:>12,} {r.samples_per_s['reference']:>11.1f} "
          f"{r.samples_per_s['fast']:>11.1f} {r.ratio:>8.2f}x", flush=flush)


# --- section "batched": 16 small runs as one ensemble vs one by one ---------------------------


def _ensemble_inputs(runs: int, n_train: int, channels: int, resolution: int,
                     device: torch.device) -> tuple[EnsembleData, torch.Tensor, torch.Tensor]:
    """Random resident data for ``runs`` members with disjoint subsets (throughput only)."""
    gen = torch.Generator().manual_seed(0)
    pool = runs * n_train
    x = torch.randn(pool, channels, resolution, resolution, generator=gen).to(device)
    y = torch.randn(pool, resolution, resolution, generator=gen).to(device)
    subsets = torch.arange(pool).view(runs, n_train).to(device)  # (M, N) member m's samples
    return EnsembleData(inputs=x, targets=y, subsets=subsets), x[:64], y[:64]


def bench_batched(device: torch.device, *, runs: int, n_train: int, size: str, resolution: int,
                  epochs: int, spectral: str, members: int | None = None) -> tuple[float, float]:
    """Wall seconds of ``runs`` runs trained as ensembles of ``members`` (default: all at once)
    and one after another.

    Both go through the engine's own loop (``train_ensemble``): same data, seeds and LRs.
    """
    members = members or runs
    spec = ModelSpec.from_ladder(size, in_channels=4)
    data, xv, yv = _ensemble_inputs(runs, n_train, 4, resolution, device)
    lrs = tuple(1e-3 * (1 + m % 4) for m in range(runs))
    seeds = list(range(runs))

    start = time.perf_counter()
    for first in range(0, runs, members):
        chunk = list(range(first, min(first + members, runs)))
        model = FNO(spec, members=len(chunk), spectral=spectral, seeds=[seeds[m] for m in chunk]).to(device)
        part = EnsembleData(inputs=data.inputs, targets=data.targets, subsets=data.subsets[chunk])
        train_ensemble(model, part, xv, yv, Schedule(epochs=epochs, batch_size=128, lrs=tuple(lrs[m] for m in chunk),
                                                     eval_every=epochs), seeds=[seeds[m] for m in chunk])
    _sync(device)
    together = time.perf_counter() - start

    start = time.perf_counter()
    for m in range(runs):
        one = FNO(spec, members=1, spectral=spectral, seeds=[m]).to(device)
        single = EnsembleData(inputs=data.inputs, targets=data.targets, subsets=data.subsets[m:m + 1])
        train_ensemble(one, single, xv, yv, Schedule(epochs=epochs, batch_size=128, lrs=(lrs[m],),
                                                       eval_every=epochs), seeds=[m])
    _sync(device)
    return together, time.perf_counter() - start


# --- section "accuracy": fast vs reference after the same short training ------------------------


def bench_accuracy(device: torch.device, *, size: str, resolution: int, n_train: int,
                   epochs: int) -> dict[str, float]:
    """Validation relative L2 of both spectral paths after identical short training on a real
    Poisson dataset (same init, data order and LR)."""
    import tempfile
    from pathlib import Path

    from repro.config import DatasetSpec
    from repro.data import build_inputs, ensure_split, load_split

    spec = DatasetSpec(pde="poisson", low=1, high=5, resolution=resolution, n_train=n_train, n_val=128,
                       n_test=8, seed=11)
    tensors = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            ensure_split(spec, split, Path(tmp))
            d = load_split(spec, split, Path(tmp))
            norm = load_split(spec, "train", Path(tmp)).normaliser
            tensors[split] = (build_inputs(torch.from_numpy(d.source), torch.from_numpy(d.tensor), norm).float().to(device),
                              torch.from_numpy(d.solution).float().to(device))
    (x, y), (xv, yv) = tensors["train"], tensors["val"]
    data = EnsembleData(inputs=x, targets=y, subsets=torch.arange(n_train, device=device).unsqueeze(0))
    out = {}
    for spectral in SPECTRAL_PATHS:
        model = FNO(ModelSpec.from_ladder(size, in_channels=4), spectral=spectral, seeds=[0]).to(device)
        res = train_ensemble(model, data, xv, yv, Schedule(epochs=epochs, batch_size=32, lrs=(1e-3,)), seeds=[0])
        out[spectral] = res.best_val[0]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated ladder names; default: all on CUDA, {','.join(CPU_DEFAULT_SIZES)} on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path; default: 20 on CUDA, 3 on CPU")
    parser.add_argument("--sections", default="ladder,batched,accuracy", help="comma-separated sections to run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch = args.batch or (128 if on_cuda else 8)
    steps = args.steps or (20 if on_cuda else 3)
    sizes = args.sizes.split(",") if args.sizes else list(MODEL_LADDER if on_cuda else CPU_DEFAULT_SIZES)
    unknown = [s for s in sizes if s not in MODEL_LADDER]
    if unknown:
        raise SystemExit(f"unknown ladder size(s) {unknown}; allowed: {', '.join(MODEL_LADDER)}")
    sections = args.sections.split(",")
    if "ladder" in sections:
        print_ladder_header(device, args.resolution, batch, steps)
        bench_ladder(device, resolution=args.resolution, batch=batch, sizes=sizes, steps=steps)
    spectral = "fast"
    if "batched" in sections:
        # Small-N cell of a grid: 16 runs (4 LRs x 4 seeds), N = 64, one model size.
        res, size, epochs = (64, "s", 20) if on_cuda else (32, "xxs", 5)
        together, alone = bench_batched(device, runs=16, n_train=64, size=size, resolution=res, epochs=epochs,
                                        spectral=spectral)
        # What the engine does on this device: ensembles no larger than ensemble_cap allows.
        probe = RunSpec(arm="scratch", data=DatasetSpec(pde="poisson", low=1, high=5, resolution=res, n_train=64),
                        model=size, n_train=64, lr=1e-3, epochs=epochs)
        cap = ensemble_cap(probe, device)
        capped, _ = bench_batched(device, runs=16, n_train=64, size=size, resolution=res, epochs=epochs,
                                  spectral=spectral, members=cap)
        samples = 16 * 64 * epochs
        print(f"\nbatched small runs: 16 runs, N=64, model {size}, {res}^2, {epochs} epochs, {spectral} path")
        print(f"{'':>24} {'seconds':>10} {'samples/s':>12} {'vs sequential':>14}")
        for name, seconds in (("sequential", alone), ("one ensemble of 16", together),
                              (f"engine: ensembles of {cap}", capped)):
            print(f"{name:>24} {seconds:10.2f} {samples / seconds:12.0f} {alone / seconds:13.2f}x")
    if "accuracy" in sections:
        res, size, n, epochs = (128, "l", 1024, 10) if on_cuda else (32, "xs", 256, 25)
        errs = bench_accuracy(device, size=size, resolution=res, n_train=n, epochs=epochs)
        diff = abs(errs["fast"] - errs["reference"]) / errs["reference"]
        print(f"\naccuracy after {epochs} epochs, model {size}, {res}^2, N={n}: val rel L2 reference "
              f"{errs['reference']:.4f}, fast {errs['fast']:.4f} (relative difference {100 * diff:.2f}%)")


if __name__ == "__main__":
    main()
