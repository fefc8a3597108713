"""Interval coverage on planted laws with persistent seed effects (issue 9 §2), many trials.

The test (tests/test_analysis_coverage.py) runs 30 trials per design; this prints the coverage of
nominal 95 % intervals for the multiplier and for err(N) over many more, per design, with a
binomial standard error, so the calibration is visible:

    python benchmarks/calibrate_intervals.py --trials 200
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from analysis import laws  # noqa: E402
from analysis.fits import fit_curve  # noqa: E402
from analysis.transfer import transfer_metrics  # noqa: E402
from test_analysis_coverage import DESIGNS, SCRATCH, TRANSFER, TRUE_MULTIPLIER, _sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    for design, (sizes, seeds_at, n_eps, n_check) in sorted(DESIGNS.items()):
        eps = float(laws.saturating(n_eps, *SCRATCH))
        rng = np.random.default_rng(7)
        hit_m = hit_e = 0
        widths = []
        started = time.perf_counter()
        with Progress() as progress:
            task = progress.add_task(f"{design} design", total=args.trials)
            for i in range(args.trials):
                n, err, unit = _sample(SCRATCH, sizes, seeds_at, rng)
                s = fit_curve(n, err, unit=unit, n_boot=args.n_boot, seed=2 * i, heldout=False)
                n, err, unit = _sample(TRANSFER, sizes, seeds_at, rng)
                t = fit_curve(n, err, unit=unit, n_boot=args.n_boot, seed=2 * i + 1, heldout=False)
                m = transfer_metrics(s, t, task="a", shift="b -> a", model="xs", eps=[eps])
                hit_m += int(m.multiplier.lo[0] <= TRUE_MULTIPLIER <= m.multiplier.hi[0])
                widths.append(m.multiplier.hi[0] / m.multiplier.lo[0])
                lo, hi = s.band(np.array([n_check]))
                hit_e += int(lo[0] <= laws.saturating(n_check, *SCRATCH) <= hi[0])
                progress.advance(task)
        k = args.trials
        se = lambda p: math.sqrt(p * (1 - p) / k)  # noqa: E731
        pm, pe = hit_m / k, hit_e / k
        print(f"{design}: multiplier coverage {pm:.3f} ± {se(pm):.3f}, err(N={n_check:g}) coverage {pe:.3f} ± "
              f"{se(pe):.3f} over {k} trials at nominal 0.95; median multiplier interval hi/lo "
              f"{float(np.median(widths)):.3g}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
