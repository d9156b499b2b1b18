"""Figures of a study (``cacr-lab study``): intervals and rare-vs-frequent bars.

Each takes plain rows (mappings of numbers and names, as :mod:`cacr_lab.study` computes them and
the dashboard reads them back from a study folder) and returns a ``go.Figure``. Values are in
percent (accuracies) or percent points (differences); ``lo`` / ``hi`` are the bounds of an
interval, None or NaN where there is none (one seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.figures.style import _finish, method_color

__all__ = ["interval_plot", "rare_frequent_bars", "study_accuracy_bars"]

HALF_COLORS = {"rare": "#d62728", "frequent": "#1f77b4"}  # rare classes red, frequent blue


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _errors(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Asymmetric error bars from ``mean``, ``lo``, ``hi`` (0 where there is no interval)."""
    plus = [_num(r["hi"]) - _num(r["mean"]) for r in rows]
    minus = [_num(r["mean"]) - _num(r["lo"]) for r in rows]
    return {
        "type": "data",
        "symmetric": False,
        "array": [0.0 if math.isnan(v) else v for v in plus],
        "arrayminus": [0.0 if math.isnan(v) else v for v in minus],
    }


def _check(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        raise ValueError("no rows given")
    for i, r in enumerate(rows):
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"row {i} has no {', '.join(missing)} (needs {', '.join(keys)})")


def interval_plot(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "CACR − baseline, paired by seed (95 % t-interval)",
    x_title: str = "difference (percent points)",
) -> go.Figure:
    """One dot per row at its ``mean`` with the interval ``[lo, hi]`` as a bar, and a line at 0:
    an interval that crosses it is inconclusive.

    ``rows``: mappings with ``label`` (the row's name, e.g. ``"infonce · exponential · probe"``),
    ``mean``, ``lo``, ``hi``, and optionally ``method`` (its colour).
    """
    _check(rows, ("label", "mean", "lo", "hi"))
    fig = go.Figure()
    for r in rows:
        fig.add_trace(
            go.Scatter(
                x=[_num(r["mean"])],
                y=[str(r["label"])],
                mode="markers",
                marker={"size": 9, "color": method_color(r.get("method", "cacr"))},
                error_x=_errors([r]),
                showlegend=False,
                hovertemplate=f"{r['label']}<br>%{{x:+.2f}} [{_num(r['lo']):+.2f}, "
                f"{_num(r['hi']):+.2f}]<extra></extra>",
            )
        )
    fig.add_vline(x=0.0, line_dash="dash", line_color="#888")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(autorange="reversed")
    return _finish(fig, title, height=160 + 28 * len(rows))


def rare_frequent_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "Accuracy on the rarer and the more frequent half of the classes",
) -> go.Figure:
    """Per imbalance profile (one panel each), per method: bars of the mean accuracy over the
    rare half and the frequent half of the classes, with interval bars.

    ``rows``: mappings with ``profile``, ``method``, ``half`` (``"rare"`` | ``"frequent"``),
    ``mean``, ``lo``, ``hi`` (percent).
    """
    _check(rows, ("profile", "method", "half", "mean", "lo", "hi"))
    profiles = list(dict.fromkeys(str(r["profile"]) for r in rows))
    fig = make_subplots(rows=1, cols=len(profiles), subplot_titles=profiles, shared_yaxes=True)
    for col, profile in enumerate(profiles, start=1):
        for half in ("rare", "frequent"):
            part = [r for r in rows if str(r["profile"]) == profile and r["half"] == half]
            if not part:
                continue
            fig.add_trace(
                go.Bar(
                    x=[str(r["method"]) for r in part],
                    y=[_num(r["mean"]) for r in part],
                    error_y=_errors(part),
                    name=f"{half} half",
                    legendgroup=half,
                    showlegend=col == 1,
                    marker_color=HALF_COLORS[half],
                    hovertemplate="%{x}<br>" + half + " half %{y:.2f} %<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    return _finish(fig, title, height=450)


def study_accuracy_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = "linear probe",
    title: str | None = None,
) -> go.Figure:
    """Grouped bars: x = imbalance profile, one bar per method (its colour) at its mean over
    seeds, with its interval. ``rows``: mappings with ``method``, ``profile``, ``mean``, ``lo``,
    ``hi`` (percent)."""
    _check(rows, ("method", "profile", "mean", "lo", "hi"))
    fig = go.Figure()
    for method in dict.fromkeys(str(r["method"]) for r in rows):
        part = [r for r in rows if str(r["method"]) == method]
        fig.add_trace(
            go.Bar(
                x=[str(r["profile"]) for r in part],
                y=[_num(r["mean"]) for r in part],
                error_y=_errors(part),
                name=method,
                marker_color=method_color(method),
                hovertemplate=method + " · %{x}<br>%{y:.2f} %<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=f"{metric} accuracy (%)")
    return _finish(fig, title or f"{metric} accuracy per method and profile (95 % t-interval)", 450)
