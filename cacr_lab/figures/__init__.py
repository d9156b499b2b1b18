"""Every plotly figure of the lab, shared by the Streamlit app and the notebooks.

Each builder takes plain data -- :class:`~cacr_lab.runs.Run` and
:class:`~cacr_lab.runs.Snapshot` objects, numpy arrays, lists -- and returns a
``plotly.graph_objects.Figure``. Nothing here imports Streamlit or touches a notebook, so the app
and the notebooks show the same picture.

Conventions:

- A run's legend name is ``"{method} · {run name}"`` with the method as in its config
  (``cacr``, ``infonce``, ...). Each method keeps one colour everywhere (:func:`method_color`);
  several runs of one method get lighter/darker shades of it.
- A class keeps one colour everywhere (:func:`class_color`).
- Conditional weights are shown as *weight × set size* (pi_pos × K, pi_neg × N), so 1 means
  uniform whatever the set size; > 1 means the point gets more than its uniform share.
- Loss parts keep one line style each: loss solid, attraction dashed, repulsion dotted, ...

Builders: :func:`loss_curves`, :func:`eval_curves`, :func:`weight_stats_over_time`,
:func:`weight_histograms`, :func:`weight_vs_distance`, :func:`embedding_scatter` (with
:func:`compute_umap`), :func:`per_class_bars`, :func:`weights_vs_distance_curves` (theory) and
:func:`compare_table` (with :func:`compare_rows` for a plain table widget).

>>> fig = weights_vs_distance_curves(np.linspace(0, 4, 9), [0.0, 1.0], kind="neg")
>>> [t.name for t in fig.data]
['cacr tau_neg=0', 'cacr tau_neg=1']
"""

import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.runs import Run, Snapshot, last_value, run_state, series

# Known loss parts of train records, in legend order; any of them present is drawn.
LOSS_PARTS = ("attraction", "repulsion", "alignment", "uniformity")
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
# One colour per method, the same in every figure (D3 palette); unknown methods get a stable
# colour from a larger palette, chosen by a hash of the name (crc32: stable across processes).
METHOD_COLORS = {
    "cacr": "#D62728",
    "infonce": "#1F77B4",
    "simclr": "#1F77B4",
    "au": "#2CA02C",
    "au_cl": "#2CA02C",
    "hn": "#9467BD",
    "hn_cl": "#9467BD",
    "dcl": "#FF7F0E",
    "cmc": "#8C564B",
    "moco": "#E377C2",
}
# Weight statistics of eval records: key suffix -> panel title. Prefixed with pos_ / neg_.
WEIGHT_STATS = {
    "ess_frac": "effective sample size / set size",
    "entropy_norm": "entropy / log(set size)",
    "max_weight": "largest weight",
    "wd_corr": "corr(weight, d²)",
}
_UNIFORM_AXIS = "weight × set size (1 = uniform)"
_D2_AXIS = "d² = ||z − z'||²"
_TEMPLATE = "plotly_white"


# --------------------------------------------------------------------------------------------
# Colours and names
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Curves over training
# --------------------------------------------------------------------------------------------


def loss_curves(runs: Run | Sequence[Run], *, parts: Sequence[str] = LOSS_PARTS) -> go.Figure:
    """Training loss and its parts over steps, one colour per run, one line style per part.

    Draws ``loss`` and every key of ``parts`` that the run's train records hold (cacr logs
    attraction/repulsion; AU-CL alignment/uniformity), so one trace per (run, key present).
    """
    runs = _as_runs(runs)
    fig = go.Figure()
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.train_records()
        for key in ("loss", *parts):
            steps, values = series(records, key)
            if steps.size == 0:
                continue
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="lines",
                    name=f"{run_label(run)} · {key}",
                    legendgroup=run.name,
                    line={"color": color, "dash": _DASH.get(key, "solid")},
                )
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (per part)")
    return _finish(fig, "Training loss and its parts")


