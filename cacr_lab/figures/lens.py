"""What the weights look at: one query's images under pi_pos and pi_neg, and false negatives.

- :func:`query_lens`: a snapshot's query "under the lens" -- the query image and its K positive
  views with pi_pos and d², the negatives with the highest and the lowest weight (thumbnails
  with weight × N, class and d²), and the negatives InfoNCE's implicit weights favour on the
  same batch. Needs a version 2 snapshot (:attr:`~cacr_lab.runs.Snapshot.has_lens`).
- :func:`false_negative_curves`: over training, the share of the negative weights that falls on
  the query's own class (the eval records' ``fn_share`` keys, docs/method.md §8.1), for the
  run's weights, InfoNCE's implicit weights and uniform weights.

Thumbnails are ``go.Image`` traces; each carries ``meta`` = {"row", "rank", "index", "label",
"weight", "d2"} (index: the image's index in the held-out split), so a test or a notebook can
read back exactly what is shown.
"""

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.figures.style import (
    _as_runs,
    _finish,
    _run_colors,
    _shade,
    run_label,
)
from cacr_lab.runs import Run, Snapshot, series

# The rows of thumbnails of the lens panel, top to bottom (``meta["row"]`` of each thumbnail).
LENS_ROWS = ("query", "highest", "lowest")
_SAME_CLASS = "#D62728"  # caption colour of a negative of the query's own class
# The eval-record keys of the false-negative share: key -> (legend suffix, dash).
FN_KEYS = {
    "fn_share": ("its own weights", "solid"),
    "fn_share_infonce": ("InfoNCE's implicit weights", "dash"),
    "fn_share_uniform": ("uniform weights", "dot"),
}


def lens_queries(snapshot: Snapshot) -> int:
    """How many of the snapshot's queries the lens can show (those with stored views), 0 for a
    snapshot without the version 2 arrays."""
    if not isinstance(snapshot, Snapshot) or not snapshot.has_lens or snapshot.images is None:
        return 0
    views = snapshot.query_views
    return len(snapshot.query_index) if views is None else len(views)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(C, S, S) uint8 -> (S, S, 3) for go.Image (one channel repeated)."""
    img = np.asarray(pixels, dtype=np.uint8)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return img.transpose(1, 2, 0)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def _order(weights: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Column indices of the ``n`` highest (heaviest first) and lowest (lightest first)
    weights; ties keep the column order (a stable sort)."""
    high = np.argsort(-weights, kind="stable")[:n]
    low = np.argsort(weights, kind="stable")[:n]
    return {"highest": high, "lowest": low}


def _check_query(snapshot: Snapshot, query: int) -> int:
    if not isinstance(snapshot, Snapshot):
        raise ValueError(f"expected a Snapshot, got {type(snapshot).__name__}")
    if not snapshot.has_lens:
        raise ValueError(
            f"snapshot at step {snapshot.step} does not say who its queries' negatives are "
            "(a snapshot version 1, or a method that weights no negatives)"
        )
    if snapshot.images is None:
        raise ValueError(f"snapshot at step {snapshot.step} holds no pixels (toy points?)")
    n = lens_queries(snapshot)
    if isinstance(query, bool) or not isinstance(query, (int, np.integer)) or not 0 <= query < n:
        raise ValueError(f"query must be an int in [0, {n}), got {query!r}")
    return int(query)


