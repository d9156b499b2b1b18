"""The look every figure shares: colours, line styles, axis titles, legend names, the finish.

A method keeps one colour everywhere (:func:`method_color`, several runs of one method spread over
shades of it), a class keeps one colour everywhere (:func:`class_color`), a plotted quantity keeps
one line style, marker and shade of its run's colour (:func:`series_style`), and every builder
ends with :func:`_finish`: title, template, the legend under the plot, small subplot titles, and
a note inside every panel that has nothing to show (never an empty axis). The builders of the
sibling modules import from here; nothing here draws.

Layout is checked against the widths the figures are shown at (:data:`DESIGN_WIDTHS`): text
widths are estimated as characters x font size x :data:`CHAR_EM` (:func:`text_width`), and
tests/test_figures.py checks that neighbouring subplot titles fit their panels.

>>> method_color("cacr")
'#D62728'
>>> class_color(2, n_classes=3)
'#2CA02C'
"""

import re
import zlib
from collections.abc import Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go

from cacr_lab.runs import Run

# One line style per plotted quantity, the same in every figure: loss solid, attraction dashed,
# repulsion dotted, ...; pi_pos solid, pi_neg dashed.
_DASH = {
    "loss": "solid",
    "attraction": "dash",
    "repulsion": "dot",
    "alignment": "dashdot",
    "uniformity": "longdash",
    "knn_acc": "solid",
    "probe_acc": "dash",
    "pos": "solid",
    "neg": "dash",
}
# ... one marker per quantity (a series of one point shows as its marker) ...
_SYMBOL = {
    "loss": "circle",
    "attraction": "triangle-up",
    "repulsion": "triangle-down",
    "alignment": "square",
    "uniformity": "x",
    "knn_acc": "circle",
    "probe_acc": "diamond",
    "pos": "circle",
    "neg": "square",
}
# ... and one shade of its run's colour (< 0 darker, > 0 lighter), so that the series of one run
# differ in colour as well as in dash.
_SHADE = {
    "attraction": -0.35,
    "repulsion": 0.4,
    "alignment": -0.35,
    "uniformity": 0.4,
    "probe_acc": -0.4,
    "pos": -0.3,
    "neg": 0.2,
}
# One colour per method, the same in every figure (D3 palette), keyed by the registry's method
# names (the keys of cacr_lab.losses.LOSSES, written out here so that figures never imports
# torch; tests/test_figures.py checks the two agree). Unknown methods get a stable colour from a
# larger palette, chosen by a hash of the name (crc32: stable across processes).
METHOD_COLORS = {
    "cacr": "#D62728",
    "infonce": "#1F77B4",
    "align-uniform": "#2CA02C",
    "hard-negative": "#9467BD",
    "debiased": "#FF7F0E",
    "moco": "#E377C2",
}
# How each method's logged loss parts read. CACR logs attraction = the weighted d² to the
# positives (>= 0) and repulsion = minus the weighted d² to the negatives (<= 0), in d² units
# (d² in [0, 4]). The InfoNCE family logs -s+/T (mostly < 0) under "attraction" and the
# log-sum-exp (> 0) under "repulsion", in nats: the opposite signs, so their legends name the
# terms instead. Methods not listed keep the part keys.
_INFONCE_PARTS = {"attraction": "−s⁺/T", "repulsion": "log-sum-exp"}
PART_NAMES = {
    "infonce": _INFONCE_PARTS,
    "hard-negative": _INFONCE_PARTS,
    "debiased": _INFONCE_PARTS,
}
# The title of a method's loss panel: its terms and their unit.
LOSS_UNITS = {
    "cacr": "cacr · attraction ≥ 0, repulsion ≤ 0 (d²)",
    "infonce": "infonce · −s⁺/T + log-sum-exp (nats)",
    "hard-negative": "hard-negative · −s⁺/T + log-sum-exp (nats)",
    "debiased": "debiased · −s⁺/T + log-sum-exp (nats)",
    "align-uniform": "align-uniform · alignment + uniformity",
}
_UNIFORM_AXIS = "weight × set size (1 = uniform)"
_D2_AXIS = "d² = ||z − z'||²"
_TEMPLATE = "plotly_white"