def eval_curves(runs: Run | Sequence[Run]) -> go.Figure:
    """Evaluation over steps in three panels: kNN (and linear-probe) accuracy, alignment,
    uniformity. One trace per (run, metric present); a run's legend entry appears once per metric.
    """
    runs = _as_runs(runs)
    panels = (("knn_acc", "probe_acc"), ("alignment",), ("uniformity",))
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "kNN (solid) / linear probe (dashed) accuracy",
            "alignment (lower: positives closer)",
            "uniformity (lower: more uniform)",
        ),
    )
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.eval_records()
        for col, keys in enumerate(panels, start=1):
            for key in keys:
                steps, values = series(records, key)
                if steps.size:
                    fig.add_trace(
                        go.Scatter(
                            x=steps,
                            y=values,
                            mode="lines+markers",
                            name=f"{run_label(run)} · {key}",
                            legendgroup=run.name,
                            line={"color": color, "dash": _DASH.get(key)},
                        ),
                        row=1,
                        col=col,
                    )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    return _finish(fig, "Evaluation during training", height=420)


def weight_stats_over_time(runs: Run | Sequence[Run]) -> go.Figure:
    """How concentrated pi_pos (solid) and pi_neg (dashed) are over training, from eval records.

    Four panels: ESS fraction, normalised entropy (both 1 = uniform, lower = sharper), largest
    weight, and the weight-distance correlation (CACR: > 0 for positives, < 0 for negatives).
    One trace per (run, side, statistic present); legend entries appear once per (run, side).
    """
    runs = _as_runs(runs)
    fig = make_subplots(
        rows=2, cols=2, subplot_titles=list(WEIGHT_STATS.values()), vertical_spacing=0.14
    )
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.eval_records()
        for side in ("pos", "neg"):
            shown = False
            for i, stat in enumerate(WEIGHT_STATS):
                steps, values = series(records, f"{side}_{stat}")
                if steps.size == 0:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=steps,
                        y=values,
                        mode="lines+markers",
                        name=f"{run_label(run)} · pi_{side}",
                        legendgroup=f"{run.name}/{side}",
                        showlegend=not shown,
                        line={"color": color, "dash": _DASH[side]},
                    ),
                    row=i // 2 + 1,
                    col=i % 2 + 1,
                )
                shown = True
    fig.update_xaxes(title_text="step", row=2)
    return _finish(
        fig, "Concentration of the conditional weights (solid pi_pos, dashed pi_neg)", height=600
    )


# --------------------------------------------------------------------------------------------
# Snapshot pictures
# --------------------------------------------------------------------------------------------


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


def weight_histograms(snapshot: Snapshot, title: str | None = None, *, bins: int = 40) -> go.Figure:
    """Histograms of pi_pos × K and pi_neg × N over the snapshot's Q sampled queries.

    Two panels; a side missing from the snapshot is left empty with a note. Traces are bar
    traces named ``pi_pos`` and ``pi_neg``: ``bins`` equal bins of ``weights.ravel() * set
    size`` between its min and max, x the bin centres, y the fraction of weights in each.
    Binned here, not by plotly.js: the raw weights of a snapshot are tens of thousands of
    numbers, which made the page's JSON ~50x larger and the browser seconds slower to draw.
    """
    sides = _weights(snapshot, need_d2=False)
    sizes = {s: sides[s][0].shape[1] if s in sides else None for s in ("pos", "neg")}
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"pi_pos (K = {sizes['pos']} positives per query)",
            f"pi_neg (N = {sizes['neg']} negatives per query)",
        ),
    )
    for col, side in enumerate(("pos", "neg"), start=1):
        if side not in sides:
            fig.add_annotation(
                text="not recorded",
                showarrow=False,
                row=1,
                col=col,
                x=0.5,
                y=0.5,
                xref="x domain",
                yref="y domain",
            )
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
                marker_color="#2CA02C" if side == "pos" else "#D62728",
                marker_line_width=0,
                opacity=0.8,
                hovertemplate="%{x:.3g}: %{y:.1%}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_vline(x=1.0, line_dash="dot", line_color="gray", row=1, col=col)
    fig.update_xaxes(title_text=_UNIFORM_AXIS)
    fig.update_yaxes(title_text="fraction of weights", row=1, col=1)
    default = f"Conditional weights at step {snapshot.step} (epoch {snapshot.epoch})"
    return _finish(fig, title or default, height=380)


