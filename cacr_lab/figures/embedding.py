"""The embedding picture: a 2-D map of the embeddings (UMAP, or PCA for tiny sets) and its scatter.

:func:`compute_umap` maps (n, D) embeddings to (n, 2); :func:`embedding_scatter` draws any 2-D
points coloured by class, :func:`embedding_panels` several such maps side by side in one
figure. umap-learn compiles its numba code on first use (~20 s a process), so
:func:`enable_umap_disk_cache` keeps the machine code on disk and :func:`warm_up_umap` compiles
(or loads) it ahead of the first real UMAP; umap-learn itself is imported only when a UMAP is
asked for.
"""

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.figures.style import _finish, class_color


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


def _check_points(xy: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return xy, labels


def _n_classes(labels: Sequence[np.ndarray], class_names: Sequence[str] | None) -> int:
    n_classes = max((int(lab.max()) + 1 for lab in labels if lab.size), default=0)
    if class_names is not None:
        if len(class_names) < n_classes:
            raise ValueError(f"{len(class_names)} class_names for labels up to {n_classes - 1}")
        n_classes = len(class_names)
    return n_classes


def _class_traces(
    xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None, n_classes: int
) -> list[go.Scatter]:
    """One marker trace per class present, named and coloured by class, legend-grouped by it."""
    traces = []
    for c in np.unique(labels):
        mask = labels == c
        name = str(class_names[c]) if class_names is not None else str(c)
        traces.append(
            go.Scatter(
                x=xy[mask, 0],
                y=xy[mask, 1],
                mode="markers",
                name=name,
                legendgroup=name,
                marker={"color": class_color(int(c), n_classes), "size": 5, "opacity": 0.75},
                hovertemplate=f"{name}<br>point %{{customdata}}<extra></extra>",
                customdata=np.flatnonzero(mask),
            )
        )
    return traces


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
    xy, labels = _check_points(xy, labels)
    fig = go.Figure(_class_traces(xy, labels, class_names, _n_classes([labels], class_names)))
    fig.update_xaxes(title_text=f"{axis_name} 1")
    fig.update_yaxes(title_text=f"{axis_name} 2", scaleanchor="x", scaleratio=1)
    return _finish(fig, title, height=550)


def embedding_panels(
    maps: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] | None = None,
    title: str = "Embeddings side by side",
    *,
    axis_name: str = "UMAP",
) -> go.Figure:
    """Several 2-D maps side by side in one figure: one subplot per entry of ``maps`` (subplot
    title -> ``(xy (n, 2), labels (n,) ints)``), coloured by class as :func:`embedding_scatter`
    colours them, with one legend entry per class that toggles it in every panel.

    One figure rather than a row of separate outputs, so that it survives wherever a figure
    goes (a notebook's HTML export kept only the repr of a widget row).
    """
    if not maps:
        raise ValueError("no maps given")
    checked = {name: _check_points(xy, labels) for name, (xy, labels) in maps.items()}
    n_classes = _n_classes([labels for _, labels in checked.values()], class_names)
    fig = make_subplots(rows=1, cols=len(checked), subplot_titles=list(checked))
    for col, (xy, labels) in enumerate(checked.values(), start=1):
        for trace in _class_traces(xy, labels, class_names, n_classes):
            trace.showlegend = col == 1
            fig.add_trace(trace, row=1, col=col)
        anchor = "x" if col == 1 else f"x{col}"
        fig.update_xaxes(title_text=f"{axis_name} 1", row=1, col=col)
        fig.update_yaxes(scaleanchor=anchor, scaleratio=1, row=1, col=col)
    fig.update_yaxes(title_text=f"{axis_name} 2", row=1, col=1)
    return _finish(fig, title, height=500)
