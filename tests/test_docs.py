"""What users read stays true: the tests the README cites exist, and nothing cites a file outside
the repository (a clone has only what is in it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_FACING = ["README.md", "docs", "cacr_lab", "app", "notebooks"]


def _user_files() -> list[Path]:
    files: list[Path] = []
    for name in USER_FACING:
        path = ROOT / name
        files += (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.suffix in (".py", ".md", ".ipynb"))
        )
    return files


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) for `tests/f.py::name` and for `::name` following such a citation."""
    found, current = [], None
    for m in re.finditer(r"(tests/[\w/]+\.py)?::(test_\w+)", text):
        current = m.group(1) or current
        if current:
            found.append((current, m.group(2)))
    return found


def test_every_test_the_readme_cites_exists():
    text = (ROOT / "README.md").read_text()
    cited = cited_tests(text)
    assert len(cited) > 20  # the Faithfulness table
    missing = [
        f"{f}::{name}"
        for f, name in cited
        if not (ROOT / f).is_file()
        or not re.search(rf"^def {name}\(", (ROOT / f).read_text(), re.M)
    ]
    assert not missing, missing


def test_the_citation_parser_sees_continuations():
    text = "`tests/a.py::test_x`, `::test_y`; `tests/b.py::test_z`"
    assert cited_tests(text) == [
        ("tests/a.py", "test_x"),
        ("tests/a.py", "test_y"),
        ("tests/b.py", "test_z"),
    ]


def test_nothing_user_facing_cites_the_development_workspace():
    # REFERENCE.md and ../shared exist only beside the development checkout; docs/method.md is
    # the project's own account of the method.
    offenders = [
        str(p.relative_to(ROOT))
        for p in _user_files()
        if re.search(r"REFERENCE\.md|\.\./shared", p.read_text(errors="replace"))
    ]
    assert not offenders, offenders
