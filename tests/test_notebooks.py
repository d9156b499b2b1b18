"""The notebooks as stored in git: outputs stripped, a smoke switch, listed in reading order.

Executing them is nbmake's job: ``make test`` runs ``pytest --nbmake notebooks/`` with
``CACR_LAB_SMOKE=1`` and ``CACR_LAB_RUNS`` set to a temporary folder, so a notebook that raises
fails the suite. These tests check what must hold before that run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED = [
    "01_attraction_and_repulsion.ipynb",
    "02_cacr_vs_contrastive.ipynb",
    "03_imbalanced_data.ipynb",
    "04_ablations.ipynb",
    "05_gpu_reproduction.ipynb",
    "06_weights_under_the_lens.ipynb",
]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_lessons_are_all_there():
    assert [p.name for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    """Outputs and execution counts stay out of git, so diffs show only what a person wrote.
    Strip them with ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``."""
    nb = _load(path)
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: saved widget state"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_first_code_cell_holds_the_parameters_and_the_smoke_switch(path):
    first = _source(_code_cells(_load(path))[0])
    assert 'os.environ.get("CACR_LAB_SMOKE") == "1"' in first
    assert re.search(r"^SMOKE = ", first, re.M), "the switch is named SMOKE"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_opens_with_title_goal_and_runtime(path):
    intro = _source(_load(path)["cells"][0])
    assert intro.startswith("# "), "first cell: a markdown title"
    for word in ("**Goal.**", "**What you will learn**", "**Runtime.**"):
        assert word in intro, f"{path.name}: the introduction lacks {word}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_code_uses_the_library_without_installs_or_machine_paths(path):
    code = "\n".join(_source(c) for c in _code_cells(_load(path)))
    assert "cacr_lab" in code
    assert not re.search(r"pip install|conda install|^!|^%pip", code, re.M)
    assert not re.search(r"/(work|home|tmp|Users)/", code), "no machine paths in a notebook"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_every_slider_callback_is_checked_in_ci(path):
    """An exception inside an ipywidgets callback only reaches the widget's output; nbmake's
    post_cell_execute calls the callback again so that it fails the run."""
    for cell in _code_cells(_load(path)):
        src = _source(cell)
        if "widgets.interact" not in src:
            continue
        name = re.search(r"@widgets\.interact\(.*?\)\s*\ndef (\w+)\(", src, re.S)
        assert name, f"{path.name}: use @widgets.interact(...) on a named function"
        check = cell.get("metadata", {}).get("nbmake", {}).get("post_cell_execute", [])
        assert check == [f"{name.group(1)}(**{name.group(1)}.widget.kwargs)"], src[:80]


def test_readme_links_the_notebooks_in_reading_order():
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+\.ipynb)\)", readme)
    assert links == EXPECTED
