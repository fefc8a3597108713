"""The project's own contracts: README commands, CI script, import direction, CLI help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The commands of README's "Set-up" section (the part a newcomer copies)."""
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_main_job_and_tests() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert main_job.startswith("pip install torch==2.13.0 && pip install -e")
    assert main_job.endswith("repro run-grid")
    assert tests.startswith("pip install torch==2.13.0 && pip install -e")


def test_ci_runs_readme_test_command_after_installing_torch_first() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _readme_commands()[1].split("&&")[-1].strip()
    assert test_command.startswith("python -m pytest")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert test_command in ci_lines, f"{test_command!r} must appear verbatim in .ci/run"
    torch_at = next(i for i, line in enumerate(ci_lines) if "torch==2.13.0" in line)
    project_at = next(i for i, line in enumerate(ci_lines) if "pip install" in line and "-e" in line)
    assert torch_at < project_at < ci_lines.index(test_command)


def test_the_suite_schedule_names_test_files_that_exist() -> None:
    """conftest's heaviest-first order only helps while it names real files (a renamed file would
    silently drop back to collection order)."""
    from conftest import HEAVIEST_FIRST

    assert [p for p in HEAVIEST_FIRST if not (ROOT / p).is_file()] == []


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed in this environment")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_has_help_with_an_example() -> None:
    from repro.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert commands, "no commands registered"
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "repro " + name in result.output or "Example" in result.output, f"{name} --help shows no example"


def test_gpu_checks_script_parses_and_refuses_unknown_sections(tmp_path: Path) -> None:
    """benchmarks/gpu_checks.sh is what a GPU session runs in one call: it must at least parse and
    fail fast on a typo (its full CPU rehearsal, DEVICE=cpu SMOKE=1, takes about a minute)."""
    script = ROOT / "benchmarks" / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent), "OUT": str(tmp_path), "DEVICE": "cpu",
           "REPRO_HOME": str(tmp_path / "home")}
    res = subprocess.run(["bash", str(script), "grid", "benchmark"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "unknown section 'benchmark': allowed: bench, bf16, grid" in res.stderr
    assert not (tmp_path / "summary.txt").exists()  # refused before the grid section ran


def _import_cycles(package: str) -> list[list[str]]:
    """Strongly connected groups (> 1 module) of ``package``'s own import graph, function-level
    imports included (a lazy import is still a dependency a reader has to follow)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph(package)
    modules = sorted(m for m in graph.modules if m != package)  # a package's __init__ re-exports; skip it
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in modules and d != m} for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for m in modules:
        if m not in index:
            visit(m)
    return out


@pytest.mark.parametrize("package", ["repro", "analysis"])
def test_no_import_cycles(package: str) -> None:
    assert _import_cycles(package) == []
