"""The bad-input corpus: grid files and command lines a hostile or careless user writes.  Each must
end with exit status != 0 and exactly one ``error:`` line that names what is wrong, with no
traceback and nothing written to the store.  In-process (the CLI's own error path: ``fail`` for
what it checks, ``main``'s last line of defence for the rest), so the ~40 cases cost seconds; a
slice of them also runs as a user runs it, ``python -m repro`` in a process of its own, exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import write_grid
from typer.testing import CliRunner

from repro import schema
from repro.cli import app

RUNNER = CliRunner()


def _grid(tmp_path: Path, edit: tuple[str, str] | None = None, append: str = "") -> str:
    path = write_grid(tmp_path / "g.toml", "bad")
    text = path.read_text()
    if edit is not None:
        assert edit[0] in text, edit
        text = text.replace(edit[0], edit[1], 1)
    path.write_text(text + append)
    return str(path)


#: (case, edit of the tiny grid TOML, words the error must contain)
GRID_CASES = [
    ("resolution too large", ("resolution = 16", "resolution = 4096"), ["resolution", "4096"]),
    ("resolution not a power of two", ("resolution = 16", "resolution = 17"), ["resolution"]),
    ("seed overflows", ("seeds = [0]", "seeds = [100000000000000000000]"), ["seed"]),
    ("negative seed", ("seeds = [0]", "seeds = [-1]"), ["seed"]),
    ("epochs absurd", ("[finetune]\nepochs = 3", "[finetune]\nepochs = 100000000000000000"), ["epochs"]),
    ("epochs zero", ("[finetune]\nepochs = 3", "[finetune]\nepochs = 0"), ["epochs"]),
    ("N above the split", ("n_train = [8, 16]", "n_train = [8, 16, 32]"), ["32"]),
    ("N not an int", ("n_train = [8, 16]", 'n_train = [8, "16"]'), ["n_train"]),
    ("unknown model", ('models = ["xxs"]', 'models = ["huge"]'), ["model", "huge"]),
    ("unknown arm", ('"scratch", "transfer", "zero_shot"', '"scratch", "finetune"'), ["arm"]),
    ("lr negative", ("lrs = [3e-3]", "lrs = [-1.0]"), ["lr"]),
    ("lr a string", ("lrs = [3e-3]", 'lrs = ["fast"]'), ["lr"]),
    ("unknown top-level key", None, ["colour"]),
    ("unknown pde", ('downstream = "poisson(5,10)"', 'downstream = "navier(5,10)"'), ["navier"]),
    ("range reversed", ('downstream = "poisson(5,10)"', 'downstream = "poisson(10,5)"'), ["poisson(10,5)"]),
    ("range malformed", ('downstream = "poisson(5,10)"', 'downstream = "poisson(5;10)"'), ["poisson(5;10)"]),
    ("mixed downstream", ('downstream = "poisson(5,10)"', 'downstream = "mixed"'), ["mixed"]),
    ("no pretrain section", ("[pretrain]\nepochs = 3\nlr = 3e-3\n", ""), ["pretrain"]),
    ("batch size zero", ("batch_size = 16", "batch_size = 0"), ["batch_size"]),
    ("label empty", ('label = "bad"', 'label = ""'), ["label"]),
    ("not TOML", ("[[shifts]]", "[[shifts]"), ["TOML"]),
]


@pytest.mark.parametrize("case,edit,needles", GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_bad_grid_files_get_one_clear_line(tmp_path: Path, case: str, edit, needles: list[str]) -> None:
    grid = _grid(tmp_path, edit, append='colour = "red"\n' if edit is None else "")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for args in (["run-grid", "--grid", grid, "--dry-run"], ["status", "--grid", grid]):
        res = RUNNER.invoke(app, [*args, "--tracking-uri", uri])
        _one_clear_line(res, needles)
    assert not (tmp_path / "mlflow.db").exists()  # nothing was written for a grid that does not load


#: (case, command line, words the error must contain); {grid} is a valid tiny grid, {uri} a store
CLI_CASES = [
    ("unknown grid name", ["run-grid", "--grid", "no-such-grid", "--dry-run"], ["no-such-grid"]),
    ("unknown executor", ["run-grid", "--grid", "{grid}", "--executor", "kubernetes"], ["--executor", "kubernetes"]),
    ("unknown device", ["run-grid", "--grid", "{grid}", "--device", "tpu", "--dry-run"], ["--device", "tpu"]),
    ("cuda without a GPU", ["run-grid", "--grid", "{grid}", "--device", "cuda"], ["cuda"]),
    ("zero members", ["run-grid", "--grid", "{grid}", "--max-members", "0"], ["--max-members"]),
    ("zero workers", ["run-grid", "--grid", "{grid}", "--workers", "0"], ["--workers"]),
    ("bf16 on a CPU", ["run-grid", "--grid", "{grid}", "--precision", "bf16", "--device", "cpu"], ["bf16"]),
    ("unknown precision", ["run-grid", "--grid", "{grid}", "--precision", "fp16"], ["fp16"]),
    ("status of a missing store", ["status", "--grid", "{grid}"], ["no MLflow store"]),
    ("fit-laws on a missing store", ["fit-laws", "--grid", "{grid}"], ["no MLflow store"]),
    ("export of a missing store", ["export", "--grid", "{grid}", "--to", "{tmp}/out.db"], ["no MLflow store"]),
    ("unknown tracking scheme", ["status", "--grid", "{grid}", "--tracking-uri", "ftp://host/x"], ["ftp://host/x"]),
    ("train: unknown pde", ["train", "--pde", "navier", "--range", "1,5"], ["navier"]),
    ("train: bad range", ["train", "--pde", "poisson", "--range", "5"], ["--range"]),
    ("train: transfer without --from", ["train", "--pde", "poisson", "--range", "1,5", "--arm", "transfer"], ["--from"]),
    ("train: --from a missing file", ["train", "--pde", "poisson", "--range", "1,5", "--arm", "transfer",
                                      "--from", "{tmp}/none.ckpt"], ["none.ckpt"]),
    ("train: unknown model", ["train", "--pde", "poisson", "--range", "1,5", "--model", "huge"], ["huge"]),
    ("ui: port out of range", ["ui", "--port", "99999"], ["--port", "65535"]),
]


@pytest.mark.parametrize("case,args,needles", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_lines_get_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                                              args: list[str], needles: list[str]) -> None:
    monkeypatch.setenv(schema.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(schema.ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("repro.grid.local.gpu_count", lambda: 0)  # "cuda without a GPU" also on a GPU machine
    grid = str(write_grid(tmp_path / "g.toml", "ok"))
    filled = [a.replace("{grid}", grid).replace("{tmp}", str(tmp_path)) for a in args]
    res = RUNNER.invoke(app, filled)
    _one_clear_line(res, [n.replace("{tmp}", str(tmp_path)) for n in needles])
    assert not (tmp_path / "home" / "mlflow.db").exists()  # a refused command creates no store


def _one_clear_line(res, needles: list[str]) -> None:
    text = res.output
    assert res.exit_code not in (0, None), text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:") or re.match(r"^(│ )?Error", line)
              or "Invalid value" in line]
    assert errors, text
    for needle in needles:
        assert needle.lower() in text.lower(), (needle, text)


#: The slice run through the console script in its own process (``python -m repro``, as a user
#: runs it): the real exit status and the real streams (CliRunner merges and catches them).  Every
#: case is a user error, so the status is 2 (``fail`` and click's usage errors alike);
#: ``main()``'s last line of defence for the unexpected is tested in test_store_failures.
PROCESS_CASES = [("grid", "resolution too large"), ("grid", "not TOML"), ("grid", "unknown top-level key"),
                 ("cli", "unknown grid name"), ("cli", "status of a missing store"), ("cli", "ui: port out of range")]


@pytest.mark.parametrize("kind,case", PROCESS_CASES, ids=[f"{k}: {c}" for k, c in PROCESS_CASES])
def test_a_slice_of_the_corpus_through_python_m_repro(tmp_path: Path, kind: str, case: str) -> None:
    if kind == "grid":
        _, edit, needles = next(c for c in GRID_CASES if c[0] == case)
        args = ["run-grid", "--grid", _grid(tmp_path, edit, append='colour = "red"\n' if edit is None else ""),
                "--dry-run"]
    else:
        _, args, needles = next(c for c in CLI_CASES if c[0] == case)
        grid = str(write_grid(tmp_path / "g.toml", "ok"))
        args = [a.replace("{grid}", grid).replace("{tmp}", str(tmp_path)) for a in args]
    env = {k: v for k, v in os.environ.items()
           if k not in (schema.ENV_TRACKING_URI, "MLFLOW_TRACKING_URI", schema.ENV_DEBUG)}
    env[schema.ENV_HOME] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "repro", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stdout + proc.stderr)
    assert proc.stdout.count("error:") + proc.stderr.count("error:") <= 1, proc.stdout + proc.stderr
    _one_clear_line(SimpleNamespace(output=proc.stdout + proc.stderr, exit_code=proc.returncode, exception=None),
                    needles)
    assert not (tmp_path / "home" / "mlflow.db").exists()


def test_a_dataset_beyond_this_machines_memory_is_refused_with_the_numbers(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolution 512 with 64 + 16 + 16 upstream samples is 5 float32 arrays of 512^2 each: 503 MB.
    With 0.4 GB of memory (patched: a real machine's is far larger) run-grid refuses it before
    generating anything, the dry run warns, a SLURM grid (nodes of unknown memory) only warns."""
    from repro.grid import resources

    monkeypatch.setattr(resources, "machine_memory_bytes", lambda: 400_000_000)
    monkeypatch.setenv(schema.ENV_HOME, str(tmp_path / "home"))
    grid = str(write_grid(tmp_path / "g.toml", "big", resolution=512, up=64, down=32))
    specs = [r.spec for r in _plan(grid).runs]
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    res = RUNNER.invoke(app, ["run-grid", "--grid", grid, "--tracking-uri", uri, "--data-dir", str(tmp_path / "data")])
    _one_clear_line(res, ["poisson(1,5)", "resolution 512", "64 + 16 + 16 samples", "0.5 GB", "0.4 GB"])
    assert not (tmp_path / "data").exists()  # refused before any dataset was generated
    # only what is left to do counts: with the big upstream's runs finished elsewhere, nothing is refused
    assert resources.memory_problem(specs, slots=1, remote=False, available=400_000_000)[1]
    assert resources.memory_problem([s for s in specs if s.data.n_train == 32], slots=1, remote=False,
                                    available=400_000_000) is None
    dry = RUNNER.invoke(app, ["run-grid", "--grid", grid, "--tracking-uri", uri, "--dry-run", "--no-calibrate"])
    assert dry.exit_code == 0 and "warning: run-grid will refuse this here" in dry.output, dry.output
    problem = resources.memory_problem(specs, slots=1, remote=True)
    assert problem is not None and not problem[1] and "compute nodes" in problem[0]
    assert resources.memory_problem(specs, slots=1, remote=False, available=10**10) is None
    train = RUNNER.invoke(app, ["train", "--pde", "poisson", "--range", "1,5", "--resolution", "512", "--sizes",
                                "64,16,16", "--tracking-uri", uri, "--data-dir", str(tmp_path / "data")])
    _one_clear_line(train, ["resolution 512", "0.4 GB"])
    assert not (tmp_path / "data").exists()


def _plan(grid: str):
    from repro.grid.plan import load_plan

    return load_plan(grid)
