"""Wall time of one small grid run by run (1 worker, no batching) vs batched + slot pool.

Usage::

    python benchmarks/bench_grid.py [--device cpu|cuda] [--workers K] [--grid PATH]

Both variants run the same grid into fresh, separate MLflow stores (datasets are generated
once, beforehand, into a shared cache so that neither side pays for them); the script prints
both wall times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from pathlib import Path

GRID = """
label = "bench"
resolution = 32
models = ["xxs"]
n_train = [8, 16, 32]
arms = ["scratch", "transfer"]
lrs = [1e-3, 3e-3]
seeds = [0, 1]
batch_size = 32
[upstream]
n_train = 256
n_val = 32
n_test = 32
[downstream]
n_train = 32
n_val = 32
n_test = 32
[pretrain]
epochs = 5
lr = 3e-3
[finetune]
epochs = 30
eval_every = 5
[[shifts]]
upstream = "poisson(1,5)"
downstream = "poisson(5,10)"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="slot-pool size (default: CPU cores or GPUs)")
    ap.add_argument("--grid", default=None, help="grid TOML (default: a built-in 2-arm, 24-run grid)")
    args = ap.parse_args()

    from repro.grid.launcher import Options, run_grid
    from repro.execution import RunContext
    from repro.grid.local import cpu_count
    from repro.grid.plan import load_plan
    from repro.grid.worker import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        root = Path(tmp)
        path = Path(args.grid) if args.grid else root / "bench.toml"
        if not args.grid:
            path.write_text(textwrap.dedent(GRID))
        plan = load_plan(path)
        data = root / "data"
        for ds in dict.fromkeys(r.spec.data for r in plan):
            prepare_dataset(ds, data)
        workers = args.workers or (None if args.device.startswith("cuda") else cpu_count())
        rows = []
        for name, members, pool in (("run by run (1 worker, max_members=1)", 1, 1),
                                    (f"batched + slot pool ({workers or 'all GPU'} workers, max_members=16)", 16,
                                     workers)):
            uri = f"sqlite:///{root / (str(members) + '.db')}"
            opts = Options(RunContext(tracking_uri=uri, data_dir=data, device=args.device, max_members=members), workers=pool)
            t0 = time.perf_counter()
            out = run_grid(plan, opts, live=False, console=_quiet())
            wall = time.perf_counter() - t0
            assert out.ok, out.failed
            rows.append((name, wall, len(out.finished)))
        print(f"grid: {len(plan)} runs, {len(plan.units(device=args.device))} batched units, device {args.device}, "
              f"{cpu_count()} CPU cores, pid {os.getpid()}")
        for name, wall, n in rows:
            print(f"  {name:<55} {wall:8.1f} s  ({n / wall:.2f} runs/s)")
        print(f"  speed-up (run by run / batched + pool): {rows[0][1] / rows[1][1]:.2f}x")


def _quiet():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


if __name__ == "__main__":
    main()