def query_lens(
    snapshot: Snapshot,
    query: int = 0,
    *,
    n_negatives: int = 8,
    class_names: Sequence[str] | None = None,
    method: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """One query of ``snapshot`` under the lens: three rows of thumbnails and a comparison.

    1. the query image (un-augmented), the view the loss used as the query, and its K positive
       views, captioned with pi_pos × K and d² (where the method weights positives);
    2. the ``n_negatives`` negatives with the highest weight (pi_neg for CACR), heaviest first;
    3. the ``n_negatives`` with the lowest weight, lightest first;
    4. every negative of the query: weight × N against d², for the run's weights and for
       InfoNCE's implicit weights softmax(-d²/(2T)) on the same negatives (both fall with d²,
       so they rank the negatives alike; what differs is how much the nearest ones get).

    Negatives are captioned with class, weight × N and d²; those of the query's own class (false
    negatives) in red, in the thumbnails and in the comparison. The title gives this query's
    false-negative share under each weighting. ``method`` names the run's weights ("cacr" ->
    pi_neg); ``class_names`` the labels.
    """
    q = _check_query(snapshot, query)
    if not isinstance(n_negatives, int) or n_negatives < 1:
        raise ValueError(f"n_negatives must be an int >= 1, got {n_negatives!r}")
    w = np.asarray(snapshot.neg_weights[q], dtype=np.float64)
    views = snapshot.query_views[q] if snapshot.query_views is not None else []
    shown = min(n_negatives, w.size)
    cols = max(shown, 1 + len(views))
    pixels = {int(i): img for i, img in zip(snapshot.image_index, snapshot.images, strict=True)}
    cells = _query_cells(snapshot, q, views, pixels, class_names)
    d2 = np.asarray(snapshot.neg_d2[q], dtype=np.float64)
    label = int(snapshot.query_labels[q])
    for row, (row_name, columns) in enumerate(_order(w, shown).items(), start=2):
        for rank, c in enumerate(columns):
            index, neg_label = int(snapshot.neg_index[q, c]), int(snapshot.neg_labels[q, c])
            meta = {"row": row_name, "rank": rank, "column": int(c), "index": index}
            meta.update(label=neg_label, weight=float(w[c]), d2=float(d2[c]))
            same = neg_label == label
            # Three short lines, not one long one: 8 thumbnails share a half-width chart.
            caption = (
                f"{'= ' if same else ''}{_name(neg_label, class_names)}"
                f"<br>×{w[c] * w.size:.2f}<br>d² {d2[c]:.2f}"
            )
            cells[(row, rank + 1)] = (pixels[index], meta, caption, _SAME_CLASS if same else "")
    fig = _lens_grid(cells, cols, method)
    _add_comparison(fig, snapshot, q, method)
    return _lens_finish(fig, snapshot, q, cells, method, title)


def _query_cells(snapshot, q, views, pixels, class_names) -> dict:
    """The first row's cells {(1, col): (pixels, meta, caption, colour)}: the query image, the
    query's view and its positive views."""
    label, index = int(snapshot.query_labels[q]), int(snapshot.query_index[q])
    meta = {"row": "query", "rank": 0, "index": index, "label": label}
    caption = f"query<br>image {index}<br>{_name(label, class_names)}"
    cells = {(1, 1): (pixels[index], meta, caption, "")}
    for v, view in enumerate(views):
        caption = "view 0<br>(the query)" if v == 0 else f"positive {v}"
        meta = {"row": "query", "rank": v + 1, "index": index, "label": label}
        if v and snapshot.pos_weights is not None:
            meta["weight"] = float(snapshot.pos_weights[q, v - 1])
            caption += f"<br>π⁺×K {meta['weight'] * snapshot.pos_weights.shape[1]:.2f}"
            if snapshot.pos_d2 is not None:
                meta["d2"] = float(snapshot.pos_d2[q, v - 1])
                caption += f"<br>d² {meta['d2']:.2f}"
        cells[(1, v + 2)] = (view, meta, caption, "")
    return cells


def _own_name(method: str | None) -> str:
    return "π⁻" if method in (None, "cacr", "moco") else f"{method}'s weight"


def _lens_grid(cells: dict, cols: int, method: str | None) -> go.Figure:
    """Three rows of ``cols`` thumbnails and a fourth row, one wide panel, for the comparison."""
    captions = [
        cells.get((r, c), (None, None, "", ""))[2] for r in (1, 2, 3) for c in range(1, cols + 1)
    ]
    fig = make_subplots(
        rows=4,
        cols=cols,
        specs=[[{}] * cols] * 3 + [[{"colspan": cols}] + [None] * (cols - 1)],
        subplot_titles=[*captions, ""],
        row_heights=[0.2, 0.2, 0.2, 0.4],
        horizontal_spacing=0.012,
        vertical_spacing=0.085,  # room for the three-line captions above each row
    )
    for (r, c), (pixels, meta, _, _) in sorted(cells.items()):
        fig.add_trace(
            go.Image(
                z=_rgb(pixels),
                name=f"{meta['row']} {meta['rank']} · image {meta['index']}",
                meta=meta,
                hovertemplate=f"image {meta['index']} · class {meta['label']}<extra></extra>",
            ),
            row=r,
            col=c,
        )
    own = _own_name(method)
    for r, text in enumerate(("query, positives", f"highest {own}", f"lowest {own}"), start=1):
        fig.update_yaxes(title_text=text, row=r, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _add_comparison(fig: go.Figure, snapshot: Snapshot, q: int, method: str | None) -> None:
    """Row 4: weight × N against d² for all the query's negatives, own weights and InfoNCE's."""
    w = np.asarray(snapshot.neg_weights[q], dtype=np.float64)
    d2 = np.asarray(snapshot.neg_d2[q], dtype=np.float64)
    same = np.asarray(snapshot.neg_labels[q]) == int(snapshot.query_labels[q])
    colour = np.where(same, _SAME_CLASS, "#7F7F7F")
    sets = [(_own_name(method), w, "circle")]
    implicit = snapshot.infonce_weights
    if implicit is not None and not np.allclose(implicit[q], w, atol=1e-6):
        t = snapshot.infonce_temperature
        sets.append((f"InfoNCE (T={t:g})" if t else "InfoNCE", implicit[q], "x"))
    for name, weights, symbol in sets:
        fig.add_trace(
            go.Scatter(
                x=d2,
                y=np.asarray(weights, dtype=np.float64) * w.size,
                mode="markers",
                name=f"{name} × N",
                marker={"color": colour, "symbol": symbol, "size": 6, "opacity": 0.8},
                hovertemplate="d² %{x:.2f}: ×%{y:.2f}<extra>" + name + "</extra>",
            ),
            row=4,
            col=1,
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray", row=4, col=1)
    fig.update_xaxes(
        title_text="d² to the query (all N negatives; red: its own class)",
        showticklabels=True,
        showgrid=True,
        row=4,
        col=1,
    )
    fig.update_yaxes(title_text="weight × N", showticklabels=True, showgrid=True, row=4, col=1)


def _lens_finish(fig, snapshot, q, cells, method, title) -> go.Figure:
    """Title with this query's false-negative shares; captions small, red for false negatives."""
    w = np.asarray(snapshot.neg_weights[q], dtype=np.float64)
    same = np.asarray(snapshot.neg_labels[q]) == int(snapshot.query_labels[q])
    shares = f"own class: {w[same].sum():.0%} of {_own_name(method)}"
    implicit = snapshot.infonce_weights
    if implicit is not None and not np.allclose(implicit[q], w, atol=1e-6):
        shares += f" · {np.asarray(implicit[q])[same].sum():.0%} under InfoNCE"
    shares += f" · {same.mean():.0%} uniform"
    if len(np.unique(snapshot.neg_index[q])) < w.size:  # the InfoNCE family's 2B - 2 negatives
        shares += " · every image twice (both views)"
    default = (
        f"Query {q} under the lens · step {snapshot.step} (epoch {snapshot.epoch})"
        f"<br><sup>{shares} · red: a negative of the query's own class</sup>"
    )
    fig = _finish(fig, title or default, height=820, empty="")
    # The two-line title and the first row's three-line captions need more than the usual top.
    fig.update_layout(margin={**fig.layout.margin.to_plotly_json(), "t": 130})
    colours = {caption: colour for _, _, caption, colour in cells.values()}
    for annotation in fig.layout.annotations:  # the captions: small, red for false negatives
        if annotation.text in colours:
            annotation.font.size = 10
            annotation.font.color = colours[annotation.text] or None
    return fig


def false_negative_curves(runs: Run | Sequence[Run]) -> go.Figure:
    """The false-negative share over training: of each query's negative weights, the share on
    negatives of its own class, averaged over the probe batch (eval records' ``fn_share``,
    ``fn_share_infonce``, ``fn_share_uniform``). One colour per run; solid its own weights,
    dashed InfoNCE's implicit weights on the same batch, dotted uniform weights. Traces are
    named ``"{run label} · {what}"``.
    """
    runs = _as_runs(runs)
    fig = go.Figure()
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.eval_records()
        for key, (what, dash) in FN_KEYS.items():
            steps, values = series(records, key)
            if steps.size == 0:
                continue
            shade = color if key == "fn_share" else _shade(color, 0.3 if dash == "dash" else 0.55)
            if key == "fn_share_infonce" and run.method == "infonce":
                continue  # the run's own weights already
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="lines+markers" if steps.size > 1 else "markers",
                    name=f"{run_label(run)} · {what}",
                    legendgroup=run.name,
                    line={"color": shade, "dash": dash},
                    marker={"color": shade, "size": 6},
                )
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="share of the weight mass", tickformat=".0%", rangemode="tozero")
    return _finish(
        fig,
        "False negatives: the negative weight on the query's own class<br><sup>solid: the run's "
        "weights · dashed: InfoNCE's implicit · dotted: uniform</sup>",
        height=400,
    )
