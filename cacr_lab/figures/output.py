"""Where the figures go once built: HTML files and notebook outputs, both readable offline.

A plotly figure is JSON plus plotly.js (~4.7 MB) to draw it. Loaded from a CDN, a report or an
exported notebook is blank on a machine without internet -- a classroom, a train, a cluster node.
So every figure leaves the library with plotly.js from the installed ``plotly`` package:

- :func:`write_html`: one HTML page per figure, with ``plotly.min.js`` written once beside the
  pages and loaded by a relative ``<script src>`` (a folder of reports carries one copy, not one
  per page); ``inline=True`` embeds it instead, for a single file to send around.
- :func:`setup_notebook`: one call in a notebook's setup cell. ``fig.show()`` then stores each
  figure both as plotly's JSON mimetype (what JupyterLab draws) and as HTML, with plotly.js
  embedded once in the output of the first figure, so ``jupyter nbconvert --to html`` keeps every
  figure and the page needs no CDN.
- :func:`mathjax_url`: the formulas of an exported notebook. nbconvert's page loads MathJax from
  a CDN, so offline they show as TeX source; ``--HTMLExporter.mathjax_url`` set to this local
  copy (the ``jupyter-server-mathjax`` package) typesets them without a network.

Nothing here builds a figure; the builders are the sibling modules.
"""

from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

PLOTLY_JS = "plotly.min.js"  # the file :func:`write_html` puts beside its pages
NOTEBOOK_RENDERER = "cacr_lab_offline"  # the plotly renderer :func:`setup_notebook` registers


def write_html(fig: go.Figure, path: str | Path, *, inline: bool = False) -> Path:
    """Write ``fig`` as a standalone HTML page that renders offline; returns the page's path.

    Default: plotly.js of the installed plotly goes once into ``plotly.min.js`` in the page's
    folder (rewritten only when missing or from another plotly version) and the page loads it
    by a relative path -- keep the folder together. ``inline=True``: plotly.js inside the page
    (a single ~4.7 MB file). Never a CDN, never MathJax (no figure here uses LaTeX).
    """
    if not isinstance(fig, go.Figure):
        raise ValueError(f"expected a plotly Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path must end in .html, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if inline:
        fig.write_html(path, include_plotlyjs=True, include_mathjax=False, full_html=True)
        return path
    js, source = path.parent / PLOTLY_JS, get_plotlyjs()
    if not js.is_file() or js.read_text(encoding="utf-8") != source:
        js.write_text(source, encoding="utf-8")
    fig.write_html(path, include_plotlyjs=PLOTLY_JS, include_mathjax=False, full_html=True)
    return path


def _offline_notebook_renderer():
    """plotly's ``notebook`` renderer (plotly.js embedded once, on first use) without the
    MathJax ``<script>`` from a CDN that it adds to every figure. Built here, not at import:
    plotly's renderers import IPython, which the dashboard has no use for."""
    from plotly.io.base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict: dict) -> dict:
            html = pio.to_html(
                fig_dict,
                config=self.config,
                include_plotlyjs=False,  # embedded once by activate(), before the first figure
                include_mathjax=False,
                full_html=False,
                default_width="100%",
                default_height=525,
                validate=False,
            )
            return {"text/html": html}

    return OfflineNotebookRenderer()


def setup_notebook() -> str:
    """Make ``fig.show()`` in a notebook render in JupyterLab and in an HTML export, offline.

    Sets plotly's default renderer to ``plotly_mimetype`` (JupyterLab's own plotly renderer)
    plus an HTML renderer that embeds plotly.js once, in the output of the first figure shown,
    and draws each figure from it (what ``jupyter nbconvert --to html`` keeps). Idempotent;
    returns the renderer string set.
    """
    target = f"plotly_mimetype+{NOTEBOOK_RENDERER}"
    if pio.renderers.default == target:  # set already: plotly.js is not embedded twice
        return target
    pio.renderers[NOTEBOOK_RENDERER] = _offline_notebook_renderer()
    pio.renderers.default = target
    return target


MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # the configs jupyter-server-mathjax ships
MATHJAX_FONTS = Path(__file__).with_name("mathjax_stix.js")  # its fonts, for MathJax's HTML-CSS


def mathjax_url() -> str:
    """A ``file://`` URL of the MathJax installed with the lab, for an HTML export offline::

        jupyter nbconvert --to html --HTMLExporter.mathjax_url="$(python -c \
            'from cacr_lab.figures import mathjax_url; print(mathjax_url())')" NOTEBOOK

    The page then loads MathJax from this machine's disk (fine for reading it here; a page sent
    to another machine needs nbconvert's default CDN URL or a copy of the files beside it).
    ValueError if ``jupyter-server-mathjax`` (a dependency of the lab) is missing.
    """
    try:
        import jupyter_server_mathjax
    except ImportError as err:
        raise ValueError(
            "no local MathJax: pip install jupyter-server-mathjax (a dependency of cacr_lab)"
        ) from err
    script = Path(jupyter_server_mathjax.__file__).parent / "static" / "MathJax.js"
    if not script.is_file():
        raise ValueError(f"no MathJax.js in {script.parent}: reinstall jupyter-server-mathjax")
    # Then ours: the STIX-Web fonts, the only ones that package ships (MathJax takes a config
    # given as a full URL; a comma would split it).
    return f"{script.as_uri()}?config={MATHJAX_CONFIG},{MATHJAX_FONTS.as_uri()}"