# Layout. The widths (px) a figure is drawn at: the page's main area on a 1366-px laptop screen
# with the sidebar open is ~900 px, so a half column ~440 px; notebooks and HTML reports ~800 px.
DESIGN_WIDTHS = {"full": 800, "half": 440}
CHAR_EM = 0.55  # average glyph width / font size of plotly's sans-serif fonts (Arial ~0.5)
TITLE_SIZE = 16  # px: figure titles
SUBTITLE_SIZE = 12  # px: subplot titles, axis titles and panel notes
MARGIN = {"l": 60, "r": 24, "t": 84, "b": 40}
_NOTE = "nothing recorded yet"


def method_color(method: str) -> str:
    """The colour of a method in every figure (hex)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    palette = pc.qualitative.Light24
    return palette[zlib.crc32(method.encode()) % len(palette)]


def class_color(label: int, n_classes: int) -> str:
    """The colour of class ``label`` out of ``n_classes`` (D3 up to 10, Light24 up to 24, HSV)."""
    if n_classes <= 10:
        return pc.qualitative.D3[label % 10]
    if n_classes <= 24:
        return pc.qualitative.Light24[label % 24]
    return pc.sample_colorscale("HSV", [(label % n_classes) / n_classes])[0]


def run_label(run: Run) -> str:
    """Legend name of a run: the method as in its config, then the run's folder name."""
    return f"{run.method} · {run.name}"


def part_name(method: str, key: str) -> str:
    """The legend name of a logged loss part of ``method`` (:data:`PART_NAMES`, else the key).

    >>> part_name("infonce", "attraction"), part_name("cacr", "attraction")
    ('−s⁺/T', 'attraction')
    """
    return PART_NAMES.get(method, {}).get(key, key)


def series_style(color: str, key: str) -> dict:
    """The line and marker of quantity ``key`` of a run drawn in ``color``: its dash, its marker
    symbol and its shade of the run's colour (:data:`_DASH`, :data:`_SYMBOL`, :data:`_SHADE`)."""
    amount = _SHADE.get(key, 0.0)
    shade = _shade(color, amount) if amount else color
    return {
        "line": {"color": shade, "dash": _DASH.get(key, "solid")},
        "marker": {"color": shade, "symbol": _SYMBOL.get(key, "circle"), "size": 7},
    }


def _shade(color: str, amount: float) -> str:
    """Mix a colour (hex or ``rgb(r, g, b)``) towards white (amount > 0) or black (amount < 0);
    |amount| <= 1."""
    r, g, b = pc.hex_to_rgb(color) if color.startswith("#") else pc.unlabel_rgb(color)
    target = 255 if amount > 0 else 0
    mix = [round(c + (target - c) * abs(amount)) for c in (r, g, b)]
    return "rgb({}, {}, {})".format(*mix)


def _run_colors(runs: Sequence[Run]) -> list[str]:
    """Method colour per run; runs sharing a method spread over shades of that colour."""
    by_method: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        by_method.setdefault(run.method, []).append(i)
    colors = [""] * len(runs)
    for method, indices in by_method.items():
        base = method_color(method)
        if len(indices) == 1:
            colors[indices[0]] = base
            continue
        for amount, i in zip(np.linspace(-0.35, 0.45, len(indices)), indices, strict=True):
            colors[i] = _shade(base, float(amount))
    return colors


def _as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    if isinstance(runs, Run):
        return [runs]
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence):
        raise ValueError(f"expected a Run or a list of Runs, got {type(runs).__name__}")
    bad = [type(r).__name__ for r in runs if not isinstance(r, Run)]
    if bad:
        raise ValueError(f"expected Run objects, got {bad}; read them with cacr_lab.runs.load_run")
    if not runs:
        raise ValueError("no runs given")
    return list(runs)


def text_width(text: str, size: float) -> float:
    """Estimated width in px of ``text`` at font ``size``: its longest line (``<br>``-separated,
    tags removed; a ``<sup>`` line at 70 % of the size) x size x :data:`CHAR_EM`. Measured in
    Chromium, plotly's fonts take 0.43-0.48 x size per character: the estimate errs wide.

    >>> text_width("pi_pos<br><b>K = 4</b>", 10)
    33.0
    >>> text_width("Title<br><sup>a longer subtitle</sup>", 10)
    65.45
    """
    widths = []
    for line in text.split("<br>"):
        scale = 0.7 if line.lstrip().startswith("<sup>") else 1.0
        plain = re.sub(r"<[^>]*>", "", line)
        widths.append(len(plain) * size * scale * CHAR_EM)
    return round(max(widths), 6)


