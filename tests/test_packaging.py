"""environment.yml and pyproject.toml name the same packages with the same version ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    assert m, spec
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip_specs = dict(_split(s) for s in specs)
    conda_specs = {}
    in_deps = in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        if not in_deps:
            continue
        if re.match(r"^\s+- pip:\s*$", line):
            in_pip = True
            continue
        m = re.match(r"^  - (\S.*?)\s*(#.*)?$", line)
        if m and not in_pip:
            name, spec = _split(m.group(1))
            if name in ("python", "pip"):
                continue
            conda_specs[CONDA_NAMES.get(name, name)] = spec
    assert conda_specs == pip_specs


def test_environment_pins_python_311_and_conda_forge():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and "python=3.11" in text
