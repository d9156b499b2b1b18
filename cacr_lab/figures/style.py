"""The look every figure shares: colours, line styles, axis titles, legend names, the finish.

A method keeps one colour everywhere (:func:`method_color`, several runs of one method spread over
shades of it), a class keeps one colour everywhere (:func:`class_color`), a loss part keeps one line
style (:data:`_DASH`), and every builder ends with :func:`_finish` (title, template, and a note
on an empty figure). The builders of the sibling modules import from here; nothing here draws.

>>> method_color("cacr")
'#D62728'
>>> class_color(2, n_classes=3)
'#2CA02C'
"""

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
_UNIFORM_AXIS = "weight × set size (1 = uniform)"
_D2_AXIS = "d² = ||z − z'||²"
_TEMPLATE = "plotly_white"


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


def _shade(color: str, amount: float) -> str:
    """Mix a hex colour towards white (amount > 0) or black (amount < 0); |amount| <= 1."""
    r, g, b = pc.hex_to_rgb(color)
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


def _finish(fig: go.Figure, title: str, height: int | None = None) -> go.Figure:
    fig.update_layout(title=title, template=_TEMPLATE, height=height, legend_title_text="")
    if not fig.data:
        fig.add_annotation(
            text="nothing recorded yet",
            showarrow=False,
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            font={"size": 16},
        )
    return fig
