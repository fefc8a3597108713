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
    bench.main(["--device", "cpu", "--resolution", "16", "--batch", "2", "--sizes", "xxs,xs", "--steps", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# ladder") and "reference" in lines[1] and "fast" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["xxs", "xs"]
    assert all(line.endswith("x") for line in lines[2:])


def test_ladder_benchmark_rejects_unknown_size() -> None:
    with pytest.raises(SystemExit, match="unknown ladder size"):
        _load_bench().main(["--device", "cpu", "--sizes", "xxl"])
