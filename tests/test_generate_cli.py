"""`repro generate`: a good run, reuse, and one-line errors with no files left for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro.cli import app

runner = CliRunner()
SMALL = ["--n-train", "8", "--n-val", "4", "--n-test", "4", "--resolution", "16"]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_generate_writes_three_splits_and_reuses_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--pde", "poisson", "--range", "5,10", *SMALL, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "sha256:" in ln]
    assert [ln.split()[0] for ln in lines] == ["train", "val", "test"]
    paths = [Path(ln.split()[1]) for ln in lines]
    assert all(p.exists() and p.parent == tmp_path for p in paths)
    assert all(re.search(r"sha256:[0-9a-f]{64}$", ln) for ln in lines)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = runner.invoke(app, ["generate", "--pde", "poisson", "--range", "5,10", *SMALL, "--out", str(tmp_path)])
    assert again.exit_code == 0 and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert [ln for ln in again.output.splitlines() if "sha256:" in ln] == lines


def test_generate_mixed(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--pde", "mixed", *SMALL, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("mixed_*.h5"))) == 3


def test_help_has_an_example() -> None:
    result = runner.invoke(app, ["generate", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--range 5,10" in result.output


BAD = [
    (["--pde", "poisson", "--range", "10,5"], "--range"),  # low >= high
    (["--pde", "poisson", "--range", "5,5"], "--range"),
    (["--pde", "advdiff", "--range", "-1,2"], "--range"),  # negative
    (["--pde", "poisson", "--range", "1,inf"], "--range"),  # non-finite
    (["--pde", "poisson", "--range", "nan,2"], "--range"),
    (["--pde", "poisson", "--range", "1"], "--range"),  # malformed
    (["--pde", "poisson", "--range", "a,b"], "--range"),
    (["--pde", "helmholtz", "--range", "1.5,10"], "--range"),  # non-integer omega
    (["--pde", "helmholtz", "--range", "-2,10"], "--range"),
    (["--pde", "poisson"], "--range"),  # missing range
    (["--pde", "mixed", "--range", "1,5"], "--range"),  # mixture has fixed ranges
    (["--pde", "heat", "--range", "1,5"], "--pde"),  # unknown PDE
    (["--pde", "poisson", "--range", "1,5", "--n-train", "0"], "--n-train"),
    (["--pde", "poisson", "--range", "1,5", "--n-val", "-3"], "--n-val"),
    (["--pde", "poisson", "--range", "1,5", "--n-test", "1.5"], "--n-test"),
    (["--pde", "poisson", "--range", "1,5", "--resolution", "6"], "--resolution"),  # too small
    (["--pde", "poisson", "--range", "1,5", "--resolution", "33"], "--resolution"),
    (["--pde", "poisson", "--range", "1,5", "--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("args,option", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_error_and_no_files(tmp_path: Path, args: list[str], option: str) -> None:
    out = tmp_path / "out"
    # small defaults, overridden by the bad option under test
    options = dict(zip(SMALL[::2], SMALL[1::2])) | dict(zip(args[::2], args[1::2]))
    result = runner.invoke(app, ["generate", *[x for kv in options.items() for x in kv], "--out", str(out)])
    assert result.exit_code != 0
    errors = _error_lines(result.output)
    assert len(errors) == 1 and option in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["generate", "--pde", "poisson", "--range", "1,5", *SMALL, "--out", str(blocker / "sub")])
    assert result.exit_code != 0
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "--out" in errors[0] and "not a writable directory" in errors[0]
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