def weight_vs_distance(snapshot: Snapshot, n_queries: int = 4) -> go.Figure:
    """Weight × set size against d² for the first ``n_queries`` sampled queries.

    CACR's picture: pi_pos rises with d² (far positives pulled hardest), pi_neg falls with d²
    (near negatives pushed hardest). One marker trace per (side, query), named ``query q``.
    """
    if not isinstance(n_queries, int) or n_queries < 1:
        raise ValueError(f"n_queries must be an int >= 1, got {n_queries!r}")
    sides = _weights(snapshot, need_d2=True)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("positives: pi_pos × K", "negatives: pi_neg × N")
    )
    for col, side in enumerate(("pos", "neg"), start=1):
        if side not in sides:
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
    fig.update_yaxes(title_text=_UNIFORM_AXIS, row=1, col=1)
    title = f"Weight against squared distance, step {snapshot.step} (epoch {snapshot.epoch})"
    return _finish(fig, title, height=400)


def compute_umap(
    embeddings: np.ndarray,
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int = 200,
) -> np.ndarray:
    """2-D UMAP (cosine metric) of embeddings (n, D) -> (n, 2) float32, deterministic per seed.

    Below 4096 points the exact cosine distance matrix is computed with one matrix product and
    handed to UMAP as ``precomputed``: the same graph as ``metric="cosine"``, without umap-learn's
    per-pair Python loop (4 s -> 0.1 s for 1000 points). ``n_epochs=200`` (umap-learn's own choice
    for large sets) keeps 1000 points under ~1 s once numba has compiled (the first call in a
    process takes ~15-30 s on a laptop CPU).

    With fewer than ``n_neighbors + 2`` points UMAP's neighbour graph is degenerate, so this
    falls back to the first two principal components (zeros where the rank is below 2).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be (n, D) with n >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    if not isinstance(n_neighbors, int) or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an int >= 2, got {n_neighbors!r}")
    if not 0.0 <= min_dist <= 1.0:
        raise ValueError(f"min_dist must be in [0, 1], got {min_dist!r}")
    n = x.shape[0]
    if n < n_neighbors + 2:
        return _pca_2d(x)

    import umap  # heavy (numba): imported only when a UMAP is asked for

    enable_umap_disk_cache()  # compiled once per machine, not once per process

    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # cosine ignores scale
    common = {
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "n_epochs": n_epochs,
        "random_state": seed,
        "n_components": 2,
    }
    with warnings.catch_warnings():
        # random_state forces one thread, and umap-learn says so on every call.
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden", category=UserWarning)
        # We never call inverse_transform, which a precomputed metric rules out.
        warnings.filterwarnings("ignore", message=".*inverse_transform", category=UserWarning)
        if n < 4096:
            dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)  # (n, n) cosine distances
            np.fill_diagonal(dist, 0.0)
            reducer = umap.UMAP(metric="precomputed", **common)
            xy = reducer.fit_transform(dist)
        else:
            xy = umap.UMAP(metric="cosine", **common).fit_transform(x.astype(np.float32))
    return np.asarray(xy, dtype=np.float32)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of x (n, D) -> (n, 2) float32, zero-padded."""
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    xy = np.zeros((x.shape[0], 2))
    k = min(2, s.size)
    xy[:, :k] = u[:, :k] * s[:k]
    return xy.astype(np.float32)


# umap-learn / pynndescent modules holding numba functions that compute_umap reaches.
_UMAP_NUMBA_MODULES = (
    "umap.umap_",
    "umap.layouts",
    "umap.utils",
    "umap.distances",
    "umap.spectral",
    "umap.sparse",
    "pynndescent.pynndescent_",
    "pynndescent.utils",
    "pynndescent.distances",
    "pynndescent.rp_trees",
    "pynndescent.sparse",
)


