"""Smoke test of benchmarks/bench_train.py's ladder section (tiny grid, one step)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
HAVE_CXX = any(shutil.which(name) for name in ("g++", "c++", "clang++"))  # inductor's CPU kernels need one


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_ladder_benchmark_prints_every_path_and_its_share_of_peak(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench()
    bench.main(["--device", "cpu", "--threads", "1", "--resolution", "16", "--batch", "2", "--sizes", "xxs",
                "--steps", "1", "--sections", "ladder"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# ladder") and "(1 threads)" in lines[0] and lines[1].startswith("# SGEMM peak")
    assert all(name in lines[2] for name in ("reference", "fast", "fused", "compiled", "compiled/fast",
                                             "compile s", "% peak"))
    (row,) = lines[3:]
    cells = row.split()
    assert cells[0] == "xxs" and cells[3] == "1"  # one member unless asked
    if HAVE_CXX:
        assert float(cells[7]) > 0 and float(cells[-2]) > 0  # the compiled path's samples/s, its compilation
    else:  # inductor cannot build its kernels: the column says so instead of failing the benchmark
        assert cells[7] == "-"
    # ref/fast/fused/compiled shares of the measured GEMM peak (positive percentages)
    assert len(cells[-1].split("/")) == 4 and all(0 <= float(v) < 100 for v in cells[-1].split("/")[:3 + HAVE_CXX])
    bench.main(["--device", "cpu", "--threads", "1", "--resolution", "16", "--batch", "2", "--sizes", "xxs,xs",
                "--steps", "1", "--sections", "ladder", "--no-compile", "--members", "3"])
    rows = capsys.readouterr().out.strip().splitlines()[3:]
    assert [line.split()[0] for line in rows] == ["xxs", "xs"]
    assert all(line.split()[3] == "3" and line.split()[7] == "-" and line.split()[-1].endswith("/-") for line in rows)


def test_ladder_members_follow_the_engines_cpu_ensembles() -> None:
    """``--members engine`` trains each rung as the grid engine would group the CPU study's units."""
    bench = _load_bench()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [bench.ladder_members("engine", size, 32, 16, cpu) for size in ("xxs-m8", "xs-m8", "s")] == [8, 4, 2]
    assert bench.ladder_members("engine", "xs-m8", 32, 16, cuda) == 16  # a GPU unit takes every member
    assert bench.ladder_members("5", "xs", 32, 16, cpu) == 5
    with pytest.raises(SystemExit, match="--members 0: allowed"):
        bench.main(["--device", "cpu", "--sections", "ladder", "--members", "0"])


def test_ladder_benchmark_rejects_unknown_size() -> None:
    with pytest.raises(SystemExit, match="unknown ladder size"):
        _load_bench().main(["--device", "cpu", "--sizes", "xxl"])


def test_batched_and_accuracy_sections_run_through_the_engine_loop() -> None:
    import torch

    bench = _load_bench()
    together, alone = bench.bench_batched(torch.device("cpu"), runs=3, n_train=4, size="xxs", resolution=16,
                                          epochs=2, spectral="fast")
    assert together > 0 and alone > 0
    errors = bench.bench_accuracy(torch.device("cpu"), size="xxs", resolution=16, n_train=16, epochs=2,
                                  compiled=False)  # compiled training: tests/test_compiled.py
    assert set(errors) == {"reference", "fast", "fused"}
    # Same init, data order and LR: the spectral paths train to the same error (fp32 on CPU).
    assert abs(errors["fast"] - errors["reference"]) <= 1e-3 * errors["reference"]
    assert abs(errors["fused"] - errors["reference"]) <= 1e-3 * errors["reference"]


def test_bf16_section_compares_the_two_precisions(capsys: pytest.CaptureFixture[str]) -> None:
    import math

    import torch

    bench = _load_bench()
    settings = dict(size="xxs", resolution=16, n_train=32, n_test=32, epochs=2, batch=16, lr=3e-3)
    check = bench.bench_bf16(torch.device("cpu"), **settings)  # bf16 emulated under CPU autocast
    assert set(check.test_rel_l2) == {"fp32", "bf16"}
    assert all(math.isfinite(v) for v in (*check.test_rel_l2.values(), check.ratio, check.prediction_rel_l2))
    assert 0 < check.forward_deviation < 3e-2  # bf16 really ran, and stays close to fp32
    assert not check.reached  # two tiny epochs are far from the 3e-2 target ...
    bench.print_bf16(check, settings, torch.device("cpu"))
    out = capsys.readouterr().out
    assert "EMULATED" in out and "did NOT reach the target" in out  # ... and the output says so


PEER_STAND_IN = '''
import torch
from torch import nn


class FNN2d(nn.Module):
    """Same constructor and (B, C, n, n) -> (B, 1, n, n) forward as the authors' models/fno.py."""

    def __init__(self, modes1, modes2, width=64, fc_dim=128, layers=None, in_dim=3, out_dim=1, dropout=0,
                 activation="tanh", mean_constraint=False):
        super().__init__()
        assert len(modes1) == len(modes2) == len(layers) - 1 and activation == "gelu"
        self.lift = nn.Conv2d(in_dim, width, 1)
        self.proj = nn.Sequential(nn.Conv2d(width, fc_dim, 1), nn.GELU(), nn.Conv2d(fc_dim, out_dim, 1))

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.lift(x)))
'''


def test_ladder_times_the_authors_network_from_a_fetched_copy(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--peer PATH loads models/fno.py's FNN2d from a copy of the authors' repository (here a stand-in
    with their constructor and forward; the real copy is fetched, never committed) and adds its row."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "fno.py").write_text(PEER_STAND_IN)
    bench = _load_bench()
    bench.main(["--device", "cpu", "--threads", "1", "--resolution", "16", "--batch", "2", "--sizes", "xxs",
                "--steps", "1", "--sections", "ladder", "--peer", str(tmp_path), "--no-compile"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "authors" in lines[2] and "fused/authors" in lines[2]  # --no-compile: ours is the fused path
    # size, (w,m), params, members, 4 paths (compiled "-"), 4 ratios, compile s, the peak shares, the authors'
    # samples/s, 2 ratios
    assert lines[3].split()[0] == "xxs" and lines[3].endswith("x") and len(lines[3].split()) == 17
    with pytest.raises(SystemExit, match="no models/fno.py"):
        bench.main(["--device", "cpu", "--sections", "ladder", "--peer", str(tmp_path / "nowhere")])


def test_layout_section_times_both_worker_layouts_in_processes_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))  # spawned workers import the benchmark by name
    rates = _load_bench().bench_layout(size="xxs", members=2, resolution=16, batch=2, seconds=0.2)
    assert list(rates) == ["2 workers x 1 thread", "1 worker x 2 threads"] and all(r > 0 for r in rates.values())
