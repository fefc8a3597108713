"""Every document the code cites is inside the repository, and every cited section exists.

The protocol and design notes number their headings ``## §N Title`` / ``### §N.M Title``
(docs/protocol.md, "Heading scheme"); code and docs cite them as ``docs/protocol.md §N.M``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".md", ".py", ".toml", ".sh")
#: Places outside the repository that a reference must never point to (spelled in pieces so that
#: this file does not match itself).
FORBIDDEN = ("PROTOCOL" + ".md", "DESIGN" + ".md", "../" + "shared", "/work/" + "shared")
#: The documents whose numbered sections are cited.
CITED = ("docs/design.md", "docs/protocol.md")
HEADING = re.compile(r"^(#{2,6}) §(\d+(?:\.\d+)*) \S", re.M)
SECTION = r"§(\d+(?:\.\d+)*)"


def _text_files() -> list[Path]:
    """Tracked and new (not ignored) text files of the checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
        names = out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):  # no git: walk the tree instead
        rel = [p.relative_to(ROOT) for p in ROOT.rglob("*")]
        names = [str(r) for r in rel
                 if not any(part.startswith(".") or part.endswith(".egg-info") for part in r.parts)]
    return sorted(ROOT / n for n in set(names) if n.endswith(SUFFIXES) and (ROOT / n).is_file())


def headings(text: str) -> set[str]:
    """Section numbers of a document's numbered headings; checks the scheme on the way."""
    found = HEADING.findall(text)
    numbers = [number for _, number in found]
    assert len(numbers) == len(set(numbers)), f"a section number is used twice: {sorted(numbers)}"
    for hashes, number in found:  # "## §3" is a section, "### §3.1" a subsection of it
        assert number.count(".") == len(hashes) - 2, f"'{hashes} §{number}' is at the wrong level"
        if "." in number:
            assert number.rsplit(".", 1)[0] in numbers, f"§{number} has no parent section"
    return set(numbers)


def citations(text: str, doc: str) -> list[str]:
    """Section numbers cited as ``<doc> §N.M`` (also inside backticks or a Markdown link)."""
    return re.findall(re.escape(doc) + r"(?:\]\([^)]*\))?`? " + SECTION, text)


def bad_citations(files: dict[str, str], doc: str, sections: set[str]) -> list[str]:
    return [f"{name}: {doc} §{n}" for name, text in files.items() for n in citations(text, doc)
            if n not in sections]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8", errors="replace")
            for p in _text_files()}


def test_no_reference_points_outside_the_repository(files: dict[str, str]) -> None:
    hits = [f"{name}:{i}: {line.strip()}" for name, text in files.items()
            for i, line in enumerate(text.splitlines(), 1) if any(bad in line for bad in FORBIDDEN)]
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", CITED)
def test_every_cited_section_exists(files: dict[str, str], doc: str) -> None:
    sections = headings((ROOT / doc).read_text(encoding="utf-8"))
    assert sections, f"{doc} has no numbered headings"
    bad = bad_citations(files, doc, sections)
    assert not bad, f"citations of sections that {doc} does not have:\n" + "\n".join(bad)


def test_protocol_cites_only_its_own_sections_and_defines_the_labels() -> None:
    text = (ROOT / "docs/protocol.md").read_text(encoding="utf-8")
    sections = headings(text)
    assert {"1", "2", "3", "4", "2.1", "3.4", "4.3"} <= sections
    # Bare "§N" in the protocol refers to the protocol; drop citations of the other docs first.
    own = re.sub(r"docs/(?!protocol\.md)[\w.-]+\.md`? " + SECTION, "", text)
    inner = set(re.findall(SECTION, own))
    assert inner <= sections, f"docs/protocol.md cites missing sections: {sorted(inner - sections)}"
    labels = [f"SYS-{k}" for k in (1, 2, 3)] + [f"E{k}" for k in range(1, 5)]
    for label in labels + [f"F{k}" for k in range(1, 7)]:
        assert re.search(rf"\| {label}\b", text), f"{label} is not defined in a protocol table"


def test_every_docs_path_mentioned_exists(files: dict[str, str]) -> None:
    missing = sorted({f"{name}: {path}" for name, text in files.items()
                      for path in re.findall(r"\bdocs/[\w.-]+\.md\b", text)
                      if not (ROOT / path).is_file()})
    assert not missing, "mentions of docs that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_a_bad_citation_and_an_outside_reference() -> None:
    """The checkers themselves: a made-up section and an outside path must be reported."""
    sections = headings("# Title\n\n## §1 One\n\n### §1.1 Sub\n\n## §2 Two\n")
    assert sections == {"1", "1.1", "2"}
    doc = "docs/protocol.md"  # the citations below are built, so this file cites nothing itself
    fake = {"x.py": f"see {doc} §1.1 and [{doc} §7]({doc})."}
    assert bad_citations(fake, doc, sections) == [f"x.py: {doc} §7"]
    assert citations(f"({doc} §2.5).", doc) == ["2.5"]
    assert any(bad in "the science is in ../" + "shared/" + "PROTOCOL" + ".md" for bad in FORBIDDEN)
    with pytest.raises(AssertionError):
        headings("## §1 One\n\n## §1.2 Wrong level\n")