def wrap(text: str, width: float, size: float = TITLE_SIZE) -> str:
    """``text`` with ``<br>`` breaks at its spaces so that each line fits ``width`` px at font
    ``size`` (:func:`text_width`); a word longer than a line stays whole.

    >>> wrap("UMAP · a-long-run-name · step 40", 130, 10)
    'UMAP · a-long-run-name<br>· step 40'
    """
    per_line = max(1, int(width / (size * CHAR_EM)))
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def panels(fig: go.Figure) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    """``(x axis ref, x domain, y domain)`` of every x-y panel of ``fig`` (one for a plain
    figure), in paper coordinates."""
    layout = fig.layout
    keys = [k for k in layout.to_plotly_json() if re.fullmatch(r"xaxis\d*", k)]
    if not keys:
        return [("x", (0.0, 1.0), (0.0, 1.0))]
    found = []
    for key in sorted(keys, key=lambda k: int(k[5:] or 1)):
        xaxis = layout[key]
        anchor = xaxis.anchor if xaxis.anchor not in (None, "free") else "y"
        ydomain = layout["yaxis" + anchor[1:]].domain or (0.0, 1.0)
        found.append(("x" + key[5:], tuple(xaxis.domain or (0.0, 1.0)), tuple(ydomain)))
    return found


def _add_note(
    fig: go.Figure, text: str, xdomain: Sequence[float], ydomain: Sequence[float]
) -> None:
    """A message in the middle of the panel spanning ``xdomain`` x ``ydomain`` (paper units)."""
    fig.add_annotation(
        text=text,
        name="note",
        showarrow=False,
        x=(xdomain[0] + xdomain[1]) / 2,
        y=(ydomain[0] + ydomain[1]) / 2,
        xref="paper",
        yref="paper",
        xanchor="center",  # "auto" anchors a paper x < 1/3 on its left: off the panel's middle
        yanchor="middle",
        font={"size": SUBTITLE_SIZE + 1, "color": "#555555"},
    )


def _panel_note(fig: go.Figure, text: str, row: int = 1, col: int = 1) -> None:
    """A message inside the subplot at (row, col), for a panel with nothing to show; the
    panel's axes are hidden by :func:`_finish`."""
    sub = fig.get_subplot(row, col)
    _add_note(fig, text, sub.xaxis.domain, sub.yaxis.domain)


def _has_note(fig: go.Figure, xdomain: Sequence[float], ydomain: Sequence[float]) -> bool:
    return any(
        a.name == "note" and xdomain[0] <= a.x <= xdomain[1] and ydomain[0] <= a.y <= ydomain[1]
        for a in fig.layout.annotations
    )


def _note_empty_panels(fig: go.Figure, text: str) -> None:
    """Every x-y panel without a trace gets ``text`` inside it (unless a builder put its own
    note there) and loses its axes. Figures of other kinds (tables, 3-D) are left alone."""
    if any(not hasattr(t, "xaxis") for t in fig.data):
        return
    used = {t.xaxis or "x" for t in fig.data}
    for xref, xdomain, ydomain in panels(fig):
        if xref in used:
            continue
        if not _has_note(fig, xdomain, ydomain):
            _add_note(fig, text, xdomain, ydomain)
        xaxis = fig.layout["xaxis" + xref[1:]]
        anchor = xaxis.anchor if xaxis.anchor not in (None, "free") else "y"
        xaxis.visible = False
        fig.layout["yaxis" + anchor[1:]].visible = False


def _finish(
    fig: go.Figure, title: str, height: int | None = None, *, empty: str = _NOTE
) -> go.Figure:
    """The shared finish: title, template, height, the legend in rows under the plot (a legend
    beside a half-width chart took ~40 % of it), small subplot and axis titles, and ``empty``
    inside every panel with nothing to show."""
    fig.update_layout(
        title={"text": title, "font": {"size": TITLE_SIZE}},
        template=_TEMPLATE,
        height=height,
        margin=MARGIN,
        legend={
            "title_text": "",
            "orientation": "h",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "x": 0,
            "xanchor": "left",
        },
    )
    for annotation in fig.layout.annotations:  # the subplot titles
        if annotation.name != "note":
            annotation.font.size = SUBTITLE_SIZE
    fig.update_xaxes(title_font_size=SUBTITLE_SIZE)
    fig.update_yaxes(title_font_size=SUBTITLE_SIZE)
    _note_empty_panels(fig, empty)
    return fig
