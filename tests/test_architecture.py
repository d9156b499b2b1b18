"""The house's layers (docs/architecture.md): every import goes down, none goes round in a cycle.

Read statically from the source (every ``import`` statement, also those inside functions), so a
lazy import that breaks the layering is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Layer of each part, bottom (0) to top. An import may go to the same layer or one below.
LAYERS = {
    "cacr_lab._version": 0,
    "cacr_lab.losses": 1,
    "cacr_lab.models": 1,
    "cacr_lab.data": 1,
    "cacr_lab.runs": 2,
    "cacr_lab.config": 3,
    "cacr_lab.evaluate": 3,
    "cacr_lab.stats": 3,
    "cacr_lab.theory": 3,
    "cacr_lab.figures": 3,
    "cacr_lab.train": 4,
    "cacr_lab.experiments": 5,
    "cacr_lab.study_report": 5,
    "cacr_lab.study": 5,
    "cacr_lab.cli": 6,
    "cacr_lab.__main__": 6,
    "app": 7,
}


def part_of(module: str) -> str | None:
    """The part (a key of LAYERS) that a dotted module name belongs to."""
    for part in sorted(LAYERS, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every cacr_lab module that ``path`` imports, as absolute dotted names."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from cacr_lab import runs` imports the submodule cacr_lab.runs, not the root
            subs = {f"{mod}.{a.name}" for a in node.names if part_of(f"{mod}.{a.name}")}
            found.update(subs if len(subs) == len(node.names) else {mod, *subs})
    return {m for m in found if m == "cacr_lab" or m.startswith("cacr_lab.")}


def source_files() -> list[Path]:
    return sorted((ROOT / "cacr_lab").rglob("*.py")) + sorted((ROOT / "app").rglob("*.py"))


def edges() -> dict[str, set[str]]:
    """part -> the other parts it imports (the package's lazy __init__ is left out)."""
    graph: dict[str, set[str]] = {part: set() for part in LAYERS}
    for path in source_files():
        if path == ROOT / "cacr_lab" / "__init__.py":
            continue  # re-exports everything on first use: the top of the house by design
        src = "app" if path.parts[len(ROOT.parts)] == "app" else part_of(module_name(path))
        assert src is not None, f"{path} belongs to no layer: add it to LAYERS and the docs"
        for mod in imports_of(path):
            dst = part_of(mod)
            if mod == "cacr_lab":
                dst = "cacr_lab"  # the lazy package root: only __version__-like reads allowed
            if dst and dst != src:
                graph[src].add(dst)
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
        for src, dsts in sorted(graph.items())
        for dst in sorted(dsts)
        if dst in LAYERS and LAYERS[dst] > LAYERS[src]
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of parts (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt in graph and state.get(nxt) is None and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node, [])):
            return found
    return None


def test_every_import_goes_down_a_layer():
    wrong = layer_violations(edges())
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_parts():
    cycle = find_cycle(edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_library_never_imports_its_package_root():
    # `import cacr_lab` inside the library would load the lazy root and blur the layers.
    offenders = [src for src, dsts in edges().items() if "cacr_lab" in dsts]
    assert not offenders, offenders


def test_the_checks_can_fail():
    # A runs module importing the trainer, and two parts importing each other, are caught.
    assert layer_violations({"cacr_lab.runs": {"cacr_lab.train"}}) == [
        "cacr_lab.runs (layer 2) imports cacr_lab.train (layer 4)"
    ]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_reading_run_folders_imports_no_torch():
    # The dashboard's reader side stays light: runs and figures load without torch (and the
    # app test checks that the page loads neither the trainer nor the evaluation).
    code = "import sys, cacr_lab.runs, cacr_lab.figures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
