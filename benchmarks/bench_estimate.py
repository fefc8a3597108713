"""Accuracy of the `--dry-run` cost estimate on held-out units of a finished grid.

Usage::

    repro run-grid                                   # once: the quick grid, finished
    python benchmarks/bench_estimate.py [--grid quick] [--tracking-uri URI] [--max-train-n 32]

The units with N <= --max-train-n (and pre-training and zero-shot units) play "finished so far";
the rest are predicted and compared with their measured wall times, two ways, side by side:
from the finished runs alone (what a SLURM login node without the runs' device does) and from a
short calibration on this machine.
"""

from __future__ import annotations

import argparse
import sys

from repro.compilation import COMPILE_MODES
from repro.config import default_tracking_uri
from repro.grid import estimate, launcher, load_plan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default="quick")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--device", default="cpu", help="device the grid ran on (units are grouped as it trained them)")
    ap.add_argument("--max-train-n", type=int, default=32, help="units up to this N count as finished")
    ap.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                    help="how the grid's units trained (repro.compilation; 'off' for stores trained before it existed)")
    args = ap.parse_args()

    uri = args.tracking_uri or default_tracking_uri()
    plan = load_plan(args.grid)
    sv = launcher.survey(plan, uri, reap=False)
    if sv.todo:
        print(f"grid {args.grid}: {len(sv.todo)} runs not finished in {uri}; run `repro run-grid --grid {args.grid}` "
              "first", file=sys.stderr)
        return 2
    walls = estimate.finished_walls(sv.states)
    units = plan.units(device=args.device)
    known = [u for u in units if u.role == "pretrain" or u.specs[0].arm == "zero_shot"
             or u.specs[0].n_train <= args.max_train_n]
    held_out = [u for u in units if u not in known]
    measured = sum(max(walls[k] for k in u.keys) for u in held_out)
    from_runs = estimate.estimate_units(held_out, finished=walls, finished_units=known, calibrate_here=False)
    calibrated = estimate.estimate_units(held_out, device=args.device, threads=1, compile_mode=args.compile)
    print(f"grid {args.grid}: {len(held_out)} held-out units (N > {args.max_train_n}), measured {measured:.1f} s")
    for name, est in (("from finished runs only", from_runs), ("calibration on this machine", calibrated)):
        print(f"  {name:<30} {est.device_seconds:7.1f} s  ({est.device_seconds / measured - 1:+.1%})"
              + (f", {len(est.not_estimated)} units not estimated" if est.not_estimated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
