"""A notebook exported to HTML shows its formulas offline: ``figures.mathjax_url`` points
nbconvert's page at the MathJax installed with the lab, and headless Chromium (which reaches no
network here) typesets the page's TeX with it. The figures' side of an export is
``figures.setup_notebook``'s (tests/test_figures_layout.py).

The browser helpers are tests/_browser.py's; the browser test skips
with the reason where chromium, chromedriver or selenium are missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import _browser as web
import nbformat
import pytest
from nbconvert import HTMLExporter

from cacr_lab.figures import mathjax_url

ROOT = Path(__file__).resolve().parents[1]


def test_mathjax_url_is_a_local_mathjax_with_its_config():
    url = urlsplit(mathjax_url())
    assert url.scheme == "file"
    script = Path(url.path)
    assert script.name == "MathJax.js" and script.is_file()
    for config in url.query.removeprefix("config=").split(","):
        if config.startswith("file:"):  # the lab's own settings (its fonts), by full URL
            assert Path(urlsplit(config).path).is_file(), config
        else:
            assert (script.parent / "config" / f"{config}.js").is_file(), config


def export(tmp_path: Path, **exporter) -> Path:
    """A one-cell notebook with inline and display math, exported to HTML."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "Weights $\\pi^+(k \\mid x)$ and\n\n$$ d^2(a, b) = 2 - 2\\, a^\\top b $$"
        ),
        # notebook 01's first display formula: with MathJax's default (TeX) fonts, which the
        # local copy lacks, it showed "[Math Processing Error]"
        nbformat.v4.new_markdown_cell(
            "$$\\pi^+(k \\mid x) = \\frac{e^{+\\tau^+ d^2(x, x_k^+)}}"
            "{\\sum_{k'} e^{+\\tau^+ d^2(x, x_{k'}^+)}}$$"
        ),
    ]
    body, _ = HTMLExporter(**exporter).from_notebook_node(nb)
    page = tmp_path / "nb.html"
    page.write_text(body)
    return page


def typeset_count(driver) -> int:
    """How many formulas MathJax 2 has typeset on the page (0 while it has not run)."""
    return driver.execute_script(
        "return document.querySelectorAll('.MathJax_CHTML, .MathJax, .MathJax_SVG').length"
    )


@pytest.mark.skipif(web.browser_missing() is not None, reason=web.browser_missing() or "")
def test_an_exported_notebook_typesets_its_formulas_offline(tmp_path):
    page = export(tmp_path, mathjax_url=mathjax_url())
    assert mathjax_url() in page.read_text()
    driver = web.make_driver(tmp_path / "profile", width=900, height=600)
    try:
        driver.get(page.as_uri())
        web.wait_until(lambda: typeset_count(driver) >= 3, 60, "MathJax to typeset the formulas")
        time.sleep(1.0)  # its fonts' metrics arrive last
        text = driver.execute_script("return document.body.innerText")
        assert "\\pi^+" not in text  # no TeX source left on the page
        assert "Math Processing Error" not in text
        # nbconvert's default (a CDN) typesets nothing here: the test's page would stay as TeX.
        driver.get(export(tmp_path, mathjax_url="https://cdn.invalid/MathJax.js").as_uri())
        time.sleep(2.0)
        assert typeset_count(driver) == 0
        assert "\\pi^+" in driver.execute_script("return document.body.innerText")
    finally:
        driver.quit()
