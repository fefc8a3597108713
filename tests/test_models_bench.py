"""Smoke test of benchmarks/bench_train.py's ladder section (tiny grid, one step)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_ladder_benchmark_prints_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench()
    bench.main(["--device", "cpu", "--resolution", "16", "--batch", "2", "--sizes", "xxs,xs", "--steps", "1",
                "--sections", "ladder"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# ladder") and "reference" in lines[1] and "fast" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["xxs", "xs"]
    assert all(line.endswith("x") for line in lines[2:])


def test_ladder_benchmark_rejects_unknown_size() -> None:
    with pytest.raises(SystemExit, match="unknown ladder size"):
        _load_bench().main(["--device", "cpu", "--sizes", "xxl"])


def test_batched_and_accuracy_sections_run_through_the_engine_loop() -> None:
    import torch

    bench = _load_bench()
    together, alone = bench.bench_batched(torch.device("cpu"), runs=3, n_train=4, size="xxs", resolution=16,
                                          epochs=2, spectral="fast")
    assert together > 0 and alone > 0
    errors = bench.bench_accuracy(torch.device("cpu"), size="xxs", resolution=16, n_train=16, epochs=2)
    assert set(errors) == {"reference", "fast"}
    # Same init, data order and LR: the two spectral paths train to the same error (fp32 on CPU).
    assert abs(errors["fast"] - errors["reference"]) <= 1e-3 * errors["reference"]