def enable_umap_disk_cache() -> int:
    """Turn on numba's on-disk cache for umap-learn's jitted functions; returns how many.

    umap-learn compiles most of its numba functions on first use without ``cache=True``, which
    costs ~20 s of every new process on a 2-core CPU. With the cache on, the machine code is
    kept (in the package's ``__pycache__``, or ``$NUMBA_CACHE_DIR``) and later processes load it
    in well under a second. Idempotent.
    """
    import importlib

    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    count = 0
    for name in _UMAP_NUMBA_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module another umap-learn version lacks
            continue
        for obj in vars(module).values():
            # _cache: numba's per-function cache object (NullCache = not caching)
            if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), NullCache):
                obj.enable_caching()
                count += 1
    return count


def warm_up_umap(n: int = 64, seed: int = 0) -> float:
    """Compile (or load from the disk cache) the numba code of :func:`compute_umap` now, with
    one UMAP of ``n`` random points, so that the first real UMAP is quick. Returns seconds.

    The dashboard runs this in a background thread when it starts. First call on a machine:
    ~25 s on a 2-core CPU; in any later process: ~3 s (mostly importing umap-learn).
    """
    import time

    start = time.perf_counter()
    enable_umap_disk_cache()
    rng = np.random.default_rng(seed)
    compute_umap(rng.standard_normal((max(n, 32), 8)), seed=seed)
    return time.perf_counter() - start


