"""Time ``repro fit-laws`` and ``repro report`` on an MLflow store of ~10,000 synthetic runs.

Budgets (issue 5 §7, 2 CPU cores): fit-laws <= 30 s (bootstrap included), report <= 60 s.

The store (E3 ladder: 8 shifts, 3 model sizes, N = 8 .. 32768, 5 LRs, 3 seeds up to N = 1024,
plus E4 mixed pre-training and a few failed/killed runs) is written once through
the engine's ``RunRecorder`` and cached in ``$REPRO_BENCH_DIR`` (default: a folder under the
system temp dir), because writing 10k runs takes a few minutes.

    python benchmarks/bench_analysis.py            # build (or reuse) the store, time both commands
    python benchmarks/bench_analysis.py --rebuild  # write the store again
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic-store fixture lives there
from synthetic_store import E3_SHIFTS, SyntheticGrid, plan, write_store  # noqa: E402

#: Bump when the synthetic layout changes, so a stale cached store is not reused.
STORE_VERSION = 2
BUDGETS = {"fit-laws": 30.0, "report": 60.0}

GRID = SyntheticGrid(
    name="bench",
    shifts=E3_SHIFTS,
    models=("xs", "s", "m"),
    n_values=tuple(2 ** k for k in range(3, 16)),
    lrs=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3),
    seeds=(0, 1, 2),
    max_n_all_seeds=1024,
    mixed=True,
    resolution=128,
    n_failed=20,
    n_killed=5,
)


def store_dir() -> Path:
    root = Path(os.environ.get("REPRO_BENCH_DIR", Path(tempfile.gettempdir()) / "repro-bench-analysis"))
    return root / f"v{STORE_VERSION}"


def build_store(directory: Path, rebuild: bool = False) -> str:
    """Write the benchmark store unless a complete one is cached; return its tracking URI."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    done = directory / "COMPLETE"
    if done.exists() and not rebuild:
        print(f"reusing store {directory} ({done.read_text().strip()})")
        return uri
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    runs = plan(GRID)
    print(f"writing {len(runs)} runs to {directory} ...", flush=True)
    t0 = time.perf_counter()
    write_store(uri, GRID, runs)
    done.write_text(f"{len(runs)} runs, written in {time.perf_counter() - t0:.0f} s\n")
    print(done.read_text().strip())
    return uri


def time_command(name: str, args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "repro.cli", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="write the synthetic store again")
    parser.add_argument("--build-only", action="store_true", help="only build the store")
    opts = parser.parse_args()
    directory = store_dir()
    uri = build_store(directory, opts.rebuild)
    if opts.build_only:
        return
    out = directory / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    times = {
        "fit-laws": time_command("fit-laws", ["fit-laws", "--tracking-uri", uri, "--out", str(out)], env),
        "report": time_command("report", ["report", "--tracking-uri", uri, "--out", str(out)], env),
    }
    print(f"\n{'command':<10} {'seconds':>8} {'budget':>7} {'ratio':>6}")
    for name, seconds in times.items():
        budget = BUDGETS[name]
        print(f"{name:<10} {seconds:8.1f} {budget:7.0f} {seconds / budget:6.2f}  {'ok' if seconds <= budget else 'OVER'}")
    print(f"report: {out / 'index.html'} ({(out / 'index.html').stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
