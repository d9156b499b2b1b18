"""Figures of the conditional weights: what a snapshot recorded, and what the theory predicts.

From a :class:`~cacr_lab.runs.Snapshot` (the weights of Q sampled queries, and their d²):
:func:`weight_histograms` and :func:`weight_vs_distance`. From the formula alone:
:func:`weights_vs_distance_curves`, the weight a point gets against its squared distance per tau
(with InfoNCE's implicit weights for comparison). Weights are shown as weight × set size, so 1
means uniform whatever the set size.

>>> fig = weights_vs_distance_curves(np.linspace(0, 4, 9), [0.0, 1.0], kind="neg")
>>> [t.name for t in fig.data]
['cacr tau_neg=0', 'cacr tau_neg=1']
"""

from collections.abc import Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.figures.style import (
    _D2_AXIS,
    _UNIFORM_AXIS,
    METHOD_COLORS,
    _finish,
    _panel_note,
)
from cacr_lab.runs import Snapshot


def _weights(snapshot: Snapshot, need_d2: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{"pos"/"neg": (weights (Q, set size), d2 or None)} for the sides the snapshot holds."""
    if not isinstance(snapshot, Snapshot):
        raise ValueError(f"expected a Snapshot, got {type(snapshot).__name__}")
    sides = {}
    for side in ("pos", "neg"):
        w, d2 = getattr(snapshot, f"{side}_weights"), getattr(snapshot, f"{side}_d2")
        if w is not None and (d2 is not None or not need_d2):
            sides[side] = (np.asarray(w, dtype=np.float64), d2)
    if not sides:
        wanted = "weights and d2" if need_d2 else "weights"
        raise ValueError(f"snapshot at step {snapshot.step} holds no pos/neg {wanted}")
    return sides


def _missing_side_note(method: str | None, side: str) -> str:
    """The note in the panel of a side the snapshot does not hold: for a run's ``method``, it
    weights none (InfoNCE and its kin: one positive per view pair, nothing to weight); without
    a method, only that this snapshot has none."""
    if method is None:
        return "not in this<br>snapshot"
    what = "positives" if side == "pos" else "negatives"
    return f"not recorded:<br>{method} weights<br>no {what}"


def _side_titles(sides: dict, prefix: str = "") -> list[str]:
    """Subplot titles naming each side and its set size, short enough for a half-width chart."""
    titles = []
    for side, letter, what in (("pos", "K", "positives"), ("neg", "N", "negatives")):
        if side in sides:
            titles.append(f"{prefix}{letter} = {sides[side][0].shape[1]} {what}")
        else:
            titles.append(f"{prefix}no {what} weighted")
    return titles


def weight_histograms(
    snapshot: Snapshot,
    title: str | None = None,
    *,
    bins: int = 40,
    method: str | None = None,
) -> go.Figure:
    """Histograms of pi_pos × K and pi_neg × N over the snapshot's Q sampled queries.

    Two panels, titled with the set sizes; a side missing from the snapshot (InfoNCE records no
    pi_pos) keeps its panel with a note saying so -- ``method`` names the loss in it. Traces
    are bar traces named ``pi_pos`` and ``pi_neg``: ``bins`` equal bins of ``weights.ravel() *
    set size`` between its min and max, x the bin centres, y the fraction of weights in each.
    Binned here, not by plotly.js: the raw weights of a snapshot are tens of thousands of
    numbers, which made the page's JSON ~50x larger and the browser seconds slower to draw.
    """
    sides = _weights(snapshot, need_d2=False)
    fig = make_subplots(rows=1, cols=2, subplot_titles=_side_titles(sides))
    for col, (side, letter) in enumerate((("pos", "K"), ("neg", "N")), start=1):
        fig.update_xaxes(title_text=f"pi_{side} × {letter} (1 = uniform)", row=1, col=col)
        if side not in sides:
            _panel_note(fig, _missing_side_note(method, side), row=1, col=col)
            continue
        w = sides[side][0]
        values = (w * w.shape[1]).ravel()
        counts, edges = np.histogram(values, bins=bins)
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=counts / max(values.size, 1),
                width=np.diff(edges),
                name=f"pi_{side}",
                showlegend=False,  # the panel titles say which is which
                marker_color="#2CA02C" if side == "pos" else "#D62728",
                marker_line_width=0,
                opacity=0.8,
                hovertemplate=f"pi_{side} × {letter} " + "%{x:.3g}: %{y:.1%}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_vline(x=1.0, line_dash="dot", line_color="gray", row=1, col=col)
    fig.update_yaxes(title_text="fraction of weights", row=1, col=1)
    default = f"Conditional weights at step {snapshot.step} (epoch {snapshot.epoch})"
    return _finish(fig, title or default, height=380)


def weight_vs_distance(
    snapshot: Snapshot, n_queries: int = 4, *, method: str | None = None
) -> go.Figure:
    """Weight × set size against d² for the first ``n_queries`` sampled queries.

    CACR's picture: pi_pos rises with d² (far positives pulled hardest), pi_neg falls with d²
    (near negatives pushed hardest). One marker trace per (side, query), named ``query q``. A
    side missing from the snapshot keeps its panel with a note (``method`` names the loss).
    """
    if not isinstance(n_queries, int) or n_queries < 1:
        raise ValueError(f"n_queries must be an int >= 1, got {n_queries!r}")
    sides = _weights(snapshot, need_d2=True)
    # a y-axis title on each panel: a wider gap than plotly's 0.1 keeps it off its neighbour
    fig = make_subplots(rows=1, cols=2, subplot_titles=_side_titles(sides), horizontal_spacing=0.16)
    for col, (side, letter) in enumerate((("pos", "K"), ("neg", "N")), start=1):
        fig.update_yaxes(title_text=f"pi_{side} × {letter}", row=1, col=col)
        if side not in sides:
            _panel_note(fig, _missing_side_note(method, side), row=1, col=col)
            continue
        w, d2 = sides[side]
        d2 = np.asarray(d2, dtype=np.float64)
        for q in range(min(n_queries, w.shape[0])):
            fig.add_trace(
                go.Scatter(
                    x=d2[q],
                    y=w[q] * w.shape[1],
                    mode="markers",
                    name=f"query {q}",
                    legendgroup=f"query {q}",
                    showlegend=col == 1 or "pos" not in sides,
                    marker={"color": pc.qualitative.D3[q % 10], "size": 6, "opacity": 0.7},
                ),
                row=1,
                col=col,
            )
        fig.add_hline(y=1.0, line_dash="dot", line_color="gray", row=1, col=col)
    fig.update_xaxes(title_text=_D2_AXIS)
    title = (
        f"Weight against squared distance<br><sup>step {snapshot.step} (epoch "
        f"{snapshot.epoch}) · weight × set size: 1 = uniform</sup>"
    )
    return _finish(fig, title, height=400)


# --------------------------------------------------------------------------------------------
# Theory: weight against distance
# --------------------------------------------------------------------------------------------


def _relative_softmax(logits: np.ndarray) -> np.ndarray:
    """n · softmax(logits): 1 = uniform share. Max-subtracted, so large tau cannot overflow."""
    e = np.exp(logits - logits.max())
    return e * (logits.size / e.sum())


def weights_vs_distance_curves(
    d2: np.ndarray,
    taus: Sequence[float],
    kind: str = "neg",
    *,
    infonce_temperature: float | None = None,
    log_y: bool = False,
) -> go.Figure:
    """Theory: the weight a point at squared distance d² gets, relative to uniform, per tau.

    ``d2`` (n,) in [0, 4] is both the x grid and the set the softmax normalises over (e.g.
    ``np.linspace(0, 4, 200)``, or the d² of a real query's negatives). For CACR::

        kind="pos":  n · pi_pos = n · softmax(+tau · d2)    farther positive -> heavier
        kind="neg":  n · pi_neg = n · softmax(−tau · d2)    closer negative  -> heavier

    tau = 0 is flat at 1 (uniform). With ``infonce_temperature`` T (negatives only) the InfoNCE
    implicit weights n · softmax(−d2 / (2T)) are added: since sim = 1 − d²/2, exp(sim/T) ∝
    exp(−d²/(2T)), i.e. InfoNCE weights negatives like CACR with tau_neg = 1/(2T).
    """
    if kind not in ("pos", "neg"):
        raise ValueError(f"kind must be 'pos' or 'neg', got {kind!r}")
    d2 = np.sort(np.asarray(d2, dtype=np.float64).ravel())
    if d2.size < 2 or not np.isfinite(d2).all() or d2[0] < -1e-6 or d2[-1] > 4 + 1e-6:
        raise ValueError(
            f"d2 must hold >= 2 finite values in [0, 4], got {d2.size} values in "
            f"[{d2.min() if d2.size else None}, {d2.max() if d2.size else None}]"
        )
    taus = [float(t) for t in taus]
    if not taus or any(not np.isfinite(t) or t < 0 for t in taus):
        raise ValueError(f"taus must be a non-empty list of finite values >= 0, got {taus}")
    sign = 1.0 if kind == "pos" else -1.0
    fig = go.Figure()
    reds = pc.sample_colorscale("Reds", np.linspace(0.35, 1.0, len(taus)))
    for tau, color in zip(taus, reds, strict=True):
        fig.add_trace(
            go.Scatter(
                x=d2,
                y=_relative_softmax(sign * tau * d2),
                mode="lines",
                name=f"cacr tau_{kind}={tau:g}",
                line={"color": color},
            )
        )
    if infonce_temperature is not None:
        if kind != "neg":
            raise ValueError(
                "InfoNCE weights only negatives (its single positive has no "
                f"weighting); got kind={kind!r} with infonce_temperature"
            )
        t = float(infonce_temperature)
        if not np.isfinite(t) or t <= 0:
            raise ValueError(f"infonce_temperature must be > 0, got {infonce_temperature!r}")
        fig.add_trace(
            go.Scatter(
                x=d2,
                y=_relative_softmax(-d2 / (2 * t)),
                mode="lines",
                name=f"infonce T={t:g} (implicit)",
                line={"color": METHOD_COLORS["infonce"], "dash": "dash"},
            )
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray")
    fig.update_xaxes(title_text=_D2_AXIS, range=[0, 4])
    # A log axis in powers of ten: plotly's default SI labels read "1μ, 100μ" for 1e-6, 1e-4.
    fig.update_yaxes(
        title_text=_UNIFORM_AXIS,
        type="log" if log_y else "linear",
        exponentformat="power" if log_y else None,
    )
    side = "positive" if kind == "pos" else "negative"
    return _finish(fig, f"Conditional weight of a {side} against its squared distance")