def embedding_scatter(
    xy: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "Embedding (UMAP, cosine)",
    *,
    axis_name: str = "UMAP",
) -> go.Figure:
    """Scatter of 2-D points xy (n, 2) coloured by labels (n,) int; one trace per class present.

    ``class_names[c]`` names class c in the legend (default: the number).
    """
    xy = np.asarray(xy, dtype=np.float64)
    labels = np.asarray(labels)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be (n, 2), got shape {xy.shape}")
    if labels.shape != (xy.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be (n,) = ({xy.shape[0]},) ints, got {labels.shape} {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    n_classes = int(labels.max()) + 1 if labels.size else 0
    if class_names is not None:
        if len(class_names) < n_classes:
            raise ValueError(f"{len(class_names)} class_names for labels up to {n_classes - 1}")
        n_classes = len(class_names)
    fig = go.Figure()
    for c in np.unique(labels):
        mask = labels == c
        name = str(class_names[c]) if class_names is not None else str(c)
        fig.add_trace(
            go.Scatter(
                x=xy[mask, 0],
                y=xy[mask, 1],
                mode="markers",
                name=name,
                marker={"color": class_color(int(c), n_classes), "size": 5, "opacity": 0.75},
                hovertemplate=f"{name}<br>point %{{customdata}}<extra></extra>",
                customdata=np.flatnonzero(mask),
            )
        )
    fig.update_xaxes(title_text=f"{axis_name} 1")
    fig.update_yaxes(title_text=f"{axis_name} 2", scaleanchor="x", scaleratio=1)
    return _finish(fig, title, height=550)


# --------------------------------------------------------------------------------------------
# Per-class accuracy, summaries
# --------------------------------------------------------------------------------------------


def per_class_bars(
    runs_or_dict: Run | Sequence[Run] | Mapping[str, Sequence[float]],
    *,
    class_names: Sequence[str] | None = None,
    class_counts: Sequence[int] | None = None,
) -> go.Figure:
    """Per-class accuracy of one or more runs as grouped bars (the imbalanced-data picture).

    Runs: the last eval record's ``per_class_acc`` (runs without one are left out) and, when the
    config has ``class_counts``, the pre-training images per class in the hover and as a line on
    a secondary axis (one line per distinct count profile). A dict maps a legend name to
    accuracies, with ``class_counts`` given here. One Bar trace per run/entry.
    """
    entries: list[tuple[str, list[float], list[int] | None, str]] = []  # name, acc, counts, colour
    if isinstance(runs_or_dict, Mapping):
        if not runs_or_dict:
            raise ValueError("no per-class accuracies given")
        palette = pc.qualitative.D3
        for i, (name, acc) in enumerate(runs_or_dict.items()):
            counts = None if class_counts is None else [int(c) for c in class_counts]
            entries.append((str(name), [float(a) for a in acc], counts, palette[i % 10]))
    else:
        runs = _as_runs(runs_or_dict)
        for run, color in zip(runs, _run_colors(runs), strict=True):
            acc = last_value(run.eval_records(), "per_class_acc")
            if acc is None:
                continue
            counts = run.config.get("class_counts") if class_counts is None else class_counts
            counts = None if counts is None else [int(c) for c in counts]
            entries.append(
                (run_label(run), [np.nan if a is None else float(a) for a in acc], counts, color)
            )
        if not entries:
            names = [r.name for r in runs]
            raise ValueError(f"no eval record with per_class_acc in runs {names}")

    n_classes = max(len(acc) for _, acc, _, _ in entries)
    if class_names is not None and len(class_names) < n_classes:
        raise ValueError(f"{len(class_names)} class_names for {n_classes} classes")
    names = [str(class_names[c]) if class_names else str(c) for c in range(n_classes)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    profiles: dict[tuple[int, ...], list[str]] = {}
    for name, acc, counts, color in entries:
        hover = [f"{name}<br>class {names[c]}: %{{y:.3f}}" for c in range(len(acc))]
        if counts is not None:
            hover = [
                h + f"<br>{counts[c]} pre-training images" if c < len(counts) else h
                for c, h in enumerate(hover)
            ]
            profiles.setdefault(tuple(counts), []).append(name)
        fig.add_trace(
            go.Bar(
                x=names[: len(acc)],
                y=acc,
                name=name,
                marker_color=color,
                hovertemplate=[h + "<extra></extra>" for h in hover],
            ),
            secondary_y=False,
        )
    for counts, owners in profiles.items():
        fig.add_trace(
            go.Scatter(
                x=names[: len(counts)],
                y=list(counts),
                mode="lines+markers",
                name=f"images per class · {', '.join(owners)}",
                line={"color": "gray", "dash": "dot"},
                marker={"symbol": "diamond"},
            ),
            secondary_y=True,
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="class")
    fig.update_yaxes(title_text="accuracy", range=[0, 1], secondary_y=False)
    if profiles:
        fig.update_yaxes(
            title_text="pre-training images per class",
            secondary_y=True,
            showgrid=False,
            rangemode="tozero",
        )
    return _finish(fig, "Per-class accuracy", height=450)


def compare_rows(runs: Run | Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run: run, method, dataset, seed, epochs, state, step and the final
    knn_acc, probe_acc, alignment, uniformity (None where not recorded). For st.dataframe."""
    rows = []
    for run in _as_runs(runs):
        evals = run.eval_records()
        rows.append(
            {
                "run": run.name,
                "method": run.method,
                "dataset": run.config.get("dataset"),
                "seed": run.config.get("seed"),
                "epochs": run.config.get("epochs"),
                "state": run_state(run),
                "step": last_value(run.metrics, "step"),
                **{
                    k: last_value(evals, k)
                    for k in ("knn_acc", "probe_acc", "alignment", "uniformity")
                },
            }
        )
    return rows


def compare_table(runs: Run | Sequence[Run]) -> go.Figure:
    """:func:`compare_rows` as a plotly Table (one column per key, floats to 4 decimals)."""
    rows = compare_rows(runs)
    columns = list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    fig = go.Figure(
        go.Table(
            header={"values": columns, "align": "left", "fill_color": "#E8E8E8"},
            cells={"values": [[fmt(r[c]) for r in rows] for c in columns], "align": "left"},
        )
    )
    return _finish(fig, "Runs compared (final evaluation)", height=120 + 30 * len(rows))


# --------------------------------------------------------------------------------------------
# Theory (notebook 01)
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
    fig.update_yaxes(title_text=_UNIFORM_AXIS, type="log" if log_y else "linear")
    side = "positive" if kind == "pos" else "negative"
    return _finish(fig, f"Conditional weight of a {side} against its squared distance")


# --- Theory figures (notebook 01) ---

# Arrow colours of the force pictures: one per force name, the attraction green and the
# repulsion red as in the loss curves' legend; unknown names get the D3 palette.
FORCE_COLORS = {
    "loss": "#333333",
    "attraction": "#2CA02C",
    "repulsion": "#D62728",
    "on the query": "#333333",
    "on positives": "#2CA02C",
    "on negatives": "#D62728",
}


def _arrow_color(name: str, i: int, colors: Mapping[str, str] | None) -> str:
    if colors and name in colors:
        return colors[name]
    return FORCE_COLORS.get(name, pc.qualitative.D3[i % 10])


def force_field(
    points: np.ndarray,
    forces: Mapping[str, np.ndarray],
    *,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | None = None,
    group_colors: Sequence[str] | None = None,
    sizes: np.ndarray | None = None,
    scale: float | None = None,
    force_colors: Mapping[str, str] | None = None,
    title: str = "Forces on the sphere",
) -> go.Figure:
    """Points on the unit circle (D = 2) or sphere (D = 3) with one set of force arrows per entry.

    Args:
        points: (n, D) unit vectors, D in {2, 3} (a toy batch (V, B, D) reshaped to (V B, D)).
        forces: name -> (n, D) force on each point (e.g. ``cacr_lab.theory.loss_forces``); an
            arrow goes from the point to ``point + scale * force``; zero forces draw nothing.
        groups: (n,) ints, the colour group of each point (an image, or query/positive/negative);
            default all 0. ``group_names[g]`` names group g in the legend (default "image g"),
            ``group_colors[g]`` colours it (default :func:`class_color`).
        sizes: (n,) marker sizes in px (default 9), e.g. from a weight.
        scale: arrow length per unit of force; default: the longest arrow is 0.35.
        force_colors: name -> colour, over :data:`FORCE_COLORS`.

    Traces: "unit circle" (2-D only); one marker trace per group present (named by
    ``group_names``); per force entry a line trace named after it (the shafts) and, 2-D, a
    marker trace "<name> heads" of arrow symbols (3-D: a Cone trace).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (n, 2) or (n, 3), got shape {pts.shape}")
    n, dim = pts.shape
    arrows = {}
    for name, f in forces.items():
        f = np.asarray(f, dtype=np.float64)
        if f.shape != pts.shape:
            raise ValueError(f"force {name!r} has shape {f.shape}, expected {pts.shape}")
        arrows[name] = f
    groups = np.zeros(n, dtype=int) if groups is None else np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise ValueError(f"groups must be ({n},) ints >= 0, got {groups.shape} {groups.dtype}")
    sizes = np.full(n, 9.0) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (n,):
        raise ValueError(f"sizes must have shape ({n},), got {sizes.shape}")
    longest = max((float(np.linalg.norm(f, axis=1).max()) for f in arrows.values()), default=0)
    if scale is None:
        scale = 0.35 / longest if longest > 0 else 1.0
    n_groups = int(groups.max()) + 1
    scatter = go.Scatter3d if dim == 3 else go.Scatter
    fig = go.Figure()
    t = np.linspace(0, 2 * np.pi, 121)
    if dim == 2:
        fig.add_trace(
            go.Scatter(
                x=np.cos(t),
                y=np.sin(t),
                mode="lines",
                name="unit circle",
                line={"color": "lightgray", "dash": "dot"},
                hoverinfo="skip",
            )
        )
    else:
        # A wireframe: the equator, two meridians and two parallels, separated by None.
        rings = []
        for z0 in (-0.7, 0.0, 0.7):
            r = np.sqrt(1 - z0**2)
            rings.append(np.stack([r * np.cos(t), r * np.sin(t), np.full_like(t, z0)], 1))
        for phi in (0.0, np.pi / 2):
            rings.append(np.stack([np.cos(phi) * np.cos(t), np.sin(phi) * np.cos(t), np.sin(t)], 1))
        wire = np.concatenate([np.vstack([r, np.full((1, 3), np.nan)]) for r in rings])
        fig.add_trace(
            go.Scatter3d(
                x=wire[:, 0],
                y=wire[:, 1],
                z=wire[:, 2],
                mode="lines",
                name="unit sphere",
                line={"color": "lightgray", "width": 2},
                hoverinfo="skip",
            )
        )
    for g in np.unique(groups):
        mask = groups == g
        name = str(group_names[g]) if group_names is not None else f"image {g}"
        color = group_colors[g] if group_colors is not None else class_color(int(g), n_groups)
        xyz = {k: pts[mask, i] for i, k in enumerate("xyz"[:dim])}
        fig.add_trace(
            scatter(
                **xyz,
                mode="markers",
                name=name,
                marker={"color": color, "size": sizes[mask], "line": {"width": 0}},
            )
        )
    for i, (name, f) in enumerate(arrows.items()):
        color = _arrow_color(name, i, force_colors)
        keep = np.linalg.norm(f, axis=1) > 1e-12 * max(longest, 1e-300)
        tails, tips = pts[keep], pts[keep] + scale * f[keep]
        # Shafts: one line trace, arrows separated by None.
        seg = np.full((3 * len(tails), dim), np.nan)
        seg[0::3], seg[1::3] = tails, tips
        coords = {
            k: [None if np.isnan(v) else v for v in seg[:, j]] for j, k in enumerate("xyz"[:dim])
        }
        fig.add_trace(
            scatter(
                **coords,
                mode="lines",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 3},
            )
        )
        if dim == 2:
            d = tips - tails
            fig.add_trace(
                go.Scatter(
                    x=tips[:, 0],
                    y=tips[:, 1],
                    mode="markers",
                    name=f"{name} heads",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                    # Arrow symbols point up; marker.angle turns them clockwise (degrees).
                    marker={
                        "symbol": "arrow",
                        "size": 11,
                        "color": color,
                        "angle": np.degrees(np.arctan2(d[:, 0], d[:, 1])),
                    },
                )
            )
        elif len(tails):
            d = tips - tails
            d = d / np.linalg.norm(d, axis=1, keepdims=True)  # equal cones: direction only
            fig.add_trace(
                go.Cone(
                    x=tips[:, 0],
                    y=tips[:, 1],
                    z=tips[:, 2],
                    u=d[:, 0],
                    v=d[:, 1],
                    w=d[:, 2],
                    anchor="tip",
                    sizemode="absolute",
                    sizeref=0.1,
                    colorscale=[[0, color], [1, color]],
                    showscale=False,
                    name=f"{name} heads",
                    legendgroup=name,
                    hoverinfo="skip",
                )
            )
    if dim == 2:
        fig.update_xaxes(range=[-1.6, 1.6], zeroline=False)
        fig.update_yaxes(range=[-1.6, 1.6], zeroline=False, scaleanchor="x", scaleratio=1)
    else:
        fig.update_layout(scene={"aspectmode": "cube"})
    fig = _finish(fig, title, height=560)
    fig.update_layout(meta={"arrow_scale": scale})
    return fig


def query_force_figure(
    query: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    pos_weights: np.ndarray,
    neg_weights: np.ndarray,
    query_force: np.ndarray,
    pos_forces: np.ndarray,
    neg_forces: np.ndarray,
    *,
    scale: float | None = None,
    title: str = "One query: weights (marker size) and forces (arrows)",
) -> go.Figure:
    """One query's anatomy: the query (black), its K positives (light green) and N negatives
    (light red), each marker sized by its weight × set size (bigger than the uniform size = more
    than its uniform share), with the forces on the query (grey arrow), on the positives (green)
    and on the negatives (red).

    Shapes: ``query`` (D,), ``positives`` (K, D), ``negatives`` (N, D), weights (K,) / (N,),
    ``query_force`` (D,), ``pos_forces`` (K, D), ``neg_forces`` (N, D); D in {2, 3}; e.g. the
    fields of ``cacr_lab.theory.query_forces``. Traces as :func:`force_field` with groups
    "query", "positives", "negatives" and forces "on the query", "on positives", "on negatives".
    """
    q = np.asarray(query, dtype=np.float64).reshape(1, -1)
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    pw, nw = np.asarray(pos_weights, dtype=np.float64), np.asarray(neg_weights, dtype=np.float64)
    if pw.shape != (len(pos),) or nw.shape != (len(neg),):
        raise ValueError(
            f"pos_weights {pw.shape} / neg_weights {nw.shape} must match the "
            f"{len(pos)} positives / {len(neg)} negatives"
        )
    points = np.concatenate([q, pos, neg])
    k, m = len(pos), len(neg)
    zeros = np.zeros_like(points)
    on_query, on_pos, on_neg = zeros.copy(), zeros.copy(), zeros.copy()
    on_query[0] = np.asarray(query_force, dtype=np.float64)
    on_pos[1 : 1 + k] = np.asarray(pos_forces, dtype=np.float64)
    on_neg[1 + k :] = np.asarray(neg_forces, dtype=np.float64)
    relative = np.concatenate([[1.0], pw * k, nw * m])  # weight x set size, 1 = uniform
    sizes = np.clip(6 + 8 * np.sqrt(relative), 4, 40)
    sizes[0] = 14
    return force_field(
        points,
        {"on the query": on_query, "on positives": on_pos, "on negatives": on_neg},
        groups=np.array([0] + [1] * k + [2] * m),
        group_names=("query", "positives", "negatives"),
        group_colors=("#000000", "#98DF8A", "#FF9896"),
        sizes=sizes,
        scale=scale,
        title=title,
    )


def theory_curves(
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    x_title: str = _D2_AXIS,
    y_title: str = "",
    title: str = "",
    hline: float | None = None,
    dashes: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
) -> go.Figure:
    """Plain lines y(x), one trace per entry of ``curves`` (name -> (n,) values over ``x`` (n,)),
    e.g. the gradient coefficients dE/dd of attached and detached weights against d².
    ``hline`` draws a dotted reference line; ``dashes`` maps a name to a plotly dash style and
    ``colors`` to a colour (default: the D3 palette in order).
    """
    x = np.asarray(x, dtype=np.float64)
    fig = go.Figure()
    for i, (name, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"curve {name!r} has shape {y.shape}, x has {x.shape}")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=name,
                line={
                    "color": (colors or {}).get(name, pc.qualitative.D3[i % 10]),
                    "dash": (dashes or {}).get(name),
                },
            )
        )
    if hline is not None:
        fig.add_hline(y=hline, line_dash="dot", line_color="gray")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return _finish(fig, title)


def metric_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    label: str = "run",
    metrics: Sequence[str] = ("knn_acc", "probe_acc"),
    title: str = "Final accuracy per run",
    y_title: str = "accuracy",
    y_range: Sequence[float] | None = None,
) -> go.Figure:
    """Grouped bars of a few final numbers per run (an ablation table as a picture).

    ``rows``: one mapping per run (e.g. :func:`compare_rows` with extra keys) holding ``label``
    (the bar's x) and the ``metrics`` (missing or None values are left out). One Bar trace per
    metric, named after it. ``y_range``: e.g. ``(0.9, 1.0)`` to zoom on small differences.
    """
    if not rows:
        raise ValueError("no rows given")
    missing = [i for i, r in enumerate(rows) if label not in r]
    if missing:
        raise ValueError(f"rows {missing} have no {label!r} key")
    fig = go.Figure()
    for i, metric in enumerate(metrics):
        kept = [r for r in rows if r.get(metric) is not None]
        if not kept:
            continue
        fig.add_trace(
            go.Bar(
                x=[str(r[label]) for r in kept],
                y=[float(r[metric]) for r in kept],
                name=metric,
                marker_color=pc.qualitative.D3[i % 10],
                hovertemplate="%{x}<br>" + metric + " %{y:.4f}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=y_title, range=list(y_range) if y_range is not None else None)
    return _finish(fig, title, height=450)
